package xmppside

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestProbeAnswered: the probe Prosody sends from the full JID of a user
// who logs in is answered with the puppet's current presence.
func TestProbeAnswered(t *testing.T) {
	r := startRig(t, PolicyAccept)
	alice := r.login("alice", "laptop", 0, "", "")
	puppet := r.puppet(bob)
	r.befriend(alice, bob)
	idle := time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Second)
	r.show(bob, mapping.Presence{State: mapping.StateAway, Status: "afk", LastActive: idle})
	alice.Wait(t, waitLong, "bob away", func(s prosodytest.Stanza) bool { return from("presence", "", puppet)(s) && s.Show == "away" })

	phone := r.srv.Login(t, "alice", "alice-pw", "phone")
	if err := phone.SendPresence(r.ctx(), "", "", "", "", 0); err != nil {
		t.Fatal(err)
	}
	p := phone.Wait(t, waitLong, "probe answer", from("presence", "", puppet))
	if p.Show != "away" || p.Status != "afk" || p.IdleSince != idle.Format(time.RFC3339) {
		t.Errorf("probe answer: %s", p.Raw)
	}
	if p.To != phone.JID.String() {
		t.Errorf("probe answered to %q, want the prober's full JID %q", p.To, phone.JID)
	}
	// XEP-0012: a contact may ask how long the puppet has been idle.
	if err := phone.Send(r.ctx(), `<iq type='get' id='last1' to='`+puppet+`'><query xmlns='jabber:iq:last'/></iq>`); err != nil {
		t.Fatal(err)
	}
	last := phone.Wait(t, waitLong, "last activity", func(s prosodytest.Stanza) bool { return s.ID == "last1" })
	if last.Type != "result" || !strings.Contains(last.Raw, `seconds="6`) || !strings.Contains(last.Raw, "afk") {
		t.Errorf("last activity (want about 600 seconds): %s", last.Raw)
	}
}

// TestProbeNonSubscriber: a probe from someone who may not see the puppet
// gets unsubscribed and no presence. Prosody only probes contacts its
// roster says we approved, so the test makes the two disagree, as after a
// loss of the bridge's state: mallory was approved, then the bridge forgot.
func TestProbeNonSubscriber(t *testing.T) {
	r := startRig(t, PolicyAccept)
	const malloryJID mapping.BareJID = "mallory@localhost"
	puppet := r.puppet(bob)
	mallory := r.login("mallory", "laptop", 0, "", "")
	r.befriend(mallory, bob)
	r.show(bob, mapping.Presence{State: mapping.StateAvailable, Status: "private"})
	mallory.Wait(t, waitLong, "bob's presence while approved", from("presence", "", puppet))

	// The bridge forgets the subscription.
	if _, err := r.store.Subscriptions.Put(r.ctx(), pairKey(bob, malloryJID), bridge.Subscription{}); err != nil {
		t.Fatal(err)
	}
	r.comp.subs.set(bob, malloryJID, bridge.Subscription{})

	phone := r.srv.Login(t, "mallory", "mallory-pw", "phone")
	if _, err := phone.Roster(r.ctx()); err != nil {
		t.Fatal(err)
	}
	if err := phone.SendPresence(r.ctx(), "", "", "", "", 0); err != nil {
		t.Fatal(err)
	}
	phone.Wait(t, waitLong, "unsubscribed in answer to the login probe", from("presence", "unsubscribed", puppet))
	// Ping after the probe: once its answer is in, everything the probe
	// caused has arrived too.
	r.ping(phone, puppet)
	for _, s := range phone.Received() {
		if s.Name == "presence" && s.Type == "" && s.From == puppet {
			t.Errorf("presence leaked to a non-subscriber: %s", s.Raw)
		}
	}
	if got := r.roster(phone, puppet); got == "to" || got == "both" {
		t.Errorf("mallory's roster still shows the puppet as %q", got)
	}
}

