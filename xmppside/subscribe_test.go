package xmppside

import (
	"testing"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestSubscribeApprovePresenceFlows walks the "ask" flow against Prosody:
// request held and published, approval by the core, the puppet's presence at
// once, subscription back, presence both ways.
func TestSubscribeApprovePresenceFlows(t *testing.T) {
	r := startRig(t, PolicyAsk)
	alice := r.login("alice", "laptop", 0, "", "")
	const aliceJID = "alice@localhost"
	puppet := r.puppet(bob)
	r.presenceOut(bob, mapping.Presence{State: mapping.StateAway, Status: "lunch"}, "")
	waitFor(t, waitLong, "bob's presence remembered", func() bool { _, ok := r.comp.puppets.get(bob); return ok })

	// 1. Request: held as None + Pending In, published once.
	if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
		t.Fatal(err)
	}
	r.waitSub(bob, aliceJID, sNonePI)
	waitFor(t, waitLong, "subscribe event", func() bool { return len(r.in.matching(subscriptionOf(aliceJID, bob, bridge.Subscribe))) == 1 })
	if got := r.roster(alice, puppet); got != "none" {
		t.Errorf("alice's roster: puppet is %q, want none (pending)", got)
	}
	// A repeated request (the server re-sends it at every login) is not
	// news: no second event.
	alice2 := r.login("alice", "phone", 0, "", "")
	if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
		t.Fatal(err)
	}

	// 2. The core approves: subscribed, then the puppet's presence at once.
	r.command(bob, aliceJID, bridge.Subscribed)
	alice.Wait(t, waitLong, "subscribed", from("presence", "subscribed", puppet))
	p := alice.Wait(t, waitLong, "bob's presence", from("presence", "", puppet))
	if p.Show != "away" || p.Status != "lunch" {
		t.Errorf("bob's presence: %s", p.Raw)
	}
	r.waitSub(bob, aliceJID, sFrom)
	if got := r.roster(alice, puppet); got != "to" {
		t.Errorf("alice's roster: puppet is %q, want to", got)
	}
	if n := len(r.in.matching(subscriptionOf(aliceJID, bob, bridge.Subscribe))); n != 1 {
		t.Errorf("%d subscribe events, want 1 (re-sent requests are not news)", n)
	}

	// 3. The puppet subscribes back; alice approves: Both, and her presence
	// flows to the bus.
	r.command(bob, aliceJID, bridge.Subscribe)
	alice.Wait(t, waitLong, "subscribe from puppet", from("presence", "subscribe", puppet))
	r.waitSub(bob, aliceJID, sFromPO)
	if err := alice.SendPresence(r.ctx(), "subscribed", puppet, "", "", 0); err != nil {
		t.Fatal(err)
	}
	r.waitSub(bob, aliceJID, sBoth)
	waitFor(t, waitLong, "subscribed event", func() bool { return len(r.in.matching(subscriptionOf(aliceJID, bob, bridge.Subscribed))) == 1 })
	waitFor(t, waitLong, "alice's presence on the bus", func() bool {
		evs := r.in.matching(presenceOf(aliceJID))
		return len(evs) > 0 && evs[len(evs)-1].Presence.State == mapping.StateAvailable
	})
	if got := r.roster(alice, puppet); got != "both" {
		t.Errorf("alice's roster: puppet is %q, want both", got)
	}

	// 4. Presence changes flow both ways.
	r.presenceOut(bob, mapping.Presence{State: mapping.StateBusy, Status: "meeting"}, "")
	p = alice.Wait(t, waitLong, "bob busy", func(s prosodytest.Stanza) bool { return from("presence", "", puppet)(s) && s.Show == "dnd" })
	if p.Status != "meeting" {
		t.Errorf("bob busy: %s", p.Raw)
	}
	if err := alice2.SendPresence(r.ctx(), "", "", "xa", "gone fishing", 10); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice xa on the bus", func() bool {
		evs := r.in.matching(presenceOf(aliceJID))
		last := evs[len(evs)-1].Presence
		return last.State == mapping.StateExtendedAway && last.Status == "gone fishing" && last.Priority == 10
	})
	waitFor(t, waitLong, "alice's aggregate stored", func() bool {
		rec, _, err := r.bus.Store().Presence.Get(r.ctx(), bridge.PresenceKey(mapping.NetworkXMPP, aliceJID))
		return err == nil && rec.Presence.State == mapping.StateExtendedAway
	})
	waitFor(t, waitLong, "bob's presence stored", func() bool {
		rec, _, err := r.bus.Store().Presence.Get(r.ctx(), bridge.PresenceKey(mapping.NetworkMatrix, bob))
		return err == nil && rec.Presence.State == mapping.StateBusy
	})
}

