package xmppside

import (
	"errors"
	"testing"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestSubscribeApprovePresenceFlows walks the "ask" flow against Prosody:
// request held and reported, approval by the core, the puppet's presence at
// once, subscription back, presence both ways. The component writes the
// subscriptions bucket and nothing else.
func TestSubscribeApprovePresenceFlows(t *testing.T) {
	r := startRig(t, PolicyAsk)
	alice := r.login("alice", "laptop", 0, "", "")
	const aliceJID mapping.BareJID = "alice@localhost"
	puppet := r.puppet(bob)

	// 1. Request: held as None + Pending In, reported once.
	if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
		t.Fatal(err)
	}
	r.waitSub(bob, aliceJID, sNonePI)
	// The core tells the puppet's presence (kept now that the puppet has a
	// contact, if only a pending one).
	r.show(bob, mapping.Presence{State: mapping.StateAway, Status: "lunch"})
	waitFor(t, waitLong, "subscribe report", func() bool { return r.obs.subscriptions(aliceJID, bob, bridge.Subscribe) == 1 })
	if got := r.roster(alice, puppet); got != "none" {
		t.Errorf("alice's roster: puppet is %q, want none (pending)", got)
	}
	// A repeated request (the server re-sends it at every login) is not
	// news: no second report.
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
	if n := r.obs.subscriptions(aliceJID, bob, bridge.Subscribe); n != 1 {
		t.Errorf("%d subscribe reports, want 1 (re-sent requests are not news)", n)
	}
	// The command comes again (redelivery): nothing is sent twice.
	r.command(bob, aliceJID, bridge.Subscribed)

	// 3. The puppet subscribes back; alice approves: Both, and her presence
	// is reported.
	r.command(bob, aliceJID, bridge.Subscribe)
	alice.Wait(t, waitLong, "subscribe from puppet", from("presence", "subscribe", puppet))
	r.waitSub(bob, aliceJID, sFromPO)
	if err := alice.SendPresence(r.ctx(), "subscribed", puppet, "", "", 0); err != nil {
		t.Fatal(err)
	}
	r.waitSub(bob, aliceJID, sBoth)
	waitFor(t, waitLong, "subscribed report", func() bool { return r.obs.subscriptions(aliceJID, bob, bridge.Subscribed) == 1 })
	waitFor(t, waitLong, "alice's presence reported", func() bool { return r.obs.lastPresence(aliceJID).State == mapping.StateAvailable })
	if got := r.roster(alice, puppet); got != "both" {
		t.Errorf("alice's roster: puppet is %q, want both", got)
	}
	n := 0
	for _, s := range alice.Received() {
		if from("presence", "subscribed", puppet)(s) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("alice got subscribed %d times, want once", n)
	}

	// 4. Presence changes flow both ways.
	r.show(bob, mapping.Presence{State: mapping.StateBusy, Status: "meeting"})
	p = alice.Wait(t, waitLong, "bob busy", func(s prosodytest.Stanza) bool { return from("presence", "", puppet)(s) && s.Show == "dnd" })
	if p.Status != "meeting" {
		t.Errorf("bob busy: %s", p.Raw)
	}
	if err := alice2.SendPresence(r.ctx(), "", "", "xa", "gone fishing", 10); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice xa reported", func() bool {
		last := r.obs.lastPresence(aliceJID)
		return last.State == mapping.StateExtendedAway && last.Status == "gone fishing" && last.Priority == 10
	})

	// The presence bucket is the core's: the component never wrote it.
	for _, key := range []string{bridge.PresenceKey(mapping.NetworkXMPP, string(aliceJID)), bridge.PresenceKey(mapping.NetworkMatrix, string(bob))} {
		if _, _, err := r.store.Presence.Get(r.ctx(), key); !errors.Is(err, bridge.ErrNotFound) {
			t.Errorf("presence bucket holds %s (err %v): the component wrote the core's state", key, err)
		}
	}
}

// TestSubscribeDeny: the core denies a request, later ("ask": the Matrix
// user said no) or at once ("reject", from within the report).
func TestSubscribeDeny(t *testing.T) {
	const aliceJID mapping.BareJID = "alice@localhost"
	t.Run("ask", func(t *testing.T) {
		r := startRig(t, PolicyAsk)
		alice := r.login("alice", "laptop", 0, "", "")
		puppet := r.puppet(bob)
		if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
			t.Fatal(err)
		}
		r.waitSub(bob, aliceJID, sNonePI)
		r.command(bob, aliceJID, bridge.Unsubscribed)
		alice.Wait(t, waitLong, "unsubscribed", from("presence", "unsubscribed", puppet))
		r.waitSub(bob, aliceJID, sNone)
		if got := r.roster(alice, puppet); got == "to" || got == "both" {
			t.Errorf("alice's roster: puppet is %q after denial", got)
		}
		// A denied request can be asked again, and is news again.
		if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
			t.Fatal(err)
		}
		r.waitSub(bob, aliceJID, sNonePI)
		waitFor(t, waitLong, "second subscribe report", func() bool { return r.obs.subscriptions(aliceJID, bob, bridge.Subscribe) == 2 })
	})
	t.Run("reject", func(t *testing.T) {
		r := startRig(t, PolicyReject)
		alice := r.login("alice", "laptop", 0, "", "")
		puppet := r.puppet(bob)
		if err := alice.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
			t.Fatal(err)
		}
		alice.Wait(t, waitLong, "unsubscribed", from("presence", "unsubscribed", puppet))
		r.waitSub(bob, aliceJID, sNone)
		if got := r.roster(alice, puppet); got == "to" || got == "both" {
			t.Errorf("alice's roster: puppet is %q after rejection", got)
		}
		// The component reported the request and let the core decide.
		if n := r.obs.subscriptions(aliceJID, bob, bridge.Subscribe); n != 1 {
			t.Errorf("%d subscribe reports, want 1", n)
		}
	})
}

// TestUnsubscribeBothSides: from Both, each side takes its half back, in
// both directions (contact first, then puppet via the core).
func TestUnsubscribeBothSides(t *testing.T) {
	r := startRig(t, PolicyAccept)
	alice := r.login("alice", "laptop", 0, "", "")
	const aliceJID mapping.BareJID = "alice@localhost"
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
	waitFor(t, waitLong, "unsubscribe report", func() bool { return r.obs.subscriptions(aliceJID, bob, bridge.Unsubscribe) == 1 })
	if err := alice.SendPresence(r.ctx(), "unsubscribed", puppet, "", "", 0); err != nil {
		t.Fatal(err)
	}
	r.waitSub(bob, aliceJID, sNone)
	waitFor(t, waitLong, "unsubscribed report", func() bool { return r.obs.subscriptions(aliceJID, bob, bridge.Unsubscribed) == 1 })
	if got := r.roster(alice, puppet); got == "to" || got == "from" || got == "both" {
		t.Errorf("alice's roster: puppet is %q, want none", got)
	}
	// Presence no longer flows to alice.
	r.show(bob, mapping.Presence{State: mapping.StateAway, Status: "secret"})

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
	// Ping bob's puppet: everything sent before the ping has arrived.
	r.ping(alice, puppet)
	for _, s := range alice.Received() {
		if s.From == puppet && s.Status == "secret" {
			t.Errorf("presence sent to a former contact: %s", s.Raw)
		}
	}
}