// TestTwoResourcesAggregate: the highest priority resource wins; when it
// goes offline the other one shows; each change is reported once although
// Prosody delivers it to two puppets.
func TestTwoResourcesAggregate(t *testing.T) {
	r := startRig(t, PolicyAccept)
	const aliceJID mapping.BareJID = "alice@localhost"
	laptop := r.login("alice", "laptop", 5, "away", "at lunch")
	r.befriend(laptop, bob)
	r.befriend(laptop, carol)
	phone := r.srv.Login(t, "alice", "alice-pw", "phone")
	if err := phone.SendPresence(r.ctx(), "", "", "", "on the go", 1); err != nil {
		t.Fatal(err)
	}
	last := func() mapping.Presence { return r.obs.lastPresence(aliceJID) }
	count := func(pred func(mapping.Presence) bool) int {
		n := 0
		for _, p := range r.obs.presenceOf(aliceJID) {
			if pred(p) {
				n++
			}
		}
		return n
	}
	// The phone's arrival does not change the aggregate (lower priority);
	// mark the point with a status change of the laptop.
	if err := laptop.SendPresence(r.ctx(), "", "", "away", "marker 1", 5); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "marker 1", func() bool { return last().Status == "marker 1" })
	if n := count(func(p mapping.Presence) bool { return p.Status == "marker 1" }); n != 1 {
		t.Errorf("marker 1 reported %d times, want once", n)
	}
	if p := last(); p.State != mapping.StateAway || p.Priority != 5 {
		t.Errorf("aggregate with both resources: %+v, want the laptop's", p)
	}
	if n := count(func(p mapping.Presence) bool { return p.Status == "on the go" }); n != 0 {
		t.Errorf("the lower-priority phone was reported %d times", n)
	}

	// The laptop goes offline: the phone's presence is the aggregate now.
	if err := laptop.SendPresence(r.ctx(), "unavailable", "", "", "", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "phone's presence as aggregate", func() bool {
		p := last()
		return p.State == mapping.StateAvailable && p.Status == "on the go" && p.Priority == 1
	})
	if err := phone.SendPresence(r.ctx(), "", "", "chat", "marker 2", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "marker 2", func() bool { return last().Status == "marker 2" })
	if n := count(func(p mapping.Presence) bool { return p.Status == "on the go" }); n != 1 {
		t.Errorf("the change to the phone was reported %d times, want once", n)
	}
	// And the phone going offline makes alice offline, once; the status is
	// the one she set while available, not the unavailable's text.
	if err := phone.SendPresence(r.ctx(), "unavailable", "", "", "bye", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "offline", func() bool { return last().State == mapping.StateOffline })
	r.ping(phone, r.puppet(bob)) // the unavailable was handled before the ping
	if n := count(func(p mapping.Presence) bool { return p.State == mapping.StateOffline }); n != 1 {
		t.Errorf("offline reported %d times, want once", n)
		for _, p := range r.obs.presenceOf(aliceJID) {
			t.Logf("report %+v", p)
		}
	}
	if p := last(); p.Status != "marker 2" {
		t.Errorf("offline with status %q, want the last one set while available (marker 2)", p.Status)
	}
}

