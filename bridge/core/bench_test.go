package core

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/transport"
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
	deadline := time.Now().Add(2 * time.Minute)
	for out.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
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
