package core

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

var ns = mapping.Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: "example.org", ComponentDomain: "matrix.example.org"}

const (
	alice = "alice@xmpp.example"
	bob   = "@bob:example.org"
)

type harness struct {
	t   *testing.T
	bus *bridge.Bus
	dir string
	rec *recorder
}

// recorder collects every Out event.
type recorder struct {
	mu  sync.Mutex
	evs []*bridge.Event
}

func (r *recorder) all() []*bridge.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*bridge.Event(nil), r.evs...)
}

func (r *recorder) reset() { r.mu.Lock(); r.evs = nil; r.mu.Unlock() }

func start(t *testing.T, cfg Config, dir string) *harness {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	bcfg := bridge.Default()
	bcfg.Embedded.DataDir = dir
	bus, err := bridge.Open(context.Background(), bcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	if _, err := bus.Conn().Subscribe("pb.v1.out.>", func(m *nats.Msg) {
		ev, err := bridge.DecodeEvent(m.Data)
		if err != nil {
			t.Errorf("core published a bad event: %v", err)
			return
		}
		rec.mu.Lock()
		rec.evs = append(rec.evs, ev)
		rec.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg, ns, bus, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("core stopped: %v", err)
	}
	h := &harness{t: t, bus: bus, dir: dir, rec: rec}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("core Run: %v", err)
		}
		bus.Close()
	})
	return h
}

func (h *harness) publish(ev *bridge.Event) {
	h.t.Helper()
	if err := h.bus.Publish(context.Background(), bridge.In, ev); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) presence(net mapping.Network, user string, p mapping.Presence) {
	h.publish(&bridge.Event{Kind: bridge.KindPresence, Origin: net, User: user, Presence: &p})
}

func (h *harness) subscription(jid, mxid string, typ bridge.SubscriptionType) {
	h.publish(&bridge.Event{Kind: bridge.KindSubscription, Origin: mapping.NetworkXMPP, User: jid, Peer: mxid, Subscription: &bridge.SubscriptionPayload{Type: typ}})
}

func (h *harness) membership(mxid, jid, membership, member, sender, room string) {
	h.publish(&bridge.Event{Kind: bridge.KindMembership, Origin: mapping.NetworkMatrix, User: mxid, Peer: jid, Membership: &bridge.MembershipPayload{Membership: membership, Member: member, Sender: sender, RoomID: room}})
}

// describe renders an out event compactly for matching and messages.
func describe(ev *bridge.Event) string {
	switch ev.Kind {
	case bridge.KindPresence:
		return fmt.Sprintf("presence %s→%s %s %q", ev.Origin, ev.Origin.Other(), ev.User, ev.Presence.Status+"/"+ev.Presence.State.String())
	case bridge.KindSubscription:
		return fmt.Sprintf("xmpp %s→%s %s", ev.User, ev.Peer, ev.Subscription.Type)
	case bridge.KindMembership:
		return fmt.Sprintf("matrix %s→%s %s %s", ev.User, ev.Peer, ev.Membership.Membership, ev.Membership.RoomID)
	}
	return string(ev.Kind)
}

