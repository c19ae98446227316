package xmppside

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestUnreportedTransitionUndone: when the core cannot take a subscription
// report, the transition is undone, so that the server's re-send is news
// again and reported then.
func TestUnreportedTransitionUndone(t *testing.T) {
	c, obs := newTestComponent(t)
	puppet := puppetOf(t, c, bob)
	const contact mapping.BareJID = "u@x.org"
	subscribe := `<presence type='subscribe' from='u@x.org' to='` + puppet + `'/>`

	obs.fail.Store(true)
	feed(t, c, subscribe)
	if s, err := c.getSubscription(context.Background(), bob, contact); err != nil || !SameState(s, sNone) {
		t.Fatalf("after a refused report: %s (%v), want None", StateName(s), err)
	}
	if s := c.subs.get(bob, contact); !SameState(s, sNone) {
		t.Fatalf("index after a refused report: %s", StateName(s))
	}

	obs.fail.Store(false)
	feed(t, c, subscribe)
	if n := obs.subscriptions(contact, bob, bridge.Subscribe); n != 1 {
		t.Fatalf("%d reports after the re-send, want 1", n)
	}
	if s, _ := c.getSubscription(context.Background(), bob, contact); !SameState(s, sNonePI) {
		t.Fatalf("state %s, want None + Pending In", StateName(s))
	}
	feed(t, c, subscribe) // no news
	if n := obs.subscriptions(contact, bob, bridge.Subscribe); n != 1 {
		t.Fatalf("%d reports after a repeated request, want 1", n)
	}
}

// TestSendSubscriptionCommands: a command while disconnected fails with
// ErrNotConnected (so that it comes again); malformed commands are dropped
// (nil) and change nothing.
func TestSendSubscriptionCommands(t *testing.T) {
	c, _ := newTestComponent(t)
	ctx := context.Background()
	err := c.SendSubscription(ctx, bridge.PuppetSubscription{Puppet: bob, Contact: "u@x.org", Type: bridge.Subscribed})
	if !errors.Is(err, ErrNotConnected) {
		t.Fatalf("disconnected: %v, want ErrNotConnected", err)
	}
	for _, cmd := range []bridge.PuppetSubscription{
		{Puppet: bob, Contact: "u@x.org", Type: "maybe"},
		{Puppet: "@Bob:example.org", Contact: "u@x.org", Type: bridge.Subscribe},
		{Puppet: bob, Contact: "not a jid", Type: bridge.Subscribe},
		{Puppet: bob, Contact: "x@" + testDomain, Type: bridge.Subscribe},
		{Puppet: bob, Contact: "x@sub." + testDomain, Type: bridge.Subscribe},
	} {
		if err := c.SendSubscription(ctx, cmd); err != nil {
			t.Errorf("%+v: %v, want dropped", cmd, err)
		}
	}
	if ps := c.subs.puppets(); len(ps) != 0 {
		t.Errorf("commands changed the state of %v", ps)
	}
}

// TestShowPuppet: ShowPuppet never blocks, even without a stream; it keeps
// the newest presence (by sequence), ignores repeats and unknown presence,
// and the kept presence answers probes.
func TestShowPuppet(t *testing.T) {
	c, _ := newTestComponent(t)
	ctx := context.Background()
	befriendInStore(t, c, bob, "u@x.org")
	show := func(seq uint64, p mapping.Presence) {
		t.Helper()
		done := make(chan error, 1)
		go func() {
			done <- c.ShowPuppet(ctx, bridge.PuppetPresence{Stamp: bridge.Stamp{Seq: seq}, User: bob, Presence: p})
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(waitShort):
			t.Fatal("ShowPuppet blocked")
		}
	}
	show(5, mapping.Presence{State: mapping.StateAway, Status: "five"})
	show(4, mapping.Presence{State: mapping.StateBusy, Status: "four"}) // stale
	show(0, mapping.Presence{State: mapping.StateUnknown})              // never shown
	if cur, _ := c.puppets.get(bob); cur.presence.Status != "five" || cur.seq != 5 {
		t.Fatalf("kept %+v, want five", cur)
	}
	c.out.take()
	show(6, mapping.Presence{State: mapping.StateAway, Status: "five"}) // same presence
	if q := c.out.take(); len(q) != 0 {
		t.Errorf("a repeated presence was queued for fan-out: %v", q)
	}
	show(7, mapping.Presence{State: mapping.StateAvailable, Status: "seven"})
	if q := c.out.take(); len(q) != 1 || q[0] != bob {
		t.Errorf("queue %v, want bob", q)
	}

	// A contact's probe gets it.
	out := feed(t, c, `<presence type='probe' from='u@x.org/r' to='`+puppetOf(t, c, bob)+`'/>`)
	if !strings.Contains(out, "<status>seven</status>") || !strings.Contains(out, `to="u@x.org/r"`) {
		t.Errorf("probe answer %s", out)
	}
}

