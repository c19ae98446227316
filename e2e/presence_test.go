package e2e

import (
	"fmt"
	"testing"
	"time"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
)

// TestStoryPresenceBothWays: alice (XMPP) and bob (Matrix) agree to see
// each other through the consent flow, then every XMPP show value and
// status reaches bob as the ghost's presence, and every Matrix presence
// and status_msg reaches alice as the puppet's show and status, each
// within a second.
func TestStoryPresenceBothWays(t *testing.T) {
	e := newEnv(t, options{})
	alice := e.xmppUser("alice")
	bob := e.matrixUser("bob")
	aliceJID := alice.JID.Bare().String()
	puppet, ghost := e.puppet(bob.UserID), e.ghost(aliceJID)

	sendPresence(t, alice, "", "", "", "hello")
	e.link(alice, bob)
	// alice's roster shows the agreement both ways.
	poll(t, flowTimeout, "roster subscription both", func() error {
		if sub := rosterOf(t, alice)[puppet]; sub != "both" {
			return fmt.Errorf("alice's roster has %s as %q, want both", puppet, sub)
		}
		return nil
	})
	bob.waitPresence(flowTimeout, ghost, "alice's initial presence", is("online", "hello"))

	busy, busyStatus := e.busyPresence(), ""
	if busy == "unavailable" {
		busyStatus = "Do not disturb" // the default busy_status_hint
	}
	for i, step := range []struct {
		show, status       string
		presence, statusMx string
	}{
		{"", "available-1", "online", "available-1"},
		{"chat", "chat-2", "online", "chat-2"},
		{"away", "away-3", "unavailable", "away-3"},
		{"xa", "xa-4", "unavailable", "xa-4"},
		{"dnd", "dnd-5", busy, "dnd-5"},
		{"dnd", "", busy, busyStatus},
		{"", "back-7", "online", "back-7"},
	} {
		desc := fmt.Sprintf("XMPP→Matrix step %d: show %q status %q", i, step.show, step.status)
		start := time.Now()
		sendPresence(t, alice, "", "", step.show, step.status)
		got := bob.waitPresence(waitLatency, ghost, desc, is(step.presence, step.statusMx))
		within(t, desc, got.At.Sub(start), sloLatency)
	}

	// XEP-0319 idle → Matrix: a client cannot set last_active_ago (the
	// homeserver computes it from the ghost's own activity, i.e. the
	// bridge's PUT), so what crosses is the state and status; the idle
	// instant itself cannot be carried to Matrix.
	since := time.Now().Add(-10 * time.Minute).UTC().Format(time.RFC3339)
	start := time.Now()
	send(t, alice, `<presence><show>away</show><status>idle-8</status><idle xmlns='urn:xmpp:idle:1' since='`+since+`'/></presence>`)
	got := bob.waitPresence(waitLatency, ghost, "idle away", is("unavailable", "idle-8"))
	within(t, "XMPP→Matrix idle away", got.At.Sub(start), sloLatency)
	t.Logf("alice idle since %s; Dendrite shows her ghost's last_active_ago = %d ms (its own clock, not settable)", since, got.LastActiveAgo)

	// Matrix → XMPP. bob's client keeps syncing (so Dendrite keeps him
	// online on its own); his presence changes are PUTs from the same
	// client, which later syncs do not override.
	testStart := time.Now()
	for i, step := range []struct {
		presence, status string
		pred             func(prosodytest.Stanza) bool
	}{
		{"online", "bob-1", func(s prosodytest.Stanza) bool { return s.Type == "" && s.Show == "" && s.Status == "bob-1" }},
		{"unavailable", "bob-2", func(s prosodytest.Stanza) bool { return s.Type == "" && s.Show == "away" && s.Status == "bob-2" }},
		{"offline", "bob-3", func(s prosodytest.Stanza) bool { return s.Type == "unavailable" }},
		{"online", "bob-4", func(s prosodytest.Stanza) bool { return s.Type == "" && s.Show == "" && s.Status == "bob-4" }},
		{"online", "", func(s prosodytest.Stanza) bool { return s.Type == "" && s.Show == "" && s.Status == "" }},
	} {
		desc := fmt.Sprintf("Matrix→XMPP step %d: %s %q", i, step.presence, step.status)
		start, mark := time.Now(), markX(alice)
		bob.put(step.presence, step.status)
		s := mark.wait(t, waitLatency, desc, presenceFrom(puppet, step.pred))
		within(t, desc, time.Since(start), sloLatency)
		if step.presence == "unavailable" {
			// Matrix last_active_ago → XEP-0319 idle since.
			idle, err := time.Parse(time.RFC3339, s.IdleSince)
			if err != nil {
				t.Errorf("bob unavailable: want <idle since> on the puppet's presence, got %s", s.Raw)
			} else if idle.Before(testStart.Add(-time.Minute)) || idle.After(time.Now().Add(2*time.Second)) {
				t.Errorf("bob unavailable: idle since %v, want around %v", idle, start)
			}
		}
	}
}
