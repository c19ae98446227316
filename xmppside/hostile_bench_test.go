package xmppside

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// BenchmarkForgedAddressesMemory: the component's heap before and after
// 30,000 forged addresses of one hostile domain each send it directed
// presence from two resources, a probe, a subscription request and
// unavailable, to 100 puppets (straight into the stream handler, so that
// only the component and its KV bucket are measured). Metrics: the heap
// after over the heap before (target: flat, 1.0), the growth per address,
// and the subscription keys stored. Run with -benchtime=1x.
func BenchmarkForgedAddressesMemory(b *testing.B) {
	const addresses = 30000
	for b.Loop() {
		c, obs := newTestComponent(b)
		var puppets []string
		for i := range 100 {
			puppets = append(puppets, puppetOf(b, c, mapping.UserID(fmt.Sprintf("@u%d:example.org", i))))
		}
		i := 0
		gen := &genReader{head: []byte(`<stream xmlns='jabber:component:accept'>`), next: func() []byte {
			switch {
			case i == addresses:
				i++
				return []byte(`</stream>`)
			case i > addresses:
				return nil
			}
			from, to := fmt.Sprintf("s%d@evil.example", i), puppets[i%len(puppets)]
			var s strings.Builder
			fmt.Fprintf(&s, `<presence from='%s/a' to='%s'><show>chat</show><status>hello %d</status><priority>5</priority></presence>`, from, to, i)
			fmt.Fprintf(&s, `<presence from='%s/b' to='%s'><show>dnd</show></presence>`, from, to)
			fmt.Fprintf(&s, `<presence type='probe' from='%s/a' to='%s'/>`, from, to)
			fmt.Fprintf(&s, `<presence type='subscribe' from='%s' to='%s'/>`, from, to)
			fmt.Fprintf(&s, `<presence type='unavailable' from='%s/b' to='%s'/>`, from, to)
			i++
			return []byte(s.String())
		}}
		d := xml.NewDecoder(gen)
		if _, err := d.Token(); err != nil {
			b.Fatal(err)
		}
		w := xml.NewEncoder(io.Discard)
		ctx := context.Background()
		heap0 := heapInUse()
		start := time.Now()
		for {
			tok, err := d.Token()
			if err != nil {
				b.Fatal(err)
			}
			if _, ok := tok.(xml.EndElement); ok {
				break // </stream>
			}
			if st, ok := tok.(xml.StartElement); ok {
				c.handle(ctx, d, w, st)
			}
		}
		took := time.Since(start)
		heap1 := heapInUse()
		keys := 0
		_ = c.store.Subscriptions.Range(ctx, func(string, bridge.Subscription) error { keys++; return nil })
		b.ReportMetric(float64(heap1)/float64(heap0), "heap-after/before")
		b.ReportMetric(float64(heap1-heap0)/addresses, "heap-B/address")
		b.ReportMetric(float64(keys), "keys-stored")
		b.ReportMetric(float64(obs.reports()), "reports")
		b.ReportMetric(float64(addresses*5)/took.Seconds(), "stanzas/s")
	}
}

// BenchmarkLatencyUnderSubscribeFlood: while a hostile server sends 10,000
// subscription requests from forged addresses through a real Prosody, a
// contact changes presence every 2 ms; each change's latency is from the
// contact's send to the report to the core. Sub-benchmarks: one hostile
// domain with the default budgets; and "open", budgets so wide that every
// request is stored and reported (the cost of 10,000 legitimate requests).
// Metrics: p50, p99 and max latency in ms. Run with -benchtime=1x.
func BenchmarkLatencyUnderSubscribeFlood(b *testing.B) {
	b.Run("defaults", func(b *testing.B) { benchFloodLatency(b) })
	b.Run("open", func(b *testing.B) {
		benchFloodLatency(b, func(c *Config) {
			open := Rate{Every: time.Millisecond, Burst: 1_000_000}
			c.Limits.SubscribePerAddress, c.Limits.SubscribePerDomain = open, open
		})
	})
}

func benchFloodLatency(b *testing.B, mutate ...func(*Config)) {
	const requests = 10000
	for b.Loop() {
		r, evil := startHostileRig(b, PolicyAsk, mutate...)
		const aliceJID mapping.BareJID = "alice@localhost"
		alice := r.login("alice", "laptop", 0, "", "")
		puppet := r.puppet(bob)
		if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
			b.Fatal(err)
		}
		r.waitSub(bob, aliceJID, sNonePI)
		r.command(bob, aliceJID, bridge.Subscribed)
		r.command(bob, aliceJID, bridge.Subscribe)
		alice.Wait(b, waitLong, "subscribe from the puppet", from("presence", "subscribe", puppet))
		if err := alice.SendPresence(r.ctx(), "subscribed", puppet, "", "", 0); err != nil {
			b.Fatal(err)
		}
		r.waitSub(bob, aliceJID, sBoth)

		var mu sync.Mutex
		sent := map[string]time.Time{}
		done := make(chan struct{})
		var flooded atomic.Bool
		go func() {
			defer close(done)
			ctx := context.Background()
			for i := 0; ; i++ {
				select {
				case <-r.ctx().Done():
					return
				default:
				}
				if i >= 200 && flooded.Load() {
					return
				}
				status := fmt.Sprintf("m%d", i)
				mu.Lock()
				sent[status] = time.Now()
				mu.Unlock()
				if err := alice.SendPresence(ctx, "", "", []string{"away", "dnd"}[i%2], status, 0); err != nil {
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
		blast(b, evil, requests, func(i int) string {
			return fmt.Sprintf(`<presence type='subscribe' from='s%d@%s' to='%s'/>`, i, evilDomain, r.puppet(mapping.UserID(fmt.Sprintf("@u%d:example.org", i%500))))
		})
		r.sync(evil, "sync@"+evilDomain+"/r")
		flooded.Store(true)
		<-done
		waitFor(b, waitLong, "the last presence reported", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return r.obs.lastPresence(aliceJID).Status == fmt.Sprintf("m%d", len(sent)-1)
		})
		ps, at := r.obs.presenceReports(aliceJID)
		var lat []float64
		mu.Lock()
		for i, p := range ps {
			if t0, ok := sent[p.Status]; ok {
				lat = append(lat, float64(at[i].Sub(t0))/float64(time.Millisecond))
			}
		}
		mu.Unlock()
		slices.Sort(lat)
		q := func(f float64) float64 { return lat[min(len(lat)-1, int(f*float64(len(lat))))] }
		_, reported := r.obs.reportsFrom(evilDomain)
		b.ReportMetric(q(0.5), "p50-ms")
		b.ReportMetric(q(0.99), "p99-ms")
		b.ReportMetric(lat[len(lat)-1], "max-ms")
		b.ReportMetric(float64(len(lat)), "samples")
		b.ReportMetric(float64(reported), "requests-reported")
	}
}

// genReader is a stream whose stanzas are made as they are read, so that
// the input takes no memory of its own.
type genReader struct {
	head []byte
	next func() []byte // nil at the end
}

func (g *genReader) Read(p []byte) (int, error) {
	for len(g.head) == 0 {
		if g.head = g.next(); g.head == nil {
			return 0, io.EOF
		}
	}
	n := copy(p, g.head)
	g.head = g.head[n:]
	return n, nil
}
