package matrixfed

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// sink is a destination server that accepts every transaction and
// records, for each presence update, how long after its status stamp it
// arrived.
type sink struct {
	srv   *httptest.Server
	name  string
	push  atomic.Int64
	mu    sync.Mutex
	lat   []time.Duration
	round atomic.Int64
}

func newSink(b testing.TB) *sink {
	s := &sink{}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var txn struct {
			EDUs []struct {
				Content struct {
					Push []pushEntry `json:"push"`
				} `json:"content"`
			} `json:"edus"`
		}
		_ = json.NewDecoder(r.Body).Decode(&txn)
		now := time.Now()
		want := "r" + strconv.FormatInt(s.round.Load(), 10) + " "
		for _, e := range txn.EDUs {
			for _, p := range e.Content.Push {
				if !strings.HasPrefix(p.StatusMsg, want) {
					continue // an older round's, late
				}
				ns, _ := strconv.ParseInt(strings.TrimPrefix(p.StatusMsg, want), 10, 64)
				s.mu.Lock()
				s.lat = append(s.lat, now.Sub(time.Unix(0, ns)))
				s.mu.Unlock()
				s.push.Add(1)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"pdus":{}}`))
	}))
	b.Cleanup(s.srv.Close)
	s.name = strings.TrimPrefix(s.srv.URL, "https://")
	return s
}

// BenchmarkPresenceOut: one presence change of each of 1,000 ghosts, each
// in a room shared with users of 10 destination servers (10,000 updates
// per round). Reports updates delivered per second, updates per
// transaction, and the latency from ShowGhost to the destination (p50,
// p99). The destinations are in-process TLS sinks, not homeservers.
func BenchmarkPresenceOut(b *testing.B) {
	const ghosts, dests = 1000, 10
	cfg := gatewayConfig(b, b.TempDir())
	gw := startGateway(b, cfg, bridge.NewMemoryStore(), &recorder{})
	var sinks []*sink
	for range dests {
		sinks = append(sinks, newSink(b))
	}
	jids := make([]mapping.BareJID, ghosts)
	for i := range ghosts {
		jids[i] = mapping.BareJID(fmt.Sprintf("user%d@xmpp.test", i))
		ghost := id.UserID(gw.ghost(b, jids[i]))
		_, _, err := gw.rooms.update(b.Context(), id.RoomID(fmt.Sprintf("!r%d:%s", i, sinks[0].name)), true, func(r *room) bool {
			r.Version, r.Via = "10", sinks[0].name
			r.Ghosts[ghost] = "join"
			for _, s := range sinks {
				r.Members[id.UserID("@u"+strconv.Itoa(i)+":"+s.name)] = "join"
			}
			return true
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	var delivered int64
	start := time.Now()
	b.ResetTimer()
	for n := range b.N {
		round := int64(n + 1)
		for _, s := range sinks {
			s.round.Store(round)
			s.push.Store(0)
		}
		for _, j := range jids {
			_ = gw.ShowGhost(b.Context(), bridge.GhostPresence{User: j, Presence: mapping.Presence{
				State: mapping.StateAvailable, Status: "r" + strconv.FormatInt(round, 10) + " " + strconv.FormatInt(time.Now().UnixNano(), 10)}})
		}
		deadline := time.Now().Add(time.Minute)
		for {
			var got int64
			for _, s := range sinks {
				got += s.push.Load()
			}
			if got >= ghosts*dests {
				delivered += got
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("round %d: %d of %d updates delivered in a minute", round, got, ghosts*dests)
			}
			time.Sleep(time.Millisecond) // a benchmark's own poll
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	var lat []time.Duration
	for _, s := range sinks {
		lat = append(lat, s.lat...)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(delivered)/elapsed.Seconds(), "updates/s")
	b.ReportMetric(float64(gw.out.sentPushes.Load())/float64(max(gw.out.sentTxns.Load(), 1)), "updates/txn")
	b.ReportMetric(float64(gw.out.sentEDUs.Load())/float64(max(gw.out.sentTxns.Load(), 1)), "EDUs/txn")
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
}