// waitOut waits until every wanted description has been published.
func (h *harness) waitOut(want ...string) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := map[string]bool{}
		var list []string
		for _, ev := range h.rec.all() {
			got[describe(ev)] = true
			list = append(list, describe(ev))
		}
		missing := ""
		for _, w := range want {
			if !got[w] {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("never published %q; published: %q", missing, list)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// settle waits until a marker presence went through the core, so that
// everything published before it was handled too.
func (h *harness) settle() {
	h.t.Helper()
	marker := fmt.Sprintf("marker-%d@settle.example", time.Now().UnixNano())
	h.presence(mapping.NetworkXMPP, marker, mapping.Presence{State: mapping.StateAway, Status: "m"})
	h.waitOut(fmt.Sprintf("presence xmpp→matrix %s %q", marker, "m/away"))
}

func (h *harness) count(desc string) int {
	n := 0
	for _, ev := range h.rec.all() {
		if describe(ev) == desc {
			n++
		}
	}
	return n
}

func TestPresenceFlowsBothWays(t *testing.T) {
	h := start(t, Default(), "")
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateBusy, Status: "call"})
	h.presence(mapping.NetworkMatrix, bob, mapping.Presence{State: mapping.StateAway, Status: "lunch"})
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "call/busy"`, `presence matrix→xmpp @bob:example.org "lunch/away"`)
}

func TestOwnPuppetsAndGhostsNeverBridgedBack(t *testing.T) {
	h := start(t, Default(), "")
	ghostTyped, _ := ns.GhostMXID(mapping.BareJID(alice))
	ghost := string(ghostTyped)
	puppetTyped, _ := ns.PuppetJID(mapping.UserID(bob))
	puppet := string(puppetTyped)
	h.presence(mapping.NetworkMatrix, ghost, mapping.Presence{State: mapping.StateAway})
	h.presence(mapping.NetworkXMPP, puppet, mapping.Presence{State: mapping.StateAway})
	h.settle()
	for _, ev := range h.rec.all() {
		if ev.User == ghost || ev.User == puppet {
			t.Fatalf("bridged its own echo: %s", describe(ev))
		}
	}
}

func TestOptOut(t *testing.T) {
	h := start(t, Default(), "")
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAvailable, Status: "before"})
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "before/available"`)
	h.publish(&bridge.Event{Kind: bridge.KindOptOut, Origin: mapping.NetworkXMPP, User: alice, OptOut: &bridge.OptOutPayload{Enabled: true}})
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "/offline"`)
	h.rec.reset()
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: "secret"})
	h.settle()
	if n := h.count(`presence xmpp→matrix alice@xmpp.example "secret/away"`); n != 0 {
		t.Fatal("an opted-out user's presence was exported")
	}
	h.publish(&bridge.Event{Kind: bridge.KindOptOut, Origin: mapping.NetworkXMPP, User: alice, OptOut: &bridge.OptOutPayload{Enabled: false}})
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "secret/away"`)
}

func TestAccessLists(t *testing.T) {
	cfg := Default()
	cfg.DenyXMPPDomains = []string{"spam.example"}
	cfg.AllowMatrixServers = []string{"example.org"}
	h := start(t, cfg, "")
	h.presence(mapping.NetworkXMPP, "eve@spam.example", mapping.Presence{State: mapping.StateAway})
	h.presence(mapping.NetworkMatrix, "@mallory:other.org", mapping.Presence{State: mapping.StateAway})
	h.subscription("eve@spam.example", bob, bridge.Subscribe)
	h.waitOut(`xmpp @bob:example.org→eve@spam.example unsubscribed`)
	h.settle()
	for _, ev := range h.rec.all() {
		if ev.User == "eve@spam.example" || ev.User == "@mallory:other.org" {
			t.Fatalf("denied user bridged: %s", describe(ev))
		}
		if ev.Kind == bridge.KindMembership {
			t.Fatalf("denied user caused an invite: %s", describe(ev))
		}
	}
}

func TestOlderSequenceNeverOverridesNewer(t *testing.T) {
	cfg := Default()
	cfg.CoalesceWindow = 0
	h := start(t, cfg, "")
	p1, p2 := mapping.Presence{State: mapping.StateAway, Status: "new"}, mapping.Presence{State: mapping.StateAvailable, Status: "old"}
	h.publish(&bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkXMPP, User: alice, Presence: &p1, Seq: 200})
	h.publish(&bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkXMPP, User: alice, Presence: &p2, Seq: 100})
	h.settle()
	if h.count(`presence xmpp→matrix alice@xmpp.example "old/available"`) != 0 {
		t.Fatal("older event overrode a newer one")
	}
	// The store is written behind the event path: poll for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec, _, err := h.bus.Store().Presence.Get(context.Background(), bridge.PresenceKey(mapping.NetworkXMPP, alice))
		if err == nil && rec.Presence.Status == "new" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored %+v, %v; want the newer record", rec, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCoalescingBurst(t *testing.T) {
	cfg := Default()
	cfg.CoalesceWindow = 300 * time.Millisecond
	h := start(t, cfg, "")
	for i := 0; i < 50; i++ {
		h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: fmt.Sprint(i)})
	}
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "49/away"`)
	n := 0
	for _, ev := range h.rec.all() {
		if ev.User == alice {
			n++
		}
	}
	// The first goes at once, the rest of the burst collapses into the last.
	if n > 3 {
		t.Fatalf("a burst of 50 produced %d updates; want at most one per window", n)
	}
}

func TestConsentAskApprovedByJoin(t *testing.T) {
	h := start(t, Default(), "")
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: "hello"})
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
	// Prosody re-sends the request at every login: never a second prompt.
	h.subscription(alice, bob, bridge.Subscribe)
	h.settle()
	if n := h.count(`matrix alice@xmpp.example→@bob:example.org invite `); n != 1 {
		t.Fatalf("Matrix user prompted %d times", n)
	}
	h.rec.reset()
	h.membership(bob, alice, "join", bob, bob, "!dm:example.org")
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`, `xmpp @bob:example.org→alice@xmpp.example subscribe`,
		`presence xmpp→matrix alice@xmpp.example "hello/away"`)
	l, _, _ := h.bus.Store().Links.Get(context.Background(), bridge.PairKey(bob, alice))
	if l.State != bridge.LinkApproved || l.RoomID != "!dm:example.org" {
		t.Fatalf("link %+v", l)
	}
}

