package transport

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	"github.com/presence-bridge/presence-bridge/mapping"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sink is every port at once: it records each call it receives.
type sink struct {
	mu    sync.Mutex
	calls []string
	fail  int // SendSubscription fails this many times first
}

func (s *sink) add(format string, a ...any) error {
	s.mu.Lock()
	s.calls = append(s.calls, fmt.Sprintf(format, a...))
	s.mu.Unlock()
	return nil
}

func (s *sink) has(want string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.calls {
		if c == want {
			return true
		}
	}
	return false
}

func (s *sink) XMPPPresence(_ context.Context, r bridge.XMPPPresence) error {
	return s.add("xmpp presence %s %s %q seq>0:%v observed:%v", r.User, r.Presence.State, r.Presence.Status, r.Seq > 0, !r.ObservedAt.IsZero())
}
func (s *sink) XMPPSubscription(_ context.Context, r bridge.XMPPSubscription) error {
	return s.add("xmpp subscription %s→%s %s %q", r.Contact, r.Puppet, r.Type, r.Status)
}
func (s *sink) XMPPOptOut(_ context.Context, r bridge.OptOut[mapping.BareJID]) error {
	return s.add("xmpp optout %s %v", r.User, r.Enabled)
}
func (s *sink) MatrixPresence(_ context.Context, r bridge.MatrixPresence) error {
	return s.add("matrix presence %s %s", r.User, r.Presence.State)
}
func (s *sink) MatrixMembership(_ context.Context, r bridge.MatrixMembership) error {
	return s.add("matrix membership %s %s ghost_changed:%v by_self:%v %s %s", r.User, r.Ghost, r.GhostChanged, r.BySelf, r.Membership, r.RoomID)
}
func (s *sink) MatrixOptOut(_ context.Context, r bridge.OptOut[mapping.UserID]) error {
	return s.add("matrix optout %s %v", r.User, r.Enabled)
}
func (s *sink) ShowPuppet(_ context.Context, c bridge.PuppetPresence) error {
	return s.add("puppet %s %s observed:%s", c.User, c.Presence.State, observed(c.ObservedAt))
}
func (s *sink) SendSubscription(_ context.Context, c bridge.PuppetSubscription) error {
	s.mu.Lock()
	if s.fail > 0 {
		s.fail--
		s.mu.Unlock()
		return fmt.Errorf("stream down")
	}
	s.mu.Unlock()
	return s.add("puppet subscription %s→%s %s", c.Puppet, c.Contact, c.Type)
}
func (s *sink) ShowGhost(_ context.Context, c bridge.GhostPresence) error {
	return s.add("ghost %s %s observed:%s", c.User, c.Presence.State, observed(c.ObservedAt))
}

func observed(at time.Time) string {
	if at.IsZero() {
		return "none"
	}
	return at.UTC().Format(time.RFC3339)
}
func (s *sink) GhostMembership(_ context.Context, c bridge.GhostMembership) error {
	before := "-"
	if c.Before != nil {
		before = c.Before.State.String()
	}
	return s.add("ghost membership %s→%s %s %s before:%s", c.Ghost, c.Peer, c.Membership, c.RoomID, before)
}

