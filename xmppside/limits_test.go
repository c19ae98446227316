package xmppside

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// presenceFrom is a directed presence from a full JID to a puppet.
func presenceFrom(full, puppet, show string) string {
	return `<presence from='` + full + `' to='` + puppet + `'><show>` + show + `</show></presence>`
}

// TestTrackedUsersCapEvicts: above Limits.TrackedUsers the least recently
// heard user is forgotten, whatever their state, and one who was reported
// online is reported offline (with their status) rather than left online
// on Matrix with nobody to tell when they leave.
func TestTrackedUsersCapEvicts(t *testing.T) {
	cfg := validConfig()
	cfg.Limits.TrackedUsers = 100
	c, obs := newTestComponentWith(t, cfg)
	puppet := puppetOf(t, c, bob)
	const n = 300
	for i := range n {
		contact := mapping.BareJID(fmt.Sprintf("u%d@x.org", i))
		c.subs.set(bob, contact, sBoth)
		feed(t, c, presenceFrom(string(contact)+"/r", puppet, "away"))
	}
	if got := trackedUsers(c); got > cfg.Limits.TrackedUsers {
		t.Fatalf("%d users tracked, cap %d", got, cfg.Limits.TrackedUsers)
	}
	for i := range n {
		contact := mapping.BareJID(fmt.Sprintf("u%d@x.org", i))
		want := mapping.StateOffline
		if i >= n-cfg.Limits.TrackedUsers {
			want = mapping.StateAway
		}
		if got := obs.lastPresence(contact).State; got != want {
			t.Fatalf("%s: last reported %v, want %v", contact, got, want)
		}
	}
	if got := c.Refused().UsersEvicted; got != n-uint64(cfg.Limits.TrackedUsers) {
		t.Errorf("%d evictions counted, want %d", got, n-cfg.Limits.TrackedUsers)
	}
	// An evicted user who speaks again is tracked and reported again.
	feed(t, c, presenceFrom("u0@x.org/r", puppet, "dnd"))
	if got := obs.lastPresence("u0@x.org").State; got != mapping.StateBusy {
		t.Errorf("u0 back: %v", got)
	}
}

// TestResourcesPerAddressCapped: one address's resources are capped; the
// least recently heard one makes room, and the aggregate stays right.
func TestResourcesPerAddressCapped(t *testing.T) {
	cfg := validConfig()
	cfg.Limits.ResourcesPerAddress = 8
	c, obs := newTestComponentWith(t, cfg)
	puppet := puppetOf(t, c, bob)
	const mallory mapping.BareJID = "mallory@x.org"
	c.subs.set(bob, mallory, sBoth)
	start := time.Now()
	const n = 20000
	for i := range n {
		feed(t, c, `<presence from='mallory@x.org/r`+fmt.Sprint(i)+`' to='`+puppet+`'><priority>`+fmt.Sprint(i%5)+`</priority><status>r`+fmt.Sprint(i)+`</status></presence>`)
	}
	took := time.Since(start)
	c.users.mu.Lock()
	kept := c.users.m[mallory].res.Len()
	c.users.mu.Unlock()
	if kept != cfg.Limits.ResourcesPerAddress {
		t.Fatalf("%d resources kept, cap %d", kept, cfg.Limits.ResourcesPerAddress)
	}
	// The 8 kept are the last 8; the highest priority among them is 4,
	// and of those the most recent one: r19999 has priority 4.
	if p := obs.lastPresence(mallory); p.Status != "r19999" || p.Priority != 4 {
		t.Errorf("aggregate %+v, want r19999 at priority 4", p)
	}
	if got := c.Refused().ResourcesEvicted; got != n-uint64(cfg.Limits.ResourcesPerAddress) {
		t.Errorf("%d resource evictions counted, want %d", got, n-cfg.Limits.ResourcesPerAddress)
	}
	t.Logf("%d stanzas from distinct resources in %v", n, took)
}

// TestForgottenWithTheLastRelation: when a contact's last subscription
// with any puppet returns to None, the component forgets their presence,
// and the pair's key is deleted from the subscriptions bucket.
func TestForgottenWithTheLastRelation(t *testing.T) {
	c, _ := newTestComponent(t)
	ctx := context.Background()
	puppet := puppetOf(t, c, bob)
	const contact mapping.BareJID = "u@x.org"
	feed(t, c, `<presence type='subscribe' from='u@x.org' to='`+puppet+`'/>`)
	if s, err := c.getSubscription(ctx, bob, contact); err != nil || !SameState(s, sNonePI) {
		t.Fatalf("after subscribe: %s, %v", StateName(s), err)
	}
	feed(t, c, presenceFrom("u@x.org/r", puppet, "away"))
	if trackedUsers(c) != 1 {
		t.Fatalf("a contact with a pending request is not tracked")
	}
	feed(t, c, `<presence type='unsubscribe' from='u@x.org' to='`+puppet+`'/>`)
	if _, _, err := c.store.Subscriptions.Get(ctx, pairKey(bob, contact)); !errors.Is(err, bridge.ErrNotFound) {
		t.Errorf("the pair's key is still stored after it returned to None (err %v)", err)
	}
	if got := trackedUsers(c); got != 0 {
		t.Errorf("%d users tracked after their last relation ended", got)
	}
}

