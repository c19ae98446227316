package core

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/transport"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// BenchmarkCoreThroughput: presence reports from a side, through the
// embedded NATS (transport.Publisher → transport.ServeCore), the core's
// rules, and out to the other side's subject (target ≥ 50k events/s). 10k
// distinct linked users, no coalescing, so every event is routed.
func BenchmarkCoreThroughput(b *testing.B) {
	bcfg := bridge.Default()
	bcfg.Embedded.DataDir = b.TempDir()
	bus, err := bridge.Open(context.Background(), bcfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	users := make([]mapping.BareJID, 10000)
	for i := range users {
		users[i] = mapping.BareJID(fmt.Sprintf("user%d@xmpp.example", i))
		// Only people with a link are carried: link them all, as a
		// previous run would have.
		if _, err := bus.Store().Links.Put(context.Background(), bridge.PairKey(bob, string(users[i])), bridge.Link{
			MatrixUser: bob, XMPPUser: users[i], State: bridge.LinkApproved, UpdatedAt: time.Now().UTC(),
		}); err != nil {
			b.Fatal(err)
		}
	}
	cfg := Default()
	cfg.CoalesceWindow = 0
	pub := transport.NewPublisher(bus)
	c, err := New(cfg, ns, bus.Store(), pub, pub, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	coreDone := make(chan error, 1)
	go func() { coreDone <- c.Run(ctx) }()
	<-c.Ready()
	srv := transport.ServeCore(bus, c, c, nil)
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Run(ctx) }()
	<-srv.Ready()
	var out atomic.Int64
	sub, err := bus.Conn().Subscribe("pb.v1.out.matrix.presence.*", func(*nats.Msg) { out.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	p := mapping.Presence{State: mapping.StateAway, Status: "lunch"}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := pub.XMPPPresence(ctx, bridge.XMPPPresence{User: users[i%len(users)], Presence: p}); err != nil {
			b.Fatal(err)
		}
	}
	bustest.WaitFor(b, 2*time.Minute, "every event out", func() bool { return out.Load() >= int64(b.N) })
	elapsed := time.Since(start)
	b.StopTimer()
	if got := out.Load(); got < int64(b.N) {
		b.Fatalf("only %d of %d events came out", got, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	cancel()
	<-srvDone
	<-coreDone
}

// nopSides is both sides, doing nothing.
type nopSides struct{}

func (nopSides) ShowPuppet(context.Context, bridge.PuppetPresence) error           { return nil }
func (nopSides) SendSubscription(context.Context, bridge.PuppetSubscription) error { return nil }
func (nopSides) ShowGhost(context.Context, bridge.GhostPresence) error             { return nil }
func (nopSides) GhostMembership(context.Context, bridge.GhostMembership) error     { return nil }

// runBenchCore runs a core on an in-memory store with sides that do
// nothing, until the benchmark ends.
func runBenchCore(b *testing.B, cfg Config) (*Core, *bridge.Store) {
	b.Helper()
	store := bridge.NewMemoryStore()
	c, err := New(cfg, ns, store, nopSides{}, nopSides{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	<-c.Ready()
	b.Cleanup(func() { cancel(); <-done })
	return c, store
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// BenchmarkForgedPresenceMemory: presence from 30,000 forged addresses
// (no link), then the heap the core and its state keep (target: flat).
func BenchmarkForgedPresenceMemory(b *testing.B) {
	cfg := Default()
	p := mapping.Presence{State: mapping.StateAway, Status: "spam spam spam"}
	var grown float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c, _ := runBenchCore(b, cfg)
		before := heapInUse()
		b.StartTimer()
		for k := range 30000 {
			_ = c.XMPPPresence(context.Background(), bridge.XMPPPresence{User: mapping.BareJID(fmt.Sprintf("forged%d@evil.example", k)), Presence: p})
		}
		b.StopTimer()
		// Let the persister write what it holds: what stays is state.
		bustest.WaitFor(b, time.Minute, "the persister idle", func() bool { return c.pendingWrites() == 0 })
		grown += float64(int64(heapInUse()) - int64(before))
		b.StartTimer()
	}
	b.ReportMetric(grown/float64(b.N)/1024, "KiB-kept/30k")
}

// BenchmarkSubscriptionFlood: the core's cost of a subscription request
// from a forging domain over its budget (ns/op), the flood that delayed
// every other stanza in issue 9.
func BenchmarkSubscriptionFlood(b *testing.B) {
	c, _ := runBenchCore(b, Default())
	reqs := make([]bridge.XMPPSubscription, 10000)
	for i := range reqs {
		reqs[i] = bridge.XMPPSubscription{Contact: mapping.BareJID(fmt.Sprintf("forged%d@evil.example", i)), Puppet: mapping.UserID(fmt.Sprintf("@victim%d:example.org", i)), Type: bridge.Subscribe}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = c.XMPPSubscription(context.Background(), reqs[i%len(reqs)])
	}
}
