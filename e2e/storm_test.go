package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
)

// Storm parameters (story 8).
const (
	stormContacts = 200
	stormChanges  = 20
	stormSpan     = 2 * time.Second
)

// putLog is a reverse proxy in front of Dendrite that records every ghost
// presence PUT.
type putLog struct {
	mu   sync.Mutex
	puts map[string][]ghostPut // by ghost MXID
}

type ghostPut struct {
	At       time.Time
	Presence string
	Status   string
}

const presencePrefix = "/_matrix/client/v3/presence/"

func newPutLog(t testing.TB, target string) (*putLog, string) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	pl := &putLog{puts: map[string][]ghostPut{}}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ErrorLog = log.New(io.Discard, "", 0) // requests cut by the bridge's shutdown
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, presencePrefix) && strings.HasSuffix(r.URL.Path, "/status") {
			pl.record(r)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return pl, srv.URL
}

func (pl *putLog) record(r *http.Request) {
	at := time.Now()
	user := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, presencePrefix), "/status")
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	var v struct {
		Presence  string `json:"presence"`
		StatusMsg string `json:"status_msg"`
	}
	_ = json.Unmarshal(body, &v)
	pl.mu.Lock()
	pl.puts[user] = append(pl.puts[user], ghostPut{At: at, Presence: v.Presence, Status: v.StatusMsg})
	pl.mu.Unlock()
}

// since returns the PUTs of ghost at or after t.
func (pl *putLog) since(ghost string, t time.Time) []ghostPut {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var out []ghostPut
	for _, p := range pl.puts[ghost] {
		if !p.At.Before(t) {
			out = append(out, p)
		}
	}
	return out
}

func (pl *putLog) count(ghost string) int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return len(pl.puts[ghost])
}

