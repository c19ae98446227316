package matrixside

import (
	"context"
	"fmt"
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

// countingHS is a minimal homeserver for benchmarks: it accepts
// everything and counts presence PUTs, with their times if asked.
type countingHS struct {
	*httptest.Server
	puts  atomic.Int64
	mu    sync.Mutex
	times map[string][]time.Time // nil: not recorded
}

func newCountingHS(b testing.TB, keepTimes bool) *countingHS {
	h := &countingHS{}
	if keepTimes {
		h.times = map[string][]time.Time{}
	}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/presence/") {
			h.puts.Add(1)
			if h.times != nil {
				g := r.URL.Query().Get("user_id")
				h.mu.Lock()
				h.times[g] = append(h.times[g], time.Now())
				h.mu.Unlock()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	}))
	b.Cleanup(h.Close)
	return h
}

func benchSide(b *testing.B, hsURL string, window time.Duration) (*Side, func()) {
	cfg := testConfig(hsURL)
	cfg.CoalesceWindow = window
	s := newTestSide(b, cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range s.workers {
		wg.Go(func() { s.out.run(ctx) })
	}
	return s, func() { cancel(); wg.Wait() }
}

// BenchmarkEventsToRequests: normalized presence commands in (as the bus
// handler gets them), HTTP PUTs out to a counting homeserver in a child
// process. One op is one event that becomes one PUT: events go to 2000
// ghosts in turn, and each round waits until all PUTs are answered, so
// nothing is coalesced. events/cpu-s is events per second of this
// process's CPU (user+system), i.e. of the bridge alone.
func BenchmarkEventsToRequests(b *testing.B) {
	hs := startChildServer(b)
	s, stop := benchSide(b, hs.URL, 0)
	defer stop()
	const ghosts = 2000
	jids := make([]string, ghosts)
	for i := range jids {
		jids[i] = fmt.Sprintf("user%d@example.com", i)
	}
	ctx := context.Background()
	// Register every ghost first: a one-time cost per ghost and process.
	for _, j := range jids {
		s.onPresenceOut(ctx, &bridge.Event{User: j, Origin: mapping.NetworkXMPP, Kind: bridge.KindPresence, Presence: &mapping.Presence{State: mapping.StateOffline}})
	}
	waitIdle := func() {
		for !s.out.idle() {
			time.Sleep(50 * time.Microsecond)
		}
	}
	waitIdle()
	before := hs.puts(b)
	states := []mapping.State{mapping.StateAvailable, mapping.StateAway, mapping.StateOffline} // each a different Matrix presence
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	n := 0
	for b.Loop() {
		p := mapping.Presence{State: states[(n/ghosts)%len(states)], Status: "status"}
		s.onPresenceOut(ctx, &bridge.Event{User: jids[n%ghosts], Origin: mapping.NetworkXMPP, Kind: bridge.KindPresence, Presence: &p})
		n++
		if n%ghosts == 0 {
			waitIdle()
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

// BenchmarkStorm: 10k updates to 1k ghosts within a second. Reports the
// most PUTs any ghost got within one coalescing window (must be 1) and
// PUTs per update.
func BenchmarkStorm(b *testing.B) {
	const (
		ghosts  = 1000
		updates = 10000
		window  = 250 * time.Millisecond
	)
	jids := make([]string, ghosts)
	for i := range jids {
		jids[i] = fmt.Sprintf("storm%d@example.com", i)
	}
	ctx := context.Background()
	worst, totalPuts := 0, int64(0)
	for b.Loop() {
		b.StopTimer()
		hs := newCountingHS(b, true)
		s, stop := benchSide(b, hs.URL, window)
		b.StartTimer()
		begin := time.Now()
		for i := range updates {
			p := mapping.Presence{State: mapping.StateAway, Status: fmt.Sprintf("update %d", i/ghosts)}
			s.onPresenceOut(ctx, &bridge.Event{User: jids[i%ghosts], Origin: mapping.NetworkXMPP, Kind: bridge.KindPresence, Presence: &p})
		}
		if d := time.Since(begin); d > time.Second {
			b.Fatalf("storm took %v, not within a second", d)
		}
		for !s.out.idle() {
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		stop()
		hs.mu.Lock()
		for g, ts := range hs.times {
			for i := range ts {
				n := 0
				for j := i; j < len(ts) && ts[j].Sub(ts[i]) < window; j++ {
					n++
				}
				if n > worst {
					worst = n
					b.Logf("ghost %s: %d PUTs within %v", g, n, window)
				}
			}
		}
		hs.mu.Unlock()
		totalPuts += hs.puts.Load()
		hs.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(worst), "puts/ghost/window")
	b.ReportMetric(float64(totalPuts)/float64(b.N*updates), "puts/update")
	if worst > 1 {
		b.Fatalf("%d PUTs for one ghost within one coalescing window", worst)
	}
}
