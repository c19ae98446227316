package matrixside

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// countingHS is a minimal homeserver for benchmarks: it accepts
// everything and counts presence PUTs, keeping the last status per ghost.
type countingHS struct {
	*httptest.Server
	puts atomic.Int64
	mu   sync.Mutex
	last map[string]string // ghost → status of its last PUT
}

func newCountingHS(b testing.TB) *countingHS {
	h := &countingHS{last: map[string]string{}}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/presence/") {
			h.puts.Add(1)
			var body presenceBody
			_ = json.NewDecoder(r.Body).Decode(&body)
			h.mu.Lock()
			h.last[r.URL.Query().Get("user_id")] = body.StatusMsg
			h.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	}))
	b.Cleanup(h.Close)
	return h
}

func benchSide(b *testing.B, hsURL string) (*Side, func()) {
	s := newTestSide(b, testConfig(hsURL), nil, &fakeObserver{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range s.workers {
		wg.Go(func() { s.out.run(ctx) })
	}
	return s, func() { cancel(); wg.Wait(); s.as.HTTPClient.CloseIdleConnections() }
}

// BenchmarkEventsToRequests: normalized presence commands in (ShowGhost,
// as the core calls it), HTTP PUTs out to a counting homeserver in a
// child process. One op is one command that becomes one PUT: commands go
// to 2000 ghosts in turn, and each round waits until all PUTs are
// answered, so nothing is replaced while queued. events/cpu-s is events
// per second of this process's CPU (user+system), i.e. of the bridge
// alone.
func BenchmarkEventsToRequests(b *testing.B) { benchEventsToRequests(b, false) }

// BenchmarkEventsToRequestsQuiet is BenchmarkEventsToRequests with every
// ghost quiet between its changes, the least favourable case for the
// ghost records (sidestate.go): each PUT makes its record pending first,
// and each accepted state is written behind (the flush after every round,
// timed). With ghosts changing often, as in BenchmarkEventsToRequests,
// neither write happens.
func BenchmarkEventsToRequestsQuiet(b *testing.B) { benchEventsToRequests(b, true) }

func benchEventsToRequests(b *testing.B, quiet bool) {
	hs := startChildServer(b)
	s, stop := benchSide(b, hs.URL)
	defer stop()
	const ghosts = 2000
	jids := make([]mapping.BareJID, ghosts)
	for i := range jids {
		jids[i] = mapping.BareJID(fmt.Sprintf("user%d@example.com", i))
	}
	ctx := context.Background()
	// Register every ghost first: a one-time cost per ghost and process.
	for _, j := range jids {
		_ = s.ShowGhost(ctx, bridge.GhostPresence{User: j, Presence: mapping.Presence{State: mapping.StateOffline}})
	}
	waitIdle := func() {
		for !s.out.idle() {
			time.Sleep(50 * time.Microsecond)
		}
	}
	waitIdle()
	if quiet {
		s.state.flush(ctx, time.Time{})
	}
	before := hs.puts(b)
	states := []mapping.State{mapping.StateAvailable, mapping.StateAway, mapping.StateOffline} // each a different Matrix presence
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	n := 0
	for b.Loop() {
		p := mapping.Presence{State: states[(n/ghosts)%len(states)], Status: "status"}
		_ = s.ShowGhost(ctx, bridge.GhostPresence{User: jids[n%ghosts], Presence: p})
		n++
		if n%ghosts == 0 {
			waitIdle()
			if quiet {
				s.state.flush(ctx, time.Time{})
			}
		}
	}
	waitIdle()
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer()
	puts := hs.puts(b) - before
	b.ReportMetric(float64(n)/cpu.Seconds(), "events/cpu-s")
	b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(puts)/float64(n), "puts/event")
}

// BenchmarkStorm: 10k updates to 1k ghosts within a second. The outbox
// keeps only the latest state per ghost while one is queued or in flight
// (coalescing by time is the core's): every ghost must end at its last
// state. Reports PUTs per update.
func BenchmarkStorm(b *testing.B) {
	const (
		ghosts  = 1000
		updates = 10000
	)
	jids := make([]mapping.BareJID, ghosts)
	for i := range jids {
		jids[i] = mapping.BareJID(fmt.Sprintf("storm%d@example.com", i))
	}
	ctx := context.Background()
	totalPuts := int64(0)
	for b.Loop() {
		b.StopTimer()
		hs := newCountingHS(b)
		s, stop := benchSide(b, hs.URL)
		b.StartTimer()
		begin := time.Now()
		for i := range updates {
			p := mapping.Presence{State: mapping.StateAway, Status: fmt.Sprintf("update %d", i/ghosts)}
			_ = s.ShowGhost(ctx, bridge.GhostPresence{User: jids[i%ghosts], Presence: p})
		}
		if d := time.Since(begin); d > time.Second {
			b.Fatalf("storm took %v, not within a second", d)
		}
		for !s.out.idle() {
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		stop()
		final := fmt.Sprintf("update %d", updates/ghosts-1)
		hs.mu.Lock()
		for _, j := range jids {
			if got := hs.last[ghostOf(b, j)]; got != final {
				b.Fatalf("%s ended at %q, want %q", j, got, final)
			}
		}
		hs.mu.Unlock()
		totalPuts += hs.puts.Load()
		hs.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(totalPuts)/float64(b.N*updates), "puts/update")
}

// kvDedup is the transaction de-duplication this package had before: a
// KV lookup and a KV write of every transaction id on the request path.
// It stays here as the "before" of BenchmarkTransactionCPU.
type kvDedup struct {
	bucket *bridge.Bucket[time.Time]
	next   http.Handler
}

func (k kvDedup) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := txnKey(r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:])
	if _, _, err := k.bucket.Get(r.Context(), key); err == nil {
		return
	} else if !errors.Is(err, bridge.ErrNotFound) {
		w.WriteHeader(503)
		return
	}
	k.next.ServeHTTP(w, r)
	_, _ = k.bucket.Put(r.Context(), key, time.Now().UTC())
}

