package transport

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/core"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// The Matrix user every XMPP user of these tests is linked with.
const clusterBob = mapping.UserID("@bob:example.org")

var clusterNS = mapping.Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: "example.org", ComponentDomain: "matrix.example.org"}

// sharedNATS starts the embedded server (nats-server v2.15.2) listening on
// a loopback port, as one NATS for several core instances, each with its
// own connection. It returns the URL and token, and the host's bus.
func sharedNATS(t testing.TB) (string, string, *bridge.Bus) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg := bridge.Default()
	cfg.Embedded.DataDir = dir
	cfg.Embedded.Listen = addr
	host, err := bridge.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	tok, err := os.ReadFile(filepath.Join(dir, bridge.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return "nats://" + addr, strings.TrimSpace(string(tok)), host
}

// applied records, across core instances, every presence a core
// recorded: which instance, which user, which sequence.
type applied struct {
	mu     sync.Mutex
	byInst map[string]map[string][]uint64 // instance → user → seqs in order
	all    map[string][]uint64            // user → seqs in order, any instance
}

func newApplied() *applied {
	return &applied{byInst: map[string]map[string][]uint64{}, all: map[string][]uint64{}}
}

type appliedBy struct {
	a    *applied
	inst string
}

func (w appliedBy) PresenceChanged(_ mapping.Network, user string, rec bridge.PresenceRecord, _ bool) {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	m := w.a.byInst[w.inst]
	if m == nil {
		m = map[string][]uint64{}
		w.a.byInst[w.inst] = m
	}
	m[user] = append(m[user], rec.Seq)
	w.a.all[user] = append(w.a.all[user], rec.Seq)
}

// coreInstance is one core process: its own NATS connection, core and
// transport.
type coreInstance struct {
	name   string
	bus    *bridge.Bus
	core   *core.Core
	cancel context.CancelFunc
	done   sync.WaitGroup
}

func startCoreInstance(t testing.TB, name, url, token string, a *applied, window time.Duration, ttl time.Duration) *coreInstance {
	t.Helper()
	cfg := bridge.Default()
	cfg.URLs, cfg.Token = []string{url}, token
	cfg.Partitions = 16
	var log *slog.Logger
	if _, bench := t.(*testing.B); !bench {
		log = bustest.Logger(t).With("instance", name)
	}
	bus, err := bridge.Open(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	pub := NewPublisher(bus)
	ccfg := core.Default()
	ccfg.CoalesceWindow = window
	c, err := core.New(ccfg, clusterNS, bus.Store(), pub, pub, log)
	if err != nil {
		t.Fatal(err)
	}
	if a != nil {
		c.SetWatcher(appliedBy{a, name})
	}
	ctx, cancel := context.WithCancel(context.Background())
	in := &coreInstance{name: name, bus: bus, core: c, cancel: cancel}
	in.done.Go(func() { _ = c.Run(ctx) })
	<-c.Ready()
	srv := ServeCore(bus, c, c, log, bridge.PartitionOptions{Instance: name, LeaseTTL: ttl})
	in.done.Go(func() {
		if err := srv.Run(ctx); err != nil {
			t.Errorf("%s: transport: %v", name, err)
		}
	})
	select {
	case <-srv.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: transport not ready", name)
	}
	t.Cleanup(in.stop)
	return in
}

// kill cuts the instance off NATS at once, as a process killed with
// SIGKILL would be: nothing is drained, acknowledged or written after
// it; then it lets its goroutines end.
func (in *coreInstance) kill() {
	in.bus.Conn().Close()
	in.stop()
}

func (in *coreInstance) stop() {
	in.cancel()
	in.done.Wait()
	in.bus.Close()
}

// linkUsers links n XMPP users with bob, as earlier consent would have.
func linkUsers(t testing.TB, bus *bridge.Bus, n int) []mapping.BareJID {
	t.Helper()
	users := make([]mapping.BareJID, n)
	for i := range users {
		users[i] = mapping.BareJID(fmt.Sprintf("user%d@xmpp.example", i))
		if _, err := bus.Store().Links.Put(context.Background(), bridge.PairKey(string(clusterBob), string(users[i])), bridge.Link{
			MatrixUser: clusterBob, XMPPUser: users[i], State: bridge.LinkApproved, UpdatedAt: time.Now().UTC(),
		}); err != nil {
			t.Fatal(err)
		}
	}
	return users
}

// ghostsShown follows the presence commands to the Matrix side: the last
// status shown per XMPP user.
func ghostsShown(t testing.TB, bus *bridge.Bus) func(user string) string {
	t.Helper()
	var mu sync.Mutex
	last := map[string]string{}
	sub, err := bus.Conn().Subscribe(bridge.SubjectFilter(bridge.Out, mapping.NetworkMatrix, bridge.KindPresence), func(m *nats.Msg) {
		ev, err := bridge.DecodeEvent(m.Data)
		if err != nil || ev.Presence == nil {
			return
		}
		mu.Lock()
		last[ev.User] = ev.Presence.Status
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return func(user string) string {
		mu.Lock()
		defer mu.Unlock()
		return last[user]
	}
}

// storm publishes rounds of presence for every user, each with the next
// sequence of a global counter: the status names the sequence.
func storm(ctx context.Context, pub *Publisher, users []mapping.BareJID, rounds int, seq *atomic.Uint64, final map[string]uint64, mid func(round int)) error {
	for r := range rounds {
		if mid != nil {
			mid(r)
		}
		for _, u := range users {
			s := seq.Add(1)
			p := mapping.Presence{State: mapping.StateAway, Status: "s" + strconv.FormatUint(s, 10)}
			if err := pub.XMPPPresence(ctx, bridge.XMPPPresence{Stamp: bridge.Stamp{Seq: s}, User: u, Presence: p}); err != nil {
				return err
			}
			final[string(u)] = s
		}
	}
	return nil
}

// TestCoreInstancesShareUsersAndSurviveAKill (issue 11): two core
// instances, each with its own connection to one NATS, share the users;
// one is killed (its connection cut, nothing drained) in the middle of a
// storm of sequenced presence. The survivor takes its partitions over:
// every user's final state is exact (shown to the other side and
// recorded), and no instance ever applied a user's presence out of order.
// Then a third instance joins during another storm: the partitions
// rebalance to it, and no presence is applied twice.
func TestCoreInstancesShareUsersAndSurviveAKill(t *testing.T) {
	url, token, host := sharedNATS(t)
	users := linkUsers(t, host, 200)
	shown := ghostsShown(t, host)
	pub := NewPublisher(host)
	a := newApplied()
	const ttl = 3 * time.Second // renewed every 500ms: a loaded machine must not fence a live instance
	coreA := startCoreInstance(t, "a", url, token, a, 20*time.Millisecond, ttl)
	coreB := startCoreInstance(t, "b", url, token, a, 20*time.Millisecond, ttl)
	ctx := context.Background()
	var seq atomic.Uint64
	final := map[string]uint64{}
	// Both instances work: each applied someone's presence (B takes
	// its share from A within a few lease renewals).
	bustest.WaitFor(t, 30*time.Second, "both instances applying presence", func() bool {
		if err := storm(ctx, pub, users, 1, &seq, final, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // one round at a time
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.byInst["a"]) > 0 && len(a.byInst["b"]) > 0
	})
	noneTwice := func(what string, from map[string]int) {
		t.Helper()
		a.mu.Lock()
		defer a.mu.Unlock()
		for user, seqs := range a.all {
			seen := map[uint64]bool{}
			for _, s := range seqs[from[user]:] {
				if seen[s] {
					t.Fatalf("%s: %s's presence seq %d applied twice", what, user, s)
				}
				seen[s] = true
			}
		}
	}
	// B took its share from A in good order: nothing applied twice.
	noneTwice("rebalance to a second instance", nil)

	// The storm, with A killed in its middle.
	if err := storm(ctx, pub, users, 40, &seq, final, func(r int) {
		if r == 20 {
			coreA.kill()
		}
	}); err != nil {
		t.Fatal(err)
	}
	exact := func(what string) {
		t.Helper()
		bustest.WaitFor(t, 60*time.Second, what, func() bool {
			for _, u := range users {
				if shown(string(u)) != "s"+strconv.FormatUint(final[string(u)], 10) {
					return false
				}
				rec, _, err := host.Store().Presence.Get(ctx, bridge.PresenceKey(mapping.NetworkXMPP, string(u)))
				if err != nil || rec.Seq != final[string(u)] || rec.ShownSeq != rec.Seq {
					return false
				}
			}
			return true
		})
	}
	exact("every user's final presence shown and recorded after the kill")
	inOrder := func() {
		t.Helper()
		a.mu.Lock()
		defer a.mu.Unlock()
		for inst, m := range a.byInst {
			for user, seqs := range m {
				for i := 1; i < len(seqs); i++ {
					if seqs[i] <= seqs[i-1] {
						t.Fatalf("instance %s applied %s's presence out of order: seq %d after %d", inst, user, seqs[i], seqs[i-1])
					}
				}
			}
		}
	}
	inOrder()
	a.mu.Lock()
	replayed := 0
	for _, seqs := range a.byInst["b"] {
		replayed += len(seqs)
	}
	a.mu.Unlock()
	t.Logf("after the kill, b applied %d presences (a's unrecorded tail replayed in order)", replayed)

	// A third instance joins during a storm: the partitions rebalance,
	// and nothing is applied twice.
	a.mu.Lock()
	mark := map[string]int{}
	for user, seqs := range a.all {
		mark[user] = len(seqs)
	}
	a.mu.Unlock()
	if err := storm(ctx, pub, users, 10, &seq, final, nil); err != nil {
		t.Fatal(err)
	}
	coreC := startCoreInstance(t, "c", url, token, a, 20*time.Millisecond, ttl)
	bustest.WaitFor(t, 30*time.Second, "the third instance applying presence", func() bool {
		if err := storm(ctx, pub, users, 1, &seq, final, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.byInst["c"]) > 0
	})
	if err := storm(ctx, pub, users, 10, &seq, final, nil); err != nil {
		t.Fatal(err)
	}
	exact("every user's final presence shown and recorded after the join")
	inOrder()
	noneTwice("rebalance to a third instance", mark)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.byInst["c"]) == 0 {
		t.Fatal("the third instance took no users over")
	}
	t.Logf("after the join: c applied presence of %d users, b of %d", len(a.byInst["c"]), len(a.byInst["b"]))
	_ = coreB
	_ = coreC
}

// BenchmarkCoreInstances: the same flow as CoreThroughput, with the core
// shared out over one and over two instances, each with its own
// connection to one NATS (the embedded server listening on loopback), in
// one run: 10k linked users, no coalescing, every event routed.
func BenchmarkCoreInstances(b *testing.B) {
	for _, n := range []int{1, 2} {
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			url, token, host := sharedNATS(b)
			users := linkUsers(b, host, 10000)
			for i := range n {
				startCoreInstance(b, fmt.Sprintf("core%d", i), url, token, nil, 0, bridge.DefaultLeaseTTL)
			}
			// Wait until the partitions are shared out: a round of
			// presence from everyone comes out.
			var out atomic.Int64
			sub, err := host.Conn().Subscribe("pb.v1.out.matrix.presence.*", func(*nats.Msg) { out.Add(1) })
			if err != nil {
				b.Fatal(err)
			}
			_ = sub.SetPendingLimits(-1, -1)
			defer sub.Unsubscribe()
			pub := NewPublisher(host)
			ctx := context.Background()
			p := mapping.Presence{State: mapping.StateAway, Status: "lunch"}
			time.Sleep(2 * bridge.DefaultLeaseTTL / 6 * 3) // a few lease rounds: the share settles
			for _, u := range users {
				if err := pub.XMPPPresence(ctx, bridge.XMPPPresence{User: u, Presence: p}); err != nil {
					b.Fatal(err)
				}
			}
			bustest.WaitFor(b, 2*time.Minute, "a first round out", func() bool { return out.Load() >= int64(len(users)) })
			out.Store(0)
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
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		})
	}
}
