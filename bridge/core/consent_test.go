package core

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// storedPresence polls the presence bucket until key holds (or not) a
// record, and returns it.
func (h *harness) storedPresence(key string, want bool) bridge.PresenceRecord {
	h.t.Helper()
	var rec bridge.PresenceRecord
	bustest.WaitFor(h.t, 5*time.Second, fmt.Sprintf("presence record of %s stored = %v", key, want), func() bool {
		r, _, err := h.store.Presence.Get(context.Background(), key)
		rec = r
		return (err == nil) == want
	})
	return rec
}

// keys lists the keys of a bucket.
func keys[T any](h *harness, b *bridge.Bucket[T]) []string {
	h.t.Helper()
	var out []string
	h.check(b.Range(context.Background(), func(k string, _ T) error { out = append(out, k); return nil }))
	return out
}

// people is the number of people the core keeps in memory, the settle
// marker's pair excluded.
func (h *harness) people() int { return h.core.peopleCount() - 2 }

// TestStrangersLeaveNoTrace (issue 9, defect 1): presence of people who
// hold no link, on either network, is neither stored nor shown: 2,000
// forged addresses leave no record, no ghost, no memory.
func TestStrangersLeaveNoTrace(t *testing.T) {
	h := start(t, Default(), nil)
	for i := range 2000 {
		h.presence(mapping.NetworkXMPP, fmt.Sprintf("forged%d@evil.example", i), mapping.Presence{State: mapping.StateAvailable, Status: "spam"})
	}
	h.presence(mapping.NetworkMatrix, bob, mapping.Presence{State: mapping.StateAway, Status: "bob-alone"})
	h.settle()
	for _, d := range h.rec.all() {
		if strings.Contains(d, "evil.example") || strings.Contains(d, "bob-alone") {
			t.Fatalf("presence of a person without a link shown: %s", d)
		}
	}
	// Everything the persister holds has been written once the marker's
	// record is there.
	h.storedPresence(bridge.PresenceKey(mapping.NetworkXMPP, settleJID), true)
	for _, k := range keys(h, h.store.Presence) {
		if k != bridge.PresenceKey(mapping.NetworkXMPP, settleJID) {
			t.Errorf("presence of a person without a link stored: %s", k)
		}
	}
	if n := h.people(); n != 0 {
		t.Errorf("the core keeps %d people without a link in memory", n)
	}
	if got := h.core.Refusals()[ReasonNoLink]; got != 2001 {
		t.Errorf("refusals[no_link] = %d, want 2001", got)
	}
}

// TestPresenceOnlyWhileLinked: presence is kept and shown from the
// moment a link is asked, the last known one is shown to a Matrix user
// who approves, and when the last link ends the person goes offline once,
// their record is deleted and nothing of theirs is shown any more.
func TestPresenceOnlyWhileLinked(t *testing.T) {
	h := start(t, Default(), nil)
	aliceKey, bobKey := bridge.PresenceKey(mapping.NetworkXMPP, alice), bridge.PresenceKey(mapping.NetworkMatrix, bob)
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: "before-asking"})
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateBusy, Status: "asked"})
	h.presence(mapping.NetworkMatrix, bob, mapping.Presence{State: mapping.StateAway, Status: "bob-asked"})
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "asked/busy"`, `presence matrix→xmpp @bob:example.org "bob-asked/away"`)
	h.storedPresence(aliceKey, true)
	h.storedPresence(bobKey, true)
	if h.count(`presence xmpp→matrix alice@xmpp.example "before-asking/away"`) != 0 {
		t.Fatal("presence from before the request was kept")
	}

	h.rec.reset()
	h.membership(bob, alice, "join", bob, bob, "!dm:example.org")
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "asked/busy"`)

	h.rec.reset()
	h.membership(bob, alice, "leave", bob, bob, "!dm:example.org")
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "/offline"`, `matrix alice@xmpp.example→@bob:example.org leave !dm:example.org`)
	h.storedPresence(aliceKey, false)
	h.storedPresence(bobKey, false)
	if _, _, err := h.store.Links.Get(context.Background(), bridge.PairKey(bob, alice)); err == nil {
		t.Fatal("revoked link kept")
	}
	h.rec.reset()
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAvailable, Status: "after"})
	h.presence(mapping.NetworkMatrix, bob, mapping.Presence{State: mapping.StateAvailable, Status: "after"})
	h.settle()
	for _, d := range h.rec.all() {
		if strings.Contains(d, `"after/`) {
			t.Fatalf("shown after the link ended: %s", d)
		}
	}
	if n := h.people(); n != 0 {
		t.Errorf("the core keeps %d people after their links ended", n)
	}
}