// TestNoneKeysDeletedAtStart: keys that hold None (left by an older
// version) are deleted when the component starts.
func TestNoneKeysDeletedAtStart(t *testing.T) {
	cfg := validConfig()
	cfg.Host, cfg.Port = "127.0.0.1", 1 // nothing to connect to
	cfg.ReconnectMin, cfg.ReconnectMax = 10*time.Millisecond, 20*time.Millisecond
	c, _ := newTestComponentWith(t, cfg)
	ctx := context.Background()
	none, both := pairKey(bob, "a@x.org"), pairKey(bob, "b@x.org")
	for key, s := range map[string]bridge.Subscription{none: {}, both: sBoth} {
		if _, err := c.store.Subscriptions.Put(ctx, key, s); err != nil {
			t.Fatal(err)
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	waitFor(t, waitLong, "the None key deleted", func() bool {
		_, _, err := c.store.Subscriptions.Get(ctx, none)
		return errors.Is(err, bridge.ErrNotFound)
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.store.Subscriptions.Get(ctx, both); err != nil {
		t.Errorf("a live pair was deleted: %v", err)
	}
}

// TestPuppetsWithoutContactsNotKept: the presence of Matrix users whose
// puppets have no contact is not kept (nor queued): nothing would be sent,
// and probes and approvals read the core's record.
func TestPuppetsWithoutContactsNotKept(t *testing.T) {
	c, _ := newTestComponent(t)
	ctx := context.Background()
	for i := range 5000 {
		id := mapping.UserID(fmt.Sprintf("@u%d:example.org", i))
		if err := c.ShowPuppet(ctx, bridge.PuppetPresence{User: id, Presence: mapping.Presence{State: mapping.StateAway}}); err != nil {
			t.Fatal(err)
		}
	}
	c.puppets.mu.Lock()
	kept := len(c.puppets.m)
	c.puppets.mu.Unlock()
	if kept != 0 {
		t.Errorf("%d puppets without contacts kept", kept)
	}
	if q := c.out.take(); len(q) != 0 {
		t.Errorf("%d puppets without contacts queued", len(q))
	}

	// With a contact it is kept, and forgotten when the last contact goes.
	befriendInStore(t, c, bob, "u@x.org")
	if err := c.ShowPuppet(ctx, bridge.PuppetPresence{User: bob, Presence: mapping.Presence{State: mapping.StateAway}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.puppets.get(bob); !ok {
		t.Fatal("a puppet with a contact was not kept")
	}
	puppet := puppetOf(t, c, bob)
	feed(t, c, `<presence type='unsubscribe' from='u@x.org' to='`+puppet+`'/>`)
	feed(t, c, `<presence type='unsubscribed' from='u@x.org' to='`+puppet+`'/>`)
	if _, ok := c.puppets.get(bob); ok {
		t.Error("a puppet was kept after its last contact went")
	}
}

// TestPendingRequestReportedAgainAfterRestart: a request stored as
// Pending In whose report may have been lost (the bridge died between
// storing and reporting) is reported once more when the server re-sends
// it after a restart; further re-sends are no news.
func TestPendingRequestReportedAgainAfterRestart(t *testing.T) {
	c, obs := newTestComponent(t)
	puppet := puppetOf(t, c, bob)
	const contact mapping.BareJID = "u@x.org"
	subscribe := `<presence type='subscribe' from='u@x.org' to='` + puppet + `'/>`
	feed(t, c, subscribe)
	feed(t, c, subscribe)
	if n := obs.subscriptions(contact, bob, bridge.Subscribe); n != 1 {
		t.Fatalf("%d reports before the restart, want 1", n)
	}
	// The restart: a new component on the same store.
	obs2 := &fakeObserver{}
	c2, err := New(c.cfg, c.ns, c.tr, c.store, obs2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.subs.load(context.Background(), c2.store.Subscriptions, func(string, error) {}); err != nil {
		t.Fatal(err)
	}
	feed(t, c2, subscribe)
	feed(t, c2, subscribe)
	if n := obs2.subscriptions(contact, bob, bridge.Subscribe); n != 1 {
		t.Fatalf("%d reports after the restart, want 1", n)
	}
}

// newTestComponentWith is newTestComponent with cfg.
func newTestComponentWith(t testing.TB, cfg Config) (*Component, *fakeObserver) {
	t.Helper()
	obs := &fakeObserver{}
	c, err := New(cfg, testNamespace(cfg.ComponentDomain), mapping.NewTranslator(mapping.DefaultTable(), false), openTestStore(t), obs, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, obs
}
