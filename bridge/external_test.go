package bridge

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/testenv/natscluster"
	"github.com/presence-bridge/presence-bridge/internal/testenv/poll"
	"github.com/presence-bridge/presence-bridge/mapping"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// openExternal retries while the cluster elects its JetStream leader.
func openExternal(t *testing.T, urls []string, replicas int) *Bus {
	t.Helper()
	cfg := Default()
	cfg.URLs, cfg.Replicas = urls, replicas
	var b *Bus
	var err error
	poll.Until(t, 60*time.Second, "external nats usable", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		b, err = Open(ctx, cfg, nil)
		return err == nil
	})
	t.Cleanup(func() { b.Close() })
	return b
}

// TestExternalClusterMode: two bridge processes' worth of buses on
// different servers of one three-node cluster share events and state.
func TestExternalClusterMode(t *testing.T) {
	cl := natscluster.Start(t, 3)
	urls := cl.URLs()
	a := openExternal(t, urls[:1], 3)
	b := openExternal(t, urls[2:], 3)
	ctx := context.Background()

	// State written through one server is read through another. KV reads
	// are direct gets, which any replica may answer: a replica that has
	// not applied the write yet answers "not found" for a moment.
	if _, err := a.Store().Settings.Put(ctx, PresenceKey(mapping.NetworkXMPP, "alice@example.com"), UserSettings{OptOut: true}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the opt-out read through another server", func() bool {
		s, _, err := b.Store().Settings.Get(ctx, PresenceKey(mapping.NetworkXMPP, "alice@example.com"))
		return err == nil && s.OptOut
	})

	// A durable event published on one server is consumed on another.
	var got atomic.Int32
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(cctx, "ext-test", SubjectFilter(Out, mapping.NetworkMatrix, KindSubscription), nil, func(_ context.Context, ev *Event) error {
			if ev.Peer == "@bob:example.org" {
				got.Add(1)
			}
			return nil
		})
	}()
	if err := a.Publish(ctx, Out, &Event{Kind: KindSubscription, Origin: mapping.NetworkXMPP, User: "alice@example.com", Peer: "@bob:example.org", Subscription: &SubscriptionPayload{Type: Subscribe}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "durable event across the cluster", func() bool { return got.Load() == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestExternalConnectErrorIsClear(t *testing.T) {
	cfg := Default()
	cfg.URLs = []string{fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Open(ctx, cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "connect to nats") {
		t.Fatalf("err = %v", err)
	}
}

// TestClusterReplicatesEverything: with nats.replicas 3 every stream and
// bucket of the bridge has three current peers, and the state survives
// the loss of any one node (SIGKILL): reads and compare-and-set writes go
// on through the other two.
func TestClusterReplicatesEverything(t *testing.T) {
	cl := natscluster.Start(t, 3)
	b := openExternal(t, cl.URLs(), 3)
	if _, err := b.Leases(context.Background(), testLease, 3, "t"); err != nil {
		t.Fatal(err)
	}
	streams := []string{ControlStream, DeadLetterStream}
	for _, bk := range []string{BucketPresence, BucketSubscriptions, BucketLinks, BucketSettings, BucketTxns, BucketLeases} {
		streams = append(streams, "KV_"+bk)
	}
	for _, s := range streams {
		waitFor(t, 30*time.Second, s+" with 3 current replicas", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			peers, current, err := natscluster.StreamReplicas(ctx, cl.URL(0), s)
			return err == nil && peers == 3 && current == 3
		})
	}
	ctx := context.Background()
	key := PresenceKey(mapping.NetworkXMPP, "alice@example.com")
	if _, err := b.Store().Settings.Put(ctx, key, UserSettings{OptOut: true}); err != nil {
		t.Fatal(err)
	}
	cl.Kill(0)
	waitFor(t, 30*time.Second, "state readable and writable with one node dead", func() bool {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := b.Store().Settings.Update(cctx, key, func(cur UserSettings, ok bool) (UserSettings, bool, error) {
			return UserSettings{OptOut: !cur.OptOut}, true, nil
		})
		return err == nil
	})
	s, _, err := b.Store().Settings.Get(ctx, key)
	if err != nil || s.OptOut {
		t.Fatalf("after the node's death: %+v %v, want the one update applied", s, err)
	}
}

// TestLeaseNeverTwoHoldersWhileNodesDie: two instances, each connected to
// a different node of a three-node cluster, compete for one lease while
// each node in turn is killed (SIGKILL) and restarted. Leadership may
// change hands (a dead node may have led the lease bucket), but the two
// terms never overlap, and someone holds the lease again each time.
func TestLeaseNeverTwoHoldersWhileNodesDie(t *testing.T) {
	cl := natscluster.Start(t, 3)
	a := openExternal(t, []string{cl.URL(0), cl.URL(1)}, 3)
	b := openExternal(t, []string{cl.URL(2), cl.URL(1)}, 3)
	cfg := LeaseConfig{TTL: 3 * time.Second, Renew: time.Second}
	var ta, tb term
	for _, h := range []struct {
		bus *Bus
		tm  *term
		id  string
	}{{a, &ta, "a"}, {b, &tb, "b"}} {
		l, err := h.bus.Leases(context.Background(), cfg, 3, h.id)
		if err != nil {
			t.Fatal(err)
		}
		runLease(t, l, h.tm, nil)
	}
	someone := func() bool { return ta.isActive() || tb.isActive() }
	waitFor(t, 30*time.Second, "a holder", someone)
	for node := range 3 {
		cl.Kill(node)
		waitFor(t, 60*time.Second, fmt.Sprintf("a holder with node %d dead", node), someone)
		cl.Restart(node)
		cl.WaitReady(60 * time.Second)
		waitFor(t, 60*time.Second, fmt.Sprintf("a holder with node %d back", node), someone)
	}
	// The terms, as intervals on this process's clock, never overlap.
	ta.mu.Lock()
	tb.mu.Lock()
	defer ta.mu.Unlock()
	defer tb.mu.Unlock()
	type span struct{ from, to time.Time }
	spans := func(tm *term) []span {
		var out []span
		for i, s := range tm.starts {
			end := time.Now()
			if i < len(tm.ends) {
				end = tm.ends[i]
			}
			out = append(out, span{s, end})
		}
		return out
	}
	for _, x := range spans(&ta) {
		for _, y := range spans(&tb) {
			if x.from.Before(y.to) && y.from.Before(x.to) {
				t.Errorf("a held the lease %v–%v and b %v–%v: two holders at once", x.from.Format("05.000"), x.to.Format("05.000"), y.from.Format("05.000"), y.to.Format("05.000"))
			}
		}
	}
	t.Logf("terms: a %d, b %d", len(ta.starts), len(tb.starts))
}