func TestConsentAskDeniedByReject(t *testing.T) {
	h := start(t, Default(), "")
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
	h.membership(bob, alice, "leave", bob, bob, "!dm:example.org")
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example unsubscribed`, `matrix alice@xmpp.example→@bob:example.org leave !dm:example.org`)
	l, _, _ := h.bus.Store().Links.Get(context.Background(), bridge.PairKey(bob, alice))
	if l.State != bridge.LinkDenied {
		t.Fatalf("link %+v", l)
	}
}

func TestConsentMatrixInviteAnsweredOnXMPP(t *testing.T) {
	h := start(t, Default(), "")
	h.membership(bob, alice, "invite", alice, bob, "!room:example.org")
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribe`)
	h.subscription(alice, bob, bridge.Subscribed)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org join !room:example.org`)
}

func TestRevocationFromEitherSide(t *testing.T) {
	for _, by := range []string{"matrix leave", "matrix kick", "xmpp unsubscribed"} {
		t.Run(by, func(t *testing.T) {
			h := start(t, Default(), "")
			h.subscription(alice, bob, bridge.Subscribe)
			h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
			h.membership(bob, alice, "join", bob, bob, "!dm:example.org")
			h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`)
			h.rec.reset()
			switch by {
			case "matrix leave":
				h.membership(bob, alice, "leave", bob, bob, "!dm:example.org")
			case "matrix kick":
				h.membership(bob, alice, "leave", alice, bob, "!dm:example.org")
			case "xmpp unsubscribed":
				h.subscription(alice, bob, bridge.Unsubscribed)
			}
			h.waitOut(`xmpp @bob:example.org→alice@xmpp.example unsubscribed`, `xmpp @bob:example.org→alice@xmpp.example unsubscribe`,
				`presence xmpp→matrix alice@xmpp.example "/offline"`, `matrix alice@xmpp.example→@bob:example.org leave !dm:example.org`)
		})
	}
}

func TestPolicyReject(t *testing.T) {
	cfg := Default()
	cfg.Policy = PolicyReject
	h := start(t, cfg, "")
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example unsubscribed`)
	if h.count(`matrix alice@xmpp.example→@bob:example.org invite `) != 0 {
		t.Fatal("reject policy still invited")
	}
}

func TestRestartAsksNobodyAgain(t *testing.T) {
	dir := t.TempDir()
	t.Run("first life", func(t *testing.T) {
		h := start(t, Default(), dir)
		h.subscription(alice, bob, bridge.Subscribe)
		h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
		h.membership(bob, alice, "join", bob, bob, "!dm:example.org")
		h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`)
	})
	t.Run("after restart", func(t *testing.T) {
		h := start(t, Default(), dir)
		// Prosody re-sends alice's request after the restart: approved at
		// once from the stored link, and bob is not invited again.
		h.subscription(alice, bob, bridge.Subscribe)
		h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`)
		h.settle()
		if n := h.count(`matrix alice@xmpp.example→@bob:example.org invite `); n != 0 {
			t.Fatalf("bob invited again after restart")
		}
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