// A person with another link keeps their record and is not taken
// offline when one of their links ends.
func TestOtherLinkKeepsPresence(t *testing.T) {
	carol := "@carol:example.org"
	h := start(t, Default(), nil, aliceBob, [2]string{alice, carol})
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: "here"})
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "here/away"`)
	h.rec.reset()
	h.subscription(alice, carol, bridge.Unsubscribed)
	h.waitOut(`matrix alice@xmpp.example→@carol:example.org leave !seed:example.org`)
	if h.count(`presence xmpp→matrix alice@xmpp.example "/offline"`) != 0 {
		t.Fatal("alice's ghost went offline although bob still sees it")
	}
	h.storedPresence(bridge.PresenceKey(mapping.NetworkXMPP, alice), true)
	h.storedPresence(bridge.PresenceKey(mapping.NetworkMatrix, carol), false)
}

// TestStartForgetsOrphans: what an earlier version kept without consent
// goes at start: presence of people without a link, and ended links.
func TestStartForgetsOrphans(t *testing.T) {
	store := bridge.NewMemoryStore()
	ctx := context.Background()
	old := time.Now().Add(-48 * time.Hour).UTC()
	for i := range 100 {
		jid := fmt.Sprintf("forged%d@evil.example", i)
		_, err := store.Presence.Put(ctx, bridge.PresenceKey(mapping.NetworkXMPP, jid), bridge.PresenceRecord{Presence: mapping.Presence{State: mapping.StateAway}})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, st := range []bridge.LinkState{bridge.LinkDenied, bridge.LinkRevoked} {
		jid := string(st) + "@xmpp.example"
		_, err := store.Links.Put(ctx, bridge.PairKey(bob, jid), bridge.Link{MatrixUser: bob, XMPPUser: mapping.BareJID(jid), State: st, UpdatedAt: old})
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := store.Presence.Put(ctx, bridge.PresenceKey(mapping.NetworkXMPP, alice), bridge.PresenceRecord{Presence: mapping.Presence{State: mapping.StateAway, Status: "kept"}})
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, Default(), store, aliceBob)
	want := map[string]bool{bridge.PresenceKey(mapping.NetworkXMPP, alice): true}
	for _, k := range keys(h, store.Presence) {
		if !want[k] {
			t.Errorf("orphan presence kept: %s", k)
		}
	}
	links := keys(h, store.Links)
	if len(links) != 2 { // alice-bob and the settle marker
		t.Errorf("links after start: %q", links)
	}
	// alice's record was kept: bob sees it when he joins again.
	h.membership(bob, alice, "invite", alice, bob, "!again:example.org")
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "kept/away"`)
}

// An opt-out is a choice for the links to come: recorded without a link,
// shown nowhere, and applied from the first link on.
func TestOptOutBeforeLinking(t *testing.T) {
	h := start(t, Default(), nil)
	h.optOut(alice, true)
	h.settle()
	for _, d := range h.rec.all() {
		if strings.Contains(d, alice) {
			t.Fatalf("a person without a link was shown: %s", d)
		}
	}
	h.subscription(alice, bob, bridge.Subscribe)
	h.membership(bob, alice, "join", bob, bob, "!dm:example.org")
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: "secret"})
	h.settle()
	if h.count(`presence xmpp→matrix alice@xmpp.example "secret/away"`) != 0 {
		t.Fatal("the opt-out made before linking was not applied")
	}
	h.optOut(alice, false)
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "secret/away"`)
	if _, _, err := h.store.Settings.Get(context.Background(), bridge.PresenceKey(mapping.NetworkXMPP, alice)); err == nil {
		t.Error("opting in left a settings record")
	}
}

// dropCounter is a watcher that counts the presences the core dropped.
type dropCounter struct {
	mu sync.Mutex
	n  map[bridge.DropReason]int
}

func (d *dropCounter) PresenceChanged(mapping.Network, string, bridge.PresenceRecord, bool) {}
func (d *dropCounter) PresenceDropped(_ mapping.Network, r bridge.DropReason) {
	d.mu.Lock()
	d.n[r]++
	d.mu.Unlock()
}

// TestStrangersCountedAsNoConsent: what the core drops for want of a link
// is visible to the operator's metrics, by reason, without identifiers.
func TestStrangersCountedAsNoConsent(t *testing.T) {
	h := start(t, Default(), nil)
	d := &dropCounter{n: map[bridge.DropReason]int{}}
	h.core.SetWatcher(d)
	for i := range 3 {
		h.presence(mapping.NetworkXMPP, fmt.Sprintf("stranger%d@evil.example", i), mapping.Presence{State: mapping.StateAway})
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.n[bridge.DropNoConsent] != 3 {
		t.Fatalf("drops %v, want 3 no_consent", d.n)
	}
}
