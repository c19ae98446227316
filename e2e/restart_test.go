package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// recoverTimeout bounds how long the bridge may take to notice that a
// server is back (reconnect backoff, retry gates).
const recoverTimeout = 30 * time.Second

// linked is alice (XMPP) and bob (Matrix) after the consent flow, each
// having seen the other's presence.
type linked struct {
	alice         *prosodytest.Client
	bob           *mxUser
	puppet, ghost string
	room          string
}

func (e *env) linkedPair() linked {
	e.t.Helper()
	l := linked{alice: e.xmppUser("alice"), bob: e.matrixUser("bob")}
	l.puppet, l.ghost = e.puppet(l.bob.UserID), e.ghost(l.alice.JID.Bare().String())
	sendPresence(e.t, l.alice, "", "", "", "alice-here")
	l.room = e.link(l.alice, l.bob)
	l.bob.waitPresence(flowTimeout, l.ghost, "alice linked", is("online", "alice-here"))
	l.bob.put("online", "bob-here")
	l.alice.Wait(e.t, waitLatency, "bob at alice", presenceFrom(l.puppet, withStatus("bob-here")))
	return l
}

func withStatus(status string) func(prosodytest.Stanza) bool {
	return func(s prosodytest.Stanza) bool { return s.Type == "" && s.Status == status }
}

func unavailable(s prosodytest.Stanza) bool { return s.Type == "unavailable" }

// flowsBothWays checks that a change on each side reaches the other.
func (e *env) flowsBothWays(l linked, tag string) {
	e.t.Helper()
	e.flows(l, tag, waitLatency, func(what string, took time.Duration) { within(e.t, what, took, sloLatency) })
}

// flowsBothWaysEventually is flowsBothWays without the latency target,
// for a cluster that may be electing leaders and handing a side over
// (seconds): the change must arrive, and how long it took is logged.
func (e *env) flowsBothWaysEventually(l linked, tag string, timeout time.Duration) {
	e.t.Helper()
	e.flows(l, tag, timeout, func(what string, took time.Duration) { e.t.Logf("%s: %v", what, took) })
}

func (e *env) flows(l linked, tag string, timeout time.Duration, took func(what string, d time.Duration)) {
	e.t.Helper()
	start := time.Now()
	sendPresence(e.t, l.alice, "", "", "away", "alice-"+tag)
	got := l.bob.waitPresence(timeout, l.ghost, "alice "+tag, is("unavailable", "alice-"+tag))
	took("XMPP→Matrix "+tag, got.At.Sub(start))

	start, am := time.Now(), markX(l.alice)
	l.bob.put("unavailable", "bob-"+tag)
	am.wait(e.t, timeout, "bob "+tag, presenceFrom(l.puppet, func(s prosodytest.Stanza) bool { return s.Show == "away" && s.Status == "bob-"+tag }))
	took("Matrix→XMPP "+tag, time.Since(start))
}

// TestStoryBridgeKilled: the bridge dies without a goodbye (SIGKILL) and is
// started again. Subscriptions are intact, the puppet's presence is
// announced again, presence flows both ways, and nobody is asked again.
func TestStoryBridgeKilled(t *testing.T) {
	e := newEnv(t, options{})
	l := e.linkedPair()
	invites := len(l.bob.invitesSeen())

	if _, inTime := e.bridge.signal(syscall.SIGKILL, stopTimeout); !inTime {
		t.Fatal("bridge did not die of SIGKILL")
	}
	am := markX(l.alice)
	e.startBridge()
	am.wait(t, recoverTimeout, "bob's presence announced again", presenceFrom(l.puppet, withStatus("bob-here")))
	if sub := rosterOf(t, l.alice)[l.puppet]; sub != "both" {
		t.Errorf("after the restart alice's roster has %s as %q, want both", l.puppet, sub)
	}
	e.flowsBothWays(l, "after-kill")

	// Everything above has crossed after the restart, so a repeated prompt
	// would have been sent by now.
	if err := l.bob.sync(0); err != nil {
		t.Fatal(err)
	}
	if got := l.bob.invitesSeen(); len(got) != invites {
		t.Errorf("bob was invited again after the restart: %v", got[invites:])
	}
	if got := am.since(subscriptionFrom(l.puppet, "subscribe")); len(got) > 0 {
		t.Errorf("alice was asked again after the restart: %s", got[0].Raw)
	}
}

// TestStoryProsodyRestart: Prosody restarts. The component reconnects by
// itself; alice's client logs in again as clients do, and presence flows
// again both ways without anyone acting on the bridge or re-subscribing.
func TestStoryProsodyRestart(t *testing.T) {
	e := newEnv(t, options{})
	l := e.linkedPair()

	e.xmpp.Restart(t)
	// A user's client usually comes back before the component: what it
	// misses meanwhile, the component's re-probe and re-announce repair.
	l.alice = e.xmppLogin("alice")
	am := markX(l.alice)
	sendPresence(t, l.alice, "", "", "", "alice-back")
	l.bob.waitPresence(recoverTimeout, l.ghost, "alice after Prosody restart", is("online", "alice-back"))
	am.wait(t, recoverTimeout, "bob after Prosody restart", presenceFrom(l.puppet, withStatus("bob-here")))
	e.flowsBothWays(l, "after-prosody-restart")
}