func run(t *testing.T, srv *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server stopped: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestEveryPortCrossesTheBus: each method of each port, called on the
// publisher, arrives at the served implementation with its meaning intact.
func TestEveryPortCrossesTheBus(t *testing.T) {
	bus := bustest.Open(t, "")
	core, xs, ms := &sink{}, &sink{}, &sink{}
	run(t, ServeCore(bus, core, core, bustest.Logger(t)))
	run(t, ServeXMPP(bus, xs, bustest.Logger(t)))
	run(t, ServeMatrix(bus, ms, bustest.Logger(t)))
	pub := NewPublisher(bus)
	ctx := context.Background()
	alice, bob := mapping.BareJID("alice@example.com"), mapping.UserID("@bob:example.org")
	away := mapping.Presence{State: mapping.StateAway, Status: "lunch"}
	offline := mapping.Presence{State: mapping.StateOffline}
	calls := []func() error{
		func() error { return pub.XMPPPresence(ctx, bridge.XMPPPresence{User: alice, Presence: away}) },
		func() error {
			return pub.XMPPSubscription(ctx, bridge.XMPPSubscription{Contact: alice, Puppet: bob, Type: bridge.Subscribe, Status: "hi"})
		},
		func() error { return pub.XMPPOptOut(ctx, bridge.OptOut[mapping.BareJID]{User: alice, Enabled: true}) },
		func() error { return pub.MatrixPresence(ctx, bridge.MatrixPresence{User: bob, Presence: away}) },
		func() error {
			return pub.MatrixMembership(ctx, bridge.MatrixMembership{User: bob, Ghost: alice, GhostChanged: true, Membership: bridge.MembershipLeave, RoomID: "!r:x"})
		},
		func() error {
			return pub.MatrixMembership(ctx, bridge.MatrixMembership{User: bob, Ghost: alice, BySelf: true, Membership: bridge.MembershipJoin, RoomID: "!r:x"})
		},
		func() error {
			return pub.MatrixMembership(ctx, bridge.MatrixMembership{User: bob, Ghost: alice, Membership: bridge.MembershipInvite, RoomID: "!r:x"})
		},
		func() error { return pub.MatrixOptOut(ctx, bridge.OptOut[mapping.UserID]{User: bob, Enabled: false}) },
		func() error { return pub.ShowPuppet(ctx, bridge.PuppetPresence{User: bob, Presence: away}) },
		func() error {
			return pub.SendSubscription(ctx, bridge.PuppetSubscription{Puppet: bob, Contact: alice, Type: bridge.Subscribed})
		},
		func() error {
			return pub.ShowGhost(ctx, bridge.GhostPresence{Stamp: bridge.Stamp{ObservedAt: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)}, User: alice, Presence: away})
		},
		func() error {
			return pub.GhostMembership(ctx, bridge.GhostMembership{Ghost: alice, Peer: bob, Membership: bridge.MembershipLeave, RoomID: "!r:x", Before: &offline})
		},
	}
	for _, call := range calls {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	for s, want := range map[*sink][]string{
		core: {
			`xmpp presence alice@example.com away "lunch" seq>0:true observed:true`, // a report is stamped
			`xmpp subscription alice@example.com→@bob:example.org subscribe "hi"`,
			`xmpp optout alice@example.com true`,
			`matrix presence @bob:example.org away`,
			`matrix membership @bob:example.org alice@example.com ghost_changed:true by_self:false leave !r:x`,
			`matrix membership @bob:example.org alice@example.com ghost_changed:false by_self:true join !r:x`,
			`matrix membership @bob:example.org alice@example.com ghost_changed:false by_self:false invite !r:x`,
			`matrix optout @bob:example.org false`,
		},
		// A command keeps its observation time, and has none if it had none.
		xs: {`puppet @bob:example.org away observed:none`, `puppet subscription @bob:example.org→alice@example.com subscribed`},
		ms: {`ghost alice@example.com away observed:2026-11-21T12:00:00Z`, `ghost membership alice@example.com→@bob:example.org leave !r:x before:offline`},
	} {
		for _, w := range want {
			bustest.WaitFor(t, 5*time.Second, w, func() bool { return s.has(w) })
		}
	}
}

// TestFailedCommandIsRedelivered: a durable command whose handler fails
// (the XMPP stream is down) comes again, and a report about an invalid
// address never reaches the core.
func TestFailedCommandIsRedelivered(t *testing.T) {
	bus := bustest.Open(t, "")
	xs, core := &sink{fail: 1}, &sink{}
	run(t, ServeXMPP(bus, xs, bustest.Logger(t)))
	run(t, ServeCore(bus, core, core, bustest.Logger(t)))
	pub := NewPublisher(bus)
	ctx := context.Background()
	if err := pub.SendSubscription(ctx, bridge.PuppetSubscription{Puppet: "@bob:example.org", Contact: "alice@example.com", Type: bridge.Subscribe}); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 10*time.Second, "the redelivered command", func() bool {
		return xs.has("puppet subscription @bob:example.org→alice@example.com subscribe")
	})
	if err := pub.XMPPSubscription(ctx, bridge.XMPPSubscription{Contact: "not a jid", Puppet: "@bob:example.org", Type: bridge.Subscribe}); err != nil {
		t.Fatal(err)
	}
	if err := pub.XMPPSubscription(ctx, bridge.XMPPSubscription{Contact: "carol@example.com", Puppet: "@bob:example.org", Type: bridge.Subscribe}); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 5*time.Second, "the valid report", func() bool {
		return core.has(`xmpp subscription carol@example.com→@bob:example.org subscribe ""`)
	})
	if core.has(`xmpp subscription not a jid→@bob:example.org subscribe ""`) {
		t.Fatal("a report about an invalid address reached the core")
	}
}