// TestStoryStorm: 200 XMPP contacts of bob each change their presence 20
// times within 2 seconds. Dendrite receives at most one PUT per ghost per
// coalescing window, and every ghost ends in exactly its contact's final
// state.
func TestStoryStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("storm: skipped in -short mode")
	}
	var puts *putLog
	e := newEnv(t, options{
		// The consent round trip through Matrix is not what this story is
		// about: contacts are accepted at once.
		policy: "accept",
		homeserverURL: func(t testing.TB, real string) string {
			var proxyURL string
			puts, proxyURL = newPutLog(t, real)
			return proxyURL
		},
	})
	bob := e.matrixUser("bob")
	puppet := e.puppet(bob.UserID)

	begin := time.Now()
	names := make([]string, stormContacts)
	for i := range names {
		names[i] = fmt.Sprintf("storm%03d", i)
		e.xmpp.Register(t, names[i], password)
	}
	t.Logf("%d contacts registered in %v", stormContacts, time.Since(begin).Round(time.Millisecond))

	begin = time.Now()
	contacts := make([]*prosodytest.Client, stormContacts)
	parallel(t, stormContacts, 16, func(i int) {
		c := e.xmppLogin(names[i])
		contacts[i] = c
		sendPresence(t, c, "", "", "", "start")
		sendPresence(t, c, "subscribe", puppet, "", "")
		c.Wait(t, flowTimeout, "subscribe from the puppet", subscriptionFrom(puppet, "subscribe"))
		sendPresence(t, c, "subscribed", puppet, "", "")
		c.Wait(t, flowTimeout, "subscribed from the puppet", subscriptionFrom(puppet, "subscribed"))
	})
	if t.Failed() {
		t.FailNow()
	}
	ghosts := make([]string, stormContacts)
	for i, c := range contacts {
		ghosts[i] = e.ghost(c.JID.Bare().String())
	}
	// Every contact's first presence has reached Dendrite: the ghosts exist.
	poll(t, time.Minute, "every ghost's first PUT", func() error {
		for _, g := range ghosts {
			if puts.count(g) == 0 {
				return fmt.Errorf("no PUT for %s yet", g)
			}
		}
		return nil
	})
	t.Logf("%d contacts logged in and subscribed, ghosts online, in %v", stormContacts, time.Since(begin).Round(time.Millisecond))

	busy := e.busyPresence()
	shows := []string{"away", "xa", "dnd", "chat", ""}
	matrixOf := map[string]string{"": "online", "chat": "online", "away": "unavailable", "xa": "unavailable", "dnd": busy}
	stormStart := time.Now()
	parallel(t, stormContacts, stormContacts, func(i int) {
		tick := time.NewTicker(stormSpan / stormChanges)
		defer tick.Stop()
		for k := range stormChanges {
			status := fmt.Sprintf("s%03d-%02d", i, k)
			if k == stormChanges-1 {
				status = fmt.Sprintf("final-%03d", i)
			}
			sendPresence(t, contacts[i], "", "", shows[(i+k)%len(shows)], status)
			if k < stormChanges-1 {
				<-tick.C // pacing the changes, not waiting for anything
			}
		}
	})
	t.Logf("storm of %d changes sent in %v", stormContacts*stormChanges, time.Since(stormStart).Round(time.Millisecond))

	// Final states, as Matrix shows them.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	want := func(i int) (string, string) {
		return matrixOf[shows[(i+stormChanges-1)%len(shows)]], fmt.Sprintf("final-%03d", i)
	}
	poll(t, time.Minute, "every ghost in its final state", func() error {
		for i, g := range ghosts {
			p, err := bob.GetPresence(ctx, g)
			if err != nil {
				return err
			}
			if wp, ws := want(i); p.Presence != wp || statusOf(p) != ws {
				return fmt.Errorf("%s is %s %q, want %s %q", g, p.Presence, statusOf(p), wp, ws)
			}
		}
		return nil
	})
	settled := time.Since(stormStart)

	// At most one PUT per ghost per coalescing window, and the last PUT of
	// each is its final state. The core spaces a person's changes by the
	// window; on their way to Dendrite the PUTs of 200 ghosts queue, so two
	// may arrive closer than a window: the promise is the rate, counted
	// over the storm (one per started window, and the first change, which
	// goes out at once).
	total, maxPuts, minGap := 0, 0, time.Hour
	for i, g := range ghosts {
		ps := puts.since(g, stormStart)
		total += len(ps)
		maxPuts = max(maxPuts, len(ps))
		if len(ps) == 0 {
			t.Errorf("%s: no PUT during the storm", g)
			continue
		}
		sort.Slice(ps, func(a, b int) bool { return ps[a].At.Before(ps[b].At) })
		for k := 1; k < len(ps); k++ {
			minGap = min(minGap, ps[k].At.Sub(ps[k-1].At))
		}
		span := ps[len(ps)-1].At.Sub(ps[0].At)
		if allowed := int(span/coalesceWindow) + 2; len(ps) > allowed {
			t.Errorf("%s: %d PUTs within %v, want at most one per %v (%d)", g, len(ps), span.Round(time.Millisecond), coalesceWindow, allowed)
		}
		if wp, ws := want(i); ps[len(ps)-1].Presence != wp || ps[len(ps)-1].Status != ws {
			t.Errorf("%s: last PUT %s %q, want %s %q", g, ps[len(ps)-1].Presence, ps[len(ps)-1].Status, wp, ws)
		}
	}
	t.Logf("storm: %d changes became %d PUTs (at most %d per ghost, closest two %v apart); all final states exact %v after the storm began",
		stormContacts*stormChanges, total, maxPuts, minGap.Round(time.Millisecond), settled.Round(time.Millisecond))
}

// parallel runs fn(0..n-1) with at most width at once and waits for all.
// fn may fail the test (Fatal ends only its own goroutine): callers check
// t.Failed afterwards.
func parallel(t *testing.T, n, width int, fn func(i int)) {
	t.Helper()
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(i)
		}()
	}
	wg.Wait()
}
