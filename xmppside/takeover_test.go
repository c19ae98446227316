package xmppside

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestTakeoverWithoutServerReportsOffline: a new process of the component
// (a restart, or a standby taking over after the active one died) that
// cannot reach the XMPP server still reports offline, after the offline
// grace, the XMPP users Matrix was told are online: it learns them from
// the core's presence bucket, not from the memory of the process that
// died. Without that, their ghosts would show them online for good.
func TestTakeoverWithoutServerReportsOffline(t *testing.T) {
	const grace = 500 * time.Millisecond
	r := startRig(t, PolicyAccept, func(c *Config) { c.OfflineGrace = grace })
	const aliceJID, erinJID mapping.BareJID = "alice@localhost", "erin@localhost"
	alice := r.login("alice", "laptop", 0, "", "here")
	erin := r.login("erin", "tablet", 0, "", "")
	for _, c := range []*prosodytest.Client{alice, erin} {
		r.befriend(c, bob)
	}
	if err := alice.SendPresence(r.ctx(), "", "", "", "here", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice online", func() bool { return r.obs.lastPresence(aliceJID).Status == "here" })
	erin.Close()
	waitFor(t, waitLong, "erin offline", func() bool { return r.obs.lastPresence(erinJID).State == mapping.StateOffline })
	// The core records what it was told.
	for _, u := range []mapping.BareJID{aliceJID, erinJID} {
		rec := bridge.PresenceRecord{Presence: r.obs.lastPresence(u), Seq: 1, UpdatedAt: time.Now()}
		if _, err := r.store.Presence.Put(r.ctx(), bridge.PresenceKey(mapping.NetworkXMPP, string(u)), rec); err != nil {
			t.Fatal(err)
		}
	}
	// The process dies with the XMPP server (one machine), and another
	// takes over while the server is still away.
	r.srv.Kill()
	r.stop()
	obs := &fakeObserver{}
	cfg := rigConfig(t, r.srv)
	cfg.OfflineGrace = grace
	next, err := New(cfg, r.ns, mapping.NewTranslator(mapping.DefaultTable(), false), r.store, obs, slog.New(newLogRecorder(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := time.Now()
	go func() { done <- next.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, waitLong, "alice reported offline by the new process", func() bool {
		return obs.lastPresence(aliceJID).State == mapping.StateOffline
	})
	if d := time.Since(started); d < grace {
		t.Errorf("alice reported offline %v after the start, before the grace of %v", d, grace)
	}
	if p := obs.lastPresence(aliceJID); p.Status != "here" {
		t.Errorf("alice offline with status %q, want her last one", p.Status)
	}
	if n := len(obs.presenceOf(erinJID)); n != 0 {
		t.Errorf("erin, offline already, reported %d times", n)
	}
	if next.connected() {
		t.Fatal("the new process got a stream: the test proves nothing")
	}
}

// TestTakeoverContactsGetUnavailable: a process that takes over from one
// that vanished without its goodbye (the server heard nothing: it keeps
// showing the puppet available) shows the puppet again to everyone the
// last one showed it to, and sends them unavailable when the puppet goes
// offline and when it shuts down: who saw a puppet lives in the
// subscriptions bucket, not in the memory of the process that died.
func TestTakeoverContactsGetUnavailable(t *testing.T) {
	// No reconnect of the first process within the test: once its stream
	// is cut it is as gone as a killed one.
	r := startRig(t, PolicyAccept, func(c *Config) { c.ReconnectMin, c.ReconnectMax = time.Minute, time.Minute })
	alice := r.login("alice", "laptop", 0, "", "")
	r.befriend(alice, bob)
	puppet := r.puppet(bob)
	hi := mapping.Presence{State: mapping.StateAvailable, Status: "hi"}
	r.show(bob, hi)
	alice.Wait(t, waitLong, "bob available", func(s prosodytest.Stanza) bool { return from("presence", "", puppet)(s) && s.Status == "hi" })
	drainUnavailable(alice, puppet)
	// The core records what it showed.
	if _, err := r.store.Presence.Put(r.ctx(), bridge.PresenceKey(mapping.NetworkMatrix, string(bob)), bridge.PresenceRecord{Presence: hi, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	sess, _, release := r.comp.acquireSession()
	conn := sess.Conn()
	release()
	conn.Close() // the stream ends without a goodbye, as at kill -9
	waitFor(t, waitLong, "the first process without a stream", func() bool { return !r.comp.connected() })
	r.stop()

	cfg := rigConfig(t, r.srv)
	next, err := New(cfg, r.ns, mapping.NewTranslator(mapping.DefaultTable(), false), r.store, &fakeObserver{}, slog.New(newLogRecorder(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- next.Run(ctx) }()
	stopNext := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		done <- nil
	}
	t.Cleanup(stopNext)
	alice.Wait(t, waitLong, "bob announced again", func(s prosodytest.Stanza) bool { return from("presence", "", puppet)(s) && s.Status == "hi" })
	show := func(p mapping.Presence) {
		if err := next.ShowPuppet(r.ctx(), bridge.PuppetPresence{User: bob, Presence: p, Stamp: bridge.Stamp{Seq: 2}}); err != nil {
			t.Fatal(err)
		}
	}
	show(mapping.Presence{State: mapping.StateOffline})
	alice.Wait(t, waitLong, "bob unavailable from the new process", from("presence", "unavailable", puppet))
	show(mapping.Presence{State: mapping.StateAvailable, Status: "again"})
	alice.Wait(t, waitLong, "bob available again", func(s prosodytest.Stanza) bool { return from("presence", "", puppet)(s) && s.Status == "again" })
	stopNext()
	alice.Wait(t, waitLong, "bob unavailable at the new process's shutdown", from("presence", "unavailable", puppet))
}

// errCrash is the panic of a test hook standing for a process killed at
// that point.
var errCrash = errors.New("killed here")

// TestRevocationOwedUnavailableAfterCrash: the core revokes a contact's
// approval of a puppet (unsubscribed); the process dies after storing the
// revocation and before sending the unavailable that goes with it, so the
// contact still sees the puppet available and the subscriptions bucket no
// longer lists them. The process that takes over sends them the
// unavailable they are owed.
func TestRevocationOwedUnavailableAfterCrash(t *testing.T) {
	r := startRig(t, PolicyAccept, func(c *Config) { c.ReconnectMin, c.ReconnectMax = time.Minute, time.Minute })
	alice := r.login("alice", "laptop", 0, "", "")
	r.befriend(alice, bob)
	puppet := r.puppet(bob)
	hi := mapping.Presence{State: mapping.StateAvailable, Status: "hi"}
	r.show(bob, hi)
	alice.Wait(t, waitLong, "bob available", func(s prosodytest.Stanza) bool { return from("presence", "", puppet)(s) && s.Status == "hi" })
	drainUnavailable(alice, puppet)
	if _, err := r.store.Presence.Put(r.ctx(), bridge.PresenceKey(mapping.NetworkMatrix, string(bob)), bridge.PresenceRecord{Presence: hi, Seq: 1}); err != nil {
		t.Fatal(err)
	}

	testHookRevocationStored = func() { panic(errCrash) }
	t.Cleanup(func() { testHookRevocationStored = nil })
	func() {
		defer func() {
			if p := recover(); p != errCrash {
				t.Fatalf("the revocation did not stop where the test kills it (%v)", p)
			}
		}()
		_ = r.comp.SendSubscription(r.ctx(), bridge.PuppetSubscription{Puppet: bob, Contact: bareOf(alice), Type: bridge.Unsubscribed})
	}()
	testHookRevocationStored = nil
	if r.sub(bob, bareOf(alice)).From {
		t.Fatal("the revocation was not stored")
	}
	sess, _, release := r.comp.acquireSession()
	conn := sess.Conn()
	release()
	conn.Close() // dead: no goodbye
	waitFor(t, waitLong, "the first process without a stream", func() bool { return !r.comp.connected() })
	r.stop()

	next, err := New(rigConfig(t, r.srv), r.ns, mapping.NewTranslator(mapping.DefaultTable(), false), r.store, &fakeObserver{}, slog.New(newLogRecorder(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- next.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	alice.Wait(t, waitLong, "the owed unavailable from bob", from("presence", "unavailable", puppet))
	waitFor(t, waitLong, "the owed unavailable settled", func() bool {
		keys, err := r.store.Directed.Keys(r.ctx())
		return err == nil && len(keys) == 0
	})
}

// drainUnavailable takes the unavailable stanzas from puppet that c
// received so far (Prosody's own, around the subscription handshake), so
// that a later Wait sees only new ones.
func drainUnavailable(c *prosodytest.Client, puppet string) {
	for {
		if _, ok := c.Take(from("presence", "unavailable", puppet)); !ok {
			return
		}
	}
}
