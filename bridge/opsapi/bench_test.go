package opsapi_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/core"
	"github.com/presence-bridge/presence-bridge/bridge/opsapi"
	"github.com/presence-bridge/presence-bridge/bridge/transport"
	"github.com/presence-bridge/presence-bridge/internal/testenv/poll"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// BenchmarkGet100Of100k: get for 100 users (random, mixed XMPP and
// Matrix) with 100k users tracked in pb_presence, through the embedded
// NATS. Reports requests/s and the p99 latency of one request.
func BenchmarkGet100Of100k(b *testing.B) {
	const tracked = 100_000
	cfg := bridge.Default()
	cfg.Embedded.DataDir = b.TempDir()
	bus, err := bridge.Open(context.Background(), cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	users := make([]string, tracked)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range users {
		net, user := mapping.NetworkXMPP, fmt.Sprintf("user%d@xmpp.example", i)
		if i%2 == 1 {
			net, user = mapping.NetworkMatrix, fmt.Sprintf("@user%d:example.org", i)
		}
		users[i] = user
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, _ = bus.Store().Presence.Put(context.Background(), bridge.PresenceKey(net, user),
				bridge.PresenceRecord{Presence: mapping.Presence{State: mapping.StateAway, Status: "lunch", Priority: 1}, Seq: 1, UpdatedAt: time.Now()})
		})
	}
	wg.Wait()
	// As in the bridge: opt-outs come from the core's memory, resources
	// from the XMPP side through the bus (one request per get).
	svc, err := opsapi.New(bus.Conn(), opsapi.Options{Store: bus.Store(), Namespace: ns, Table: mapping.DefaultTable(),
		OptedOut: func(mapping.Network, string) bool { return false }, Resources: transport.NewPublisher(bus)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	<-svc.Ready()
	resSrv := transport.ServeResources(bus, lister{}, nil)
	resDone := make(chan error, 1)
	go func() { resDone <- resSrv.Run(ctx) }()
	<-resSrv.Ready()
	client := opsapi.NewClient(bus.Conn())
	req := make([]string, 100)
	lat := make([]time.Duration, 0, 1024)
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		for j := range req {
			req[j] = users[rand.IntN(tracked)]
		}
		t0 := time.Now()
		rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := client.Get(rctx, req...)
		rcancel()
		if err != nil || len(r.Presences) != 100 || r.Presences[0].State != mapping.StateAway {
			b.Fatalf("get: %v", err)
		}
		lat = append(lat, time.Since(t0))
	}
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	cancel()
	<-done
	<-resDone
}

// BenchmarkCoreWatchers: core throughput (presence reports through the
// embedded NATS, the core, out to the other side's subject; 10k users, no
// coalescing, as in core's BenchmarkCoreThroughput) with the updates
// publisher installed and no watcher, then with 10 watch subscriptions,
// alternating three times in one run. Reports both rates and their ratio
// (with / without; 1 = watchers cost nothing).
func BenchmarkCoreWatchers(b *testing.B) {
	cfg := bridge.Default()
	cfg.Embedded.DataDir = b.TempDir()
	bus, err := bridge.Open(context.Background(), cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	ccfg := core.Default()
	ccfg.CoalesceWindow = 0
	pub := transport.NewPublisher(bus)
	c, err := core.New(ccfg, ns, bus.Store(), pub, pub, nil)
	if err != nil {
		b.Fatal(err)
	}
	c.SetWatcher(opsapi.NewUpdates(bus.Conn(), nil))
	ctx, cancel := context.WithCancel(context.Background())
	coreDone := make(chan error, 1)
	go func() { coreDone <- c.Run(ctx) }()
	<-c.Ready()
	srv := transport.ServeCore(bus, c, c, nil)
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Run(ctx) }()
	<-srv.Ready()
	var out, watched atomic.Int64
	sub, err := bus.Conn().Subscribe("pb.v1.out.matrix.presence.*", func(*nats.Msg) { out.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	users := make([]mapping.BareJID, 10000)
	for i := range users {
		users[i] = mapping.BareJID(fmt.Sprintf("user%d@xmpp.example", i))
	}
	p := mapping.Presence{State: mapping.StateAway, Status: "lunch"}
	seq := uint64(0)
	run := func(n int) float64 {
		out.Store(0)
		start := time.Now()
		for i := range n {
			seq++
			if err := pub.XMPPPresence(ctx, bridge.XMPPPresence{Stamp: bridge.Stamp{Seq: seq}, User: users[i%len(users)], Presence: p}); err != nil {
				b.Fatal(err)
			}
		}
		poll.Until(b, 2*time.Minute, fmt.Sprintf("%d events out", n), func() bool { return out.Load() >= int64(n) })
		if got := out.Load(); got < int64(n) {
			b.Fatalf("only %d of %d events came out", got, n)
		}
		return float64(n) / time.Since(start).Seconds()
	}
	n := max(b.N, 20_000)
	var without, with float64
	b.ResetTimer()
	for range 3 {
		without += run(n)
		var subs []*nats.Subscription
		for range 10 {
			s, err := bus.Conn().Subscribe(opsapi.UpdatesPrefix+".>", func(*nats.Msg) { watched.Add(1) })
			if err != nil {
				b.Fatal(err)
			}
			_ = s.SetPendingLimits(-1, -1)
			subs = append(subs, s)
		}
		_ = bus.Conn().Flush()
		with += run(n)
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}
	b.StopTimer()
	b.ReportMetric(without/3, "events/s-0-watchers")
	b.ReportMetric(with/3, "events/s-10-watchers")
	b.ReportMetric(with/without, "ratio")
	if watched.Load() == 0 {
		b.Fatal("the watchers saw nothing")
	}
	cancel()
	<-srvDone
	<-coreDone
}