// TestProsodyRestart: the component reconnects by itself, keeps its state,
// announces the puppet's presence again and probes its contacts again.
func TestProsodyRestart(t *testing.T) {
	// A slow first retry, so that alice is back before the component is.
	r := startRig(t, PolicyAccept, func(c *Config) { c.ReconnectMin, c.ReconnectMax = 3*time.Second, 3*time.Second })
	const aliceJID mapping.BareJID = "alice@localhost"
	alice := r.login("alice", "laptop", 0, "", "")
	puppet := r.puppet(bob)
	r.befriend(alice, bob)
	r.show(bob, mapping.Presence{State: mapping.StateBusy, Status: "deep work"})
	alice.Wait(t, waitLong, "bob busy", func(s prosodytest.Stanza) bool { return from("presence", "", puppet)(s) && s.Show == "dnd" })

	r.srv.Restart(t)
	alice = r.srv.Login(t, "alice", "alice-pw", "laptop2")
	if _, err := alice.Roster(r.ctx()); err != nil {
		t.Fatal(err)
	}
	if err := alice.SendPresence(r.ctx(), "", "", "chat", "back", 0); err != nil {
		t.Fatal(err)
	}
	before := r.comp.connects.Load()
	waitFor(t, waitLong, "reconnect", func() bool { return r.comp.connects.Load() >= 2 && r.comp.connected() })
	p := alice.Wait(t, waitLong, "bob's presence after the restart", func(s prosodytest.Stanza) bool {
		return from("presence", "", puppet)(s) && s.Show == "dnd"
	})
	if p.Status != "deep work" {
		t.Errorf("presence after restart: %s", p.Raw)
	}
	if before < 2 {
		t.Log("alice was back before the component: the presence came from the re-announce")
	}
	// The component probed alice again.
	waitFor(t, waitLong, "alice's presence after the restart", func() bool { return r.obs.lastPresence(aliceJID).Status == "back" })
	if s := r.sub(bob, aliceJID); !SameState(s, sBoth) {
		t.Errorf("state after restart: %s", StateName(s))
	}
	if got := r.roster(alice, puppet); got != "both" {
		t.Errorf("roster after restart: %q", got)
	}
	r.ping(alice, puppet)
}

// TestCleanShutdown: every contact that may see a puppet gets unavailable
// from it before the stream closes; nobody else hears from the puppets.
func TestCleanShutdown(t *testing.T) {
	r := startRig(t, PolicyAccept)
	alice := r.login("alice", "laptop", 0, "", "")
	dave := r.login("dave", "desk", 0, "", "")
	erin := r.login("erin", "tablet", 0, "", "")
	for _, c := range []*prosodytest.Client{alice, dave} {
		r.befriend(c, bob)
		r.befriend(c, carol)
	}
	for _, id := range []mapping.UserID{bob, carol} {
		r.show(id, mapping.Presence{State: mapping.StateAvailable, Status: "here"})
	}
	for _, c := range []*prosodytest.Client{alice, dave} {
		for _, id := range []mapping.UserID{bob, carol} {
			c.Wait(t, waitLong, "available", func(s prosodytest.Stanza) bool { return from("presence", "", r.puppet(id))(s) && s.Status == "here" })
		}
	}

	r.stop()
	for _, c := range []*prosodytest.Client{alice, dave} {
		for _, id := range []mapping.UserID{bob, carol} {
			c.Wait(t, waitLong, "unavailable from "+string(id), from("presence", "unavailable", r.puppet(id)))
		}
	}
	waitFor(t, waitLong, "component gone from Prosody", func() bool {
		return contains(r.srv.Log(), "component disconnected: matrix.localhost")
	})
	for _, s := range erin.Received() {
		if s.From == r.puppet(bob) || s.From == r.puppet(carol) {
			t.Errorf("erin, no contact, got presence from a puppet: %s", s.Raw)
		}
	}
}