// TestPresenceFromCoreRecordAfterRestart: a component that was not told a
// puppet's presence since it started answers with the core's record in the
// presence bucket, which it reads and never writes.
func TestPresenceFromCoreRecordAfterRestart(t *testing.T) {
	c, _ := newTestComponent(t)
	ctx := context.Background()
	rec := bridge.PresenceRecord{Presence: mapping.Presence{State: mapping.StateBusy, Status: "stored by the core"}, Seq: 9, UpdatedAt: time.Now().UTC()}
	key := bridge.PresenceKey(mapping.NetworkMatrix, string(carol))
	if _, err := c.store.Presence.Put(ctx, key, rec); err != nil {
		t.Fatal(err)
	}
	befriendInStore(t, c, carol, "u@x.org")
	out := feed(t, c, `<presence type='probe' from='u@x.org/r' to='`+puppetOf(t, c, carol)+`'/>`)
	if !strings.Contains(out, "<show>dnd</show>") || !strings.Contains(out, "stored by the core") {
		t.Errorf("probe answer %s", out)
	}
	// A newer command wins over the record.
	if err := c.ShowPuppet(ctx, bridge.PuppetPresence{Stamp: bridge.Stamp{Seq: 10}, User: carol, Presence: mapping.Presence{State: mapping.StateAvailable, Status: "newer"}}); err != nil {
		t.Fatal(err)
	}
	if out := feed(t, c, `<presence type='probe' from='u@x.org/r' to='`+puppetOf(t, c, carol)+`'/>`); !strings.Contains(out, "newer") {
		t.Errorf("probe answer %s", out)
	}
	if got, _, err := c.store.Presence.Get(ctx, key); err != nil || got.Presence.Status != "stored by the core" {
		t.Errorf("the core's record changed: %+v, %v", got, err)
	}
}

// befriendInStore makes (id, contact) Both through the component's own
// compare-and-set, as the stanzas would.
func befriendInStore(t *testing.T, c *Component, id mapping.UserID, contact mapping.BareJID) {
	t.Helper()
	_, next, err := c.transition(context.Background(), id, contact, func(bridge.Subscription) bridge.Subscription { return sBoth })
	if err != nil || !SameState(next, sBoth) {
		t.Fatalf("befriend: %s, %v", StateName(next), err)
	}
}

// TestPuppetDeliveredOnce: a presence's observation time is reported on
// its first delivery only; a newer presence set meanwhile keeps its own;
// a presence without one reports nothing.
func TestPuppetDeliveredOnce(t *testing.T) {
	p := newPuppets()
	t1, t2 := time.Unix(100, 0).UTC(), time.Unix(200, 0).UTC()
	one := shown{presence: mapping.Presence{State: mapping.StateAway, Status: "one"}, observed: t1}
	two := shown{presence: mapping.Presence{State: mapping.StateBusy, Status: "two"}, observed: t2}
	p.set(bob, one)
	cur, _ := p.get(bob)
	if !p.delivered(bob, cur) {
		t.Fatal("first delivery not reported")
	}
	if again, _ := p.get(bob); p.delivered(bob, again) {
		t.Error("a re-send of a delivered presence reported again")
	}
	p.set(bob, two)
	cur, _ = p.get(bob)
	p.set(bob, one) // newer than what the sender is writing
	if !p.delivered(bob, cur) {
		t.Error("delivery of a presence replaced meanwhile not reported")
	}
	if now, _ := p.get(bob); !now.observed.Equal(t1) || !p.delivered(bob, now) {
		t.Errorf("the newer presence lost its time: %+v", now)
	}
	p.set(carol, shown{presence: mapping.Presence{State: mapping.StateAway}})
	if cur, _ := p.get(carol); p.delivered(carol, cur) {
		t.Error("a presence without an observation time reported")
	}
}

// TestOptedOutRecordNeverShownAfterRestart: the core's record of a Matrix
// user who opted out still holds their real presence (the core shows
// offline in its place). A component that starts afresh, and so reads the
// record, must not show it to a contact.
func TestOptedOutRecordNeverShownAfterRestart(t *testing.T) {
	c, _ := newTestComponent(t)
	ctx := context.Background()
	rec := bridge.PresenceRecord{Presence: mapping.Presence{State: mapping.StateBusy, Status: "private"}, Seq: 9, UpdatedAt: time.Now().UTC()}
	key := bridge.PresenceKey(mapping.NetworkMatrix, string(carol))
	if _, err := c.store.Presence.Put(ctx, key, rec); err != nil {
		t.Fatal(err)
	}
	if _, err := c.store.Settings.Put(ctx, key, bridge.UserSettings{OptOut: true, UpdatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	befriendInStore(t, c, carol, "u@x.org")
	out := feed(t, c, `<presence type='probe' from='u@x.org/r' to='`+puppetOf(t, c, carol)+`'/>`)
	if strings.Contains(out, "private") || strings.Contains(out, "<show>") {
		t.Errorf("an opted-out user's stored presence was shown: %s", out)
	}
}