// BenchmarkTransactionCPU: CPU per appservice transaction (one presence
// change, as Synapse pushes them), through the whole handler, with the
// transaction id de-duplicated across restarts before (a KV lookup and
// write per transaction, on the request path) and after (memory, the
// newest id written behind by the side's goroutine: back to back, as
// here, it writes a fraction of the ids). "after-every-id-written" writes
// every id as if the transactions came one by one with pauses between
// them, the least favourable case. CPU is the process's (user+system),
// the embedded NATS server's included.
func BenchmarkTransactionCPU(b *testing.B) {
	for _, variant := range []string{"before=kv-get-put", "after=memory-write-behind", "after-every-id-written"} {
		b.Run(variant, func(b *testing.B) {
			hs := newCountingHS(b)
			store := openTestStore(b, "")
			s := newTestSide(b, testConfig(hs.URL), store, &fakeObserver{})
			var h http.Handler = s.Handler()
			everyID := variant == "after-every-id-written"
			switch {
			case strings.HasPrefix(variant, "before"):
				s.txns = newTxnLog(nil, s.log) // the old code kept ids in memory too
				h = kvDedup{bucket: store.Txns, next: h}
			case everyID: // flushed in the loop
			default:
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { s.txns.run(ctx); close(done) }()
				defer func() { cancel(); <-done }()
			}
			bodies := [2]string{
				`{"events":[],"ephemeral":[` + presenceJSON("@bob:localhost", "online", "here", 0) + `]}`,
				`{"events":[],"ephemeral":[` + presenceJSON("@bob:localhost", "unavailable", "away", 0) + `]}`,
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			n := 0
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPut, "/_matrix/app/v1/transactions/"+strconv.Itoa(n), strings.NewReader(bodies[n%2]))
				req.Header.Set("Authorization", "Bearer "+testHS)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != 200 {
					b.Fatalf("transaction %d: %d %s", n, rec.Code, rec.Body)
				}
				if everyID {
					s.txns.flush(context.Background())
				}
				n++
			}
			cpu := cpuTime() - cpu0
			b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/txn")
		})
	}
}

// BenchmarkDeadHomeserver: a homeserver that refuses connections, 1,000
// ghosts with presence to show and 1,000 membership commands delivered
// again and again with no delay at all (worse than the bus, which backs
// off). One op is one delivery of the 1,000 commands. hs-req/s is the
// requests the side sent per second of wall time, over the whole run: the
// target is one per back-off step of the gate (250 ms doubling to 10 s),
// not one per command; run it long (-benchtime=20s) to see the cap.
func BenchmarkDeadHomeserver(b *testing.B) {
	ln := freeListener(b)
	dead := "http://" + ln.Addr().String()
	ln.Close()
	s := newTestSide(b, testConfig(dead), nil, &fakeObserver{})
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	sent := &sentCounter{base: base}
	s.setTransport(sent)
	stop := runSide(b, s, freeListener(b))
	defer stop()
	const n = 1000
	cmds := make([]bridge.GhostMembership, n)
	for i := range cmds {
		jid := mapping.BareJID(fmt.Sprintf("user%d@example.com", i))
		s.showGhost(jid, mapping.Presence{State: mapping.StateAvailable}, time.Time{}, time.Now())
		cmds[i] = bridge.GhostMembership{Ghost: jid, Peer: mapping.UserID(fmt.Sprintf("@peer%d:localhost", i)), Membership: bridge.MembershipInvite}
	}
	ctx := context.Background()
	start := time.Now()
	failed := 0
	for b.Loop() {
		for _, c := range cmds {
			if s.GhostMembership(ctx, c) != nil {
				failed++
			}
		}
	}
	elapsed := time.Since(start)
	reqs := sent.n.Load()
	b.ReportMetric(float64(reqs)/elapsed.Seconds(), "hs-req/s")
	b.ReportMetric(float64(reqs), "hs-req")
	b.ReportMetric(float64(failed)/float64(b.N*n), "retryable/cmd")
}