// TestStoryDendriteRestart: Dendrite goes away while alice keeps changing
// her presence; when it returns, bob sees her latest state, and his own
// changes reach alice again.
func TestStoryDendriteRestart(t *testing.T) {
	e := newEnv(t, options{})
	l := e.linkedPair()
	aliceJID := l.alice.JID.Bare().String()

	e.hs.Stop()
	mark := e.tap.mark()
	sendPresence(t, l.alice, "", "", "away", "while-down-1")
	sendPresence(t, l.alice, "", "", "dnd", "while-down-2")
	sendPresence(t, l.alice, "", "", "xa", "alice-final")
	e.tap.wait(mark, waitLatency, "alice's final state sent towards Matrix", outPresence(mapping.NetworkXMPP, aliceJID, statusIs("alice-final")))

	e.hs.Restart(t) // Dendrite is stopped already: this starts it
	back := time.Now()
	got := l.bob.waitPresence(recoverTimeout, l.ghost, "alice's latest state after Dendrite returned", is("unavailable", "alice-final"))
	t.Logf("alice's latest state at bob %v after Dendrite answered again", got.At.Sub(back).Round(time.Millisecond))
	for _, p := range l.bob.presenceOf(l.ghost) {
		if s := statusOf(p.Presence); s == "while-down-1" || s == "while-down-2" {
			t.Logf("note: intermediate state %q also reached Matrix (harmless, but not coalesced)", s)
		}
	}
	e.flowsBothWays(l, "after-dendrite-restart")
}

// TestStoryCleanShutdown: on SIGTERM the bridge says goodbye on both
// networks: XMPP contacts see the puppets unavailable, and Matrix users
// see the ghosts offline.
func TestStoryCleanShutdown(t *testing.T) {
	e := newEnv(t, options{})
	l := e.linkedPair()
	am := markX(l.alice)
	l.bob.skipPresence()

	begin := time.Now()
	exitErr, inTime := e.bridge.signal(syscall.SIGTERM, stopTimeout)
	if !inTime {
		t.Errorf("bridge did not exit within %v of SIGTERM", stopTimeout)
	} else if exitErr != nil {
		t.Errorf("bridge exited with %v after SIGTERM, want status 0", exitErr)
	}
	t.Logf("bridge stopped %v after SIGTERM", time.Since(begin).Round(time.Millisecond))

	am.wait(t, waitLatency, "bob's puppet unavailable at shutdown", presenceFrom(l.puppet, unavailable))
	l.bob.waitPresence(waitLatency, l.ghost, "alice's ghost offline at shutdown", func(p dendritetest.Presence) bool { return p.Presence == "offline" })
	// A clean shutdown is no trouble: nothing at WARN or ERROR about it.
	for _, line := range strings.Split(e.bridge.logTail(200), "\n") {
		if strings.Contains(line, "nats disconnected") || strings.Contains(line, "level=ERROR") {
			t.Errorf("clean shutdown logged: %s", line)
		}
	}
}

// TestStoryCleanRestart: the bridge stops cleanly (everyone sees the other
// side go offline) and starts again: without anyone acting, bob sees
// alice's ghost as she is and alice sees bob's puppet as he is. The
// bridge remembers what it showed (the ghosts offline at its shutdown),
// so it sets again what it took away, while a kill -9 (above) costs the
// homeserver nothing for ghosts that did not change.
func TestStoryCleanRestart(t *testing.T) {
	e := newEnv(t, options{})
	l := e.linkedPair()
	am := markX(l.alice)
	l.bob.skipPresence()
	if exitErr, inTime := e.bridge.signal(syscall.SIGTERM, stopTimeout); !inTime || exitErr != nil {
		t.Fatalf("bridge did not stop cleanly (%v, in time %v)", exitErr, inTime)
	}
	am.wait(t, waitLatency, "bob's puppet unavailable at shutdown", presenceFrom(l.puppet, unavailable))
	l.bob.waitPresence(waitLatency, l.ghost, "alice's ghost offline at shutdown", func(p dendritetest.Presence) bool { return p.Presence == "offline" })

	am = markX(l.alice)
	e.startBridge()
	l.bob.waitPresence(recoverTimeout, l.ghost, "alice's ghost back after the restart", is("online", "alice-here"))
	am.wait(t, recoverTimeout, "bob's puppet back after the restart", presenceFrom(l.puppet, withStatus("bob-here")))
	e.flowsBothWays(l, "after-clean-restart")
}