// TestSubscribeDeny: under "ask" the core denies a request; under "reject"
// the component denies it by itself and tells nobody.
func TestSubscribeDeny(t *testing.T) {
	t.Run("ask", func(t *testing.T) {
		r := startRig(t, PolicyAsk)
		alice := r.login("alice", "laptop", 0, "", "")
		puppet := r.puppet(bob)
		if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
			t.Fatal(err)
		}
		r.waitSub(bob, "alice@localhost", sNonePI)
		r.command(bob, "alice@localhost", bridge.Unsubscribed)
		alice.Wait(t, waitLong, "unsubscribed", from("presence", "unsubscribed", puppet))
		r.waitSub(bob, "alice@localhost", sNone)
		if got := r.roster(alice, puppet); got == "to" || got == "both" {
			t.Errorf("alice's roster: puppet is %q after denial", got)
		}
		// A denied request can be asked again, and is news again.
		if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
			t.Fatal(err)
		}
		r.waitSub(bob, "alice@localhost", sNonePI)
		waitFor(t, waitLong, "second subscribe event", func() bool {
			return len(r.in.matching(subscriptionOf("alice@localhost", bob, bridge.Subscribe))) == 2
		})
	})
	t.Run("reject", func(t *testing.T) {
		r := startRig(t, PolicyReject)
		alice := r.login("alice", "laptop", 0, "", "")
		puppet := r.puppet(bob)
		if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
			t.Fatal(err)
		}
		alice.Wait(t, waitLong, "unsubscribed", from("presence", "unsubscribed", puppet))
		if s := r.sub(bob, "alice@localhost"); !SameState(s, sNone) {
			t.Errorf("state %s, want None", StateName(s))
		}
		if got := r.roster(alice, puppet); got == "to" || got == "both" {
			t.Errorf("alice's roster: puppet is %q after rejection", got)
		}
		if evs := r.in.matching(func(ev *bridge.Event) bool { return ev.Kind == bridge.KindSubscription }); len(evs) != 0 {
			t.Errorf("rejected request published: %+v", evs[0])
		}
	})
}

// TestUnsubscribeBothSides: from Both, each side takes its half back, in
// both directions (contact first, then puppet via the core).
func TestUnsubscribeBothSides(t *testing.T) {
	r := startRig(t, PolicyAccept)
	alice := r.login("alice", "laptop", 0, "", "")
	const aliceJID = "alice@localhost"
	puppet := r.puppet(bob)
	r.befriend(alice, bob)
	if got := r.roster(alice, puppet); got != "both" {
		t.Fatalf("alice's roster: puppet is %q, want both", got)
	}

	// Contact side: alice stops watching the puppet (Both → To), then
	// revokes the puppet's view of her (To → None).
	if err := alice.SendPresence(r.ctx(), "unsubscribe", puppet, "", "", 0); err != nil {
		t.Fatal(err)
	}
	r.waitSub(bob, aliceJID, sTo)
	alice.Wait(t, waitLong, "unavailable after unsubscribe", from("presence", "unavailable", puppet))
	waitFor(t, waitLong, "unsubscribe event", func() bool { return len(r.in.matching(subscriptionOf(aliceJID, bob, bridge.Unsubscribe))) == 1 })
	if err := alice.SendPresence(r.ctx(), "unsubscribed", puppet, "", "", 0); err != nil {
		t.Fatal(err)
	}
	r.waitSub(bob, aliceJID, sNone)
	waitFor(t, waitLong, "unsubscribed event", func() bool { return len(r.in.matching(subscriptionOf(aliceJID, bob, bridge.Unsubscribed))) == 1 })
	if got := r.roster(alice, puppet); got == "to" || got == "from" || got == "both" {
		t.Errorf("alice's roster: puppet is %q, want none", got)
	}
	// Presence no longer flows to alice.
	r.presenceOut(bob, mapping.Presence{State: mapping.StateAway, Status: "secret"}, "")

	// Puppet side, via the core: carol's puppet befriends alice again, then
	// stops watching her (Both → From) and revokes her view (From → None).
	cpuppet := r.puppet(carol)
	r.befriend(alice, carol)
	r.command(carol, aliceJID, bridge.Unsubscribe)
	alice.Wait(t, waitLong, "unsubscribe from puppet", from("presence", "unsubscribe", cpuppet))
	r.waitSub(carol, aliceJID, sFrom)
	if got := r.roster(alice, cpuppet); got != "to" {
		t.Errorf("alice's roster: carol's puppet is %q, want to", got)
	}
	r.command(carol, aliceJID, bridge.Unsubscribed)
	alice.Wait(t, waitLong, "unsubscribed from puppet", from("presence", "unsubscribed", cpuppet))
	alice.Wait(t, waitLong, "unavailable from puppet", from("presence", "unavailable", cpuppet))
	r.waitSub(carol, aliceJID, sNone)
	if got := r.roster(alice, cpuppet); got == "to" || got == "from" || got == "both" {
		t.Errorf("alice's roster: carol's puppet is %q, want none", got)
	}
	for _, s := range alice.Received() {
		if s.From == puppet && s.Status == "secret" {
			t.Errorf("presence sent to a former contact: %s", s.Raw)
		}
	}
}