// TestUnavailableTextIsNotStatus: the text of an unavailable presence is
// not the person's status (servers fill it with their own reasons, such as
// Prosody's "Disconnected: Received SIGTERM"): going offline keeps the
// status the person last set while available.
func TestUnavailableTextIsNotStatus(t *testing.T) {
	r := startRig(t, PolicyAccept)
	const aliceJID mapping.BareJID = "alice@localhost"
	alice := r.login("alice", "laptop", 0, "", "")
	r.befriend(alice, bob)
	if err := alice.SendPresence(r.ctx(), "", "", "away", "working on it", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice away", func() bool { return r.obs.lastPresence(aliceJID).Status == "working on it" })
	if err := alice.SendPresence(r.ctx(), "unavailable", "", "", "Disconnected: Received SIGTERM", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice offline", func() bool { return r.obs.lastPresence(aliceJID).State == mapping.StateOffline })
	if p := r.obs.lastPresence(aliceJID); p.Status != "working on it" {
		t.Errorf("offline with status %q, want the status set while available", p.Status)
	}

	// An empty status set while available is kept as empty.
	if err := alice.SendPresence(r.ctx(), "", "", "", "", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice back", func() bool { return r.obs.lastPresence(aliceJID).State == mapping.StateAvailable })
	if err := alice.SendPresence(r.ctx(), "unavailable", "", "", "gone", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice offline again", func() bool { return r.obs.lastPresence(aliceJID).State == mapping.StateOffline })
	if p := r.obs.lastPresence(aliceJID); p.Status != "" {
		t.Errorf("offline with status %q, want none", p.Status)
	}

	// Prosody's own shutdown: whatever it tells the component about alice,
	// her status is not its text.
	if err := alice.SendPresence(r.ctx(), "", "", "", "before the restart", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice's new status", func() bool { return r.obs.lastPresence(aliceJID).Status == "before the restart" })
	r.srv.Restart(t)
	waitFor(t, waitLong, "reconnect", func() bool { return r.comp.connects.Load() >= 2 && r.comp.connected() })
	for _, p := range r.obs.presenceOf(aliceJID) {
		if strings.Contains(p.Status, "SIGTERM") || p.State == mapping.StateOffline && p.Status == "Disconnected: Received SIGTERM" {
			t.Errorf("the server's shutdown text became alice's status: %+v", p)
		}
	}
	if p := r.obs.lastPresence(aliceJID); p.State == mapping.StateOffline && p.Status != "before the restart" {
		t.Errorf("offline after the server's shutdown with status %q", p.Status)
	}
}

// deliveries records what the component reports through OnDelivered.
type deliveries struct {
	mu  sync.Mutex
	got []time.Time
}

func (d *deliveries) add(at time.Time) { d.mu.Lock(); d.got = append(d.got, at); d.mu.Unlock() }

func (d *deliveries) all() []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.got...)
}

// TestDeliveryReported: a puppet presence written to the stream reports
// the ObservedAt of its command, once; a command without ObservedAt, a
// repeat, and the presence of a puppet without contacts report nothing;
// a change queued while the stream is down is reported when the
// re-announce after the reconnect writes it.
func TestDeliveryReported(t *testing.T) {
	var d deliveries
	r := startRigSetup(t, prosodytest.Options{}, PolicyAccept, func(c *Component) { c.OnDelivered(d.add) })
	alice := r.login("alice", "laptop", 0, "", "")
	puppet := r.puppet(bob)
	r.befriend(alice, bob)
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	show := func(id mapping.UserID, status string, at time.Time) {
		t.Helper()
		if err := r.comp.ShowPuppet(r.ctx(), bridge.PuppetPresence{Stamp: bridge.Stamp{ObservedAt: at}, User: id, Presence: mapping.Presence{State: mapping.StateAway, Status: status}}); err != nil {
			t.Fatal(err)
		}
	}
	seen := func(status string) {
		t.Helper()
		alice.Wait(t, waitLong, "bob "+status, func(s prosodytest.Stanza) bool { return from("presence", "", puppet)(s) && s.Status == status })
	}
	reported := func(at time.Time) {
		t.Helper()
		waitFor(t, waitLong, "delivery of "+at.String()+" reported", func() bool { return slices.Contains(d.all(), at) })
	}

	show(bob, "one", at(1))
	seen("one")
	reported(at(1))
	show(bob, "two", time.Time{}) // nothing observed
	seen("two")
	show(bob, "two", at(2))   // a repeat: nothing written
	show(carol, "x", at(3))   // no contacts: nothing written
	show(bob, "three", at(4)) // the marker: one sender, so the above are done
	seen("three")
	reported(at(4))
	if got, want := d.all(), []time.Time{at(1), at(4)}; !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Fatalf("reported %v, want %v", got, want)
	}

	r.srv.Stop()
	waitFor(t, waitLong, "stream down", func() bool { return !r.comp.connected() })
	show(bob, "four", at(5))
	r.srv.Restart(t)
	reported(at(5))
	if got, want := d.all(), []time.Time{at(1), at(4), at(5)}; !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Errorf("reported %v, want %v", got, want)
	}
}
