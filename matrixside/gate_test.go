package matrixside

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// sentCounter counts the requests the side really sent (past the gate),
// and remembers when the first answered one and the first /sync after it
// were sent.
type sentCounter struct {
	base http.RoundTripper
	n    atomic.Int64

	mu                 sync.Mutex
	firstOK, syncAfter time.Time
}

func (c *sentCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	sent := time.Now()
	c.mu.Lock()
	if !c.firstOK.IsZero() && c.syncAfter.IsZero() && strings.HasSuffix(r.URL.Path, "/sync") {
		c.syncAfter = sent
	}
	c.mu.Unlock()
	resp, err := c.base.RoundTrip(r)
	if err == nil && resp.StatusCode < 500 {
		c.mu.Lock()
		if c.firstOK.IsZero() {
			c.firstOK = time.Now()
		}
		c.mu.Unlock()
	}
	return resp, err
}

// deadHS is a homeserver that is down (it refuses connections, or a proxy
// in front of it answers 502) until revive.
type deadHS struct {
	url    string
	revive func() *fakeHS
}

func refusingHS(t *testing.T) deadHS {
	ln := freeListener(t)
	addr := ln.Addr().String()
	ln.Close()
	return deadHS{url: "http://" + addr, revive: func() *fakeHS {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen again on %s: %v", addr, err)
		}
		f := &fakeHS{puts: map[string][]presenceBody{}, putTimes: map[string][]time.Time{}}
		f.Server = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
		f.Listener.Close()
		f.Listener = ln
		f.Start()
		t.Cleanup(f.Close)
		return f
	}}
}

func badGatewayHS(t *testing.T) deadHS {
	f := newFakeHS(t)
	var up atomic.Bool
	inner := f.Config.Handler
	f.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte("<html>502 Bad Gateway</html>"))
			return
		}
		inner.ServeHTTP(w, r)
	})
	return deadHS{url: f.URL, revive: func() *fakeHS { up.Store(true); return f }}
}

// TestDeadHomeserverBackoff: while the homeserver is down, 1,000 ghosts
// with presence to show and 1,000 membership commands redelivered as fast
// as the bus can (no delay at all, the worst case) make at most one
// request per back-off step, not one per command: the commands fail at
// once with a retryable ErrHomeserverDown. The outage is one log line,
// and its end another; then everything goes out.
func TestDeadHomeserverBackoff(t *testing.T) {
	for _, tc := range []struct {
		name string
		hs   func(*testing.T) deadHS
	}{
		{"connection refused", refusingHS},
		{"502 from a proxy", badGatewayHS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dead := tc.hs(t)
			cfg := testConfig(dead.url)
			logs, log := newLogRecords(t)
			s := newTestSideLog(t, cfg, nil, &fakeObserver{}, log)
			base := &http.Transport{}
			t.Cleanup(base.CloseIdleConnections)
			sent := &sentCounter{base: base}
			s.setTransport(sent)
			runSide(t, s, freeListener(t))

			const n = 1000
			jid := func(i int) mapping.BareJID { return mapping.BareJID(fmt.Sprintf("user%d@example.com", i)) }
			for i := range n {
				s.showGhost(jid(i), presenceIs(mapping.StateAvailable, "here"), time.Time{}, time.Now())
			}
			const window = 3 * time.Second
			start := time.Now()
			var commands, downErrs atomic.Int64
			var slowest atomic.Int64
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					for i := w; time.Since(start) < window; i = (i + 4) % n {
						t0 := time.Now()
						err := s.GhostMembership(t.Context(), bridge.GhostMembership{Ghost: jid(i), Peer: "@bob:localhost", Membership: bridge.MembershipInvite})
						if d := int64(time.Since(t0)); d > slowest.Load() {
							slowest.Store(d)
						}
						commands.Add(1)
						if errors.Is(err, ErrHomeserverDown) {
							downErrs.Add(1)
						}
					}
				})
			}
			wg.Wait()
			requests := sent.n.Load()
			elapsed := time.Since(start)
			t.Logf("dead homeserver, %d ghosts and %d command deliveries in %v: %d requests (%.1f/s); slowest command %v",
				n, commands.Load(), elapsed.Round(time.Millisecond), requests, float64(requests)/elapsed.Seconds(), time.Duration(slowest.Load()))
			// Before the first failure is known, each of the side's
			// concurrent callers may have one request out (8 presence
			// workers, 4 command loops, sync, poll, probe); after that one
			// trial per back-off step: 250ms, 500ms, 1s, 2s within 3 s.
			if requests > 15+4+3 {
				t.Errorf("%d requests against the dead homeserver in %v: more than one per back-off step", requests, elapsed)
			}
			if d := downErrs.Load(); d < commands.Load()-20 {
				t.Errorf("only %d of %d commands failed with ErrHomeserverDown", d, commands.Load())
			}
			if warn := logs.since(0, slog.LevelWarn); len(warn) != 1 {
				t.Errorf("warnings during the outage %q, want one line", warn)
			}

			back := logs.len()
			hs := dead.revive()
			ghost := ghostOf(t, jid(n-1))
			waitFor(t, 30*time.Second, "every ghost's presence sent once the homeserver is back", func() bool {
				hs.mu.Lock()
				defer hs.mu.Unlock()
				return len(hs.puts) == n && len(hs.puts[ghost]) == 1
			})
			// The bot's /sync is back at once, not after a back-off of its
			// own: Matrix presence flows again.
			waitFor(t, 10*time.Second, "a /sync after the homeserver answered", func() bool {
				sent.mu.Lock()
				defer sent.mu.Unlock()
				return !sent.syncAfter.IsZero()
			})
			if d := sent.syncAfter.Sub(sent.firstOK); d > time.Second {
				t.Errorf("/sync resumed %v after the homeserver answered again", d)
			}
			if c := logs.count(slog.LevelInfo, "homeserver answers again"); c != 1 {
				t.Errorf("%d 'answers again' lines, want 1", c)
			}
			if warn := logs.since(back, slog.LevelWarn); len(warn) != 0 {
				t.Errorf("warnings after the outage: %q", warn)
			}
			if g := s.Counts().HomeserverGated; g < uint64(commands.Load()-20) {
				t.Errorf("Counts().HomeserverGated = %d after %d refused commands", g, commands.Load())
			}
			// A membership command goes through again (the fake knows no
			// createRoom: any answer but ErrHomeserverDown will do).
			err := s.GhostMembership(context.Background(), bridge.GhostMembership{Ghost: jid(1), Peer: "@bob:localhost", Membership: bridge.MembershipLeave, RoomID: "!r:localhost"})
			if errors.Is(err, ErrHomeserverDown) {
				t.Errorf("membership after the outage: %v", err)
			}
		})
	}
}
