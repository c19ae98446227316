package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// quiet is how long a story watches for something that must not cross:
// twice the latency promised for what must.
const quiet = 2 * sloLatency

func statusIs(s string) func(mapping.Presence) bool {
	return func(p mapping.Presence) bool { return p.Status == s }
}

// TestStoryPrivacy: presence reaches only those allowed to see it. An XMPP
// contact without an approved subscription sees nothing of bob's puppet; a
// Matrix user sharing no room with alice's ghost sees nothing of alice; a
// person who opted out (XMPP: the chat command "optout" to the component;
// Matrix: "!presence off" in a room the bridge sees) is shown offline once
// and then nothing.
func TestStoryPrivacy(t *testing.T) {
	e := newEnv(t, options{})
	alice, carol, dave := e.xmppUser("alice"), e.xmppUser("carol"), e.xmppUser("dave")
	bob, eve := e.matrixUser("bob"), e.matrixUser("eve")
	aliceJID := alice.JID.Bare().String()
	puppet, ghost := e.puppet(bob.UserID), e.ghost(aliceJID)

	for _, c := range []*prosodytest.Client{alice, carol, dave} {
		sendPresence(t, c, "", "", "", c.JID.Localpart()+"-here")
	}
	room := e.link(alice, bob)
	bob.waitPresence(flowTimeout, ghost, "alice linked", is("online", "alice-here"))
	// dave asks to see bob; bob is invited but never answers.
	sendPresence(t, dave, "subscribe", puppet, "", "")
	if inv := bob.waitInvite(flowTimeout); inv.Inviter != e.ghost(dave.JID.Bare().String()) {
		t.Fatalf("bob invited by %s, want dave's ghost", inv.Inviter)
	}
	if err := eve.sync(0); err != nil {
		t.Fatal(err)
	}

	t.Run("XMPPContactWithoutSubscription", func(t *testing.T) {
		bob.put("online", "bob-private-1")
		alice.Wait(t, waitLatency, "bob's presence at alice", presenceFrom(puppet, func(s prosodytest.Stanza) bool { return s.Status == "bob-private-1" }))
		for _, c := range []*prosodytest.Client{carol, dave} {
			pingServer(t, c) // whatever the component sent them has arrived by now
			for _, s := range received(c, 0, func(s prosodytest.Stanza) bool { return bare(s.From) == puppet }) {
				if s.Type == "" || strings.Contains(s.Raw, "bob-private") {
					t.Errorf("%s is not allowed to see bob but got %s", c.JID.Bare(), s.Raw)
				}
			}
		}
	})

	t.Run("MatrixUserSharingNoRoom", func(t *testing.T) {
		sendPresence(t, alice, "", "", "away", "alice-private-2")
		bob.waitPresence(waitLatency, ghost, "alice's change at bob", is("unavailable", "alice-private-2"))
		if err := eve.sync(0); err != nil {
			t.Fatal(err)
		}
		if seen := eve.presenceOf(ghost); len(seen) > 0 {
			t.Errorf("eve shares no room with alice's ghost but her /sync shows %v", seen)
		}
		// Dendrite's GET /presence/{user}/status ignores room sharing (see
		// dendritetest), so it is no privacy boundary the bridge could keep.
	})

	t.Run("OptOutXMPPUser", func(t *testing.T) {
		am := markX(alice)
		send(t, alice, `<message type='chat' to='`+e.xmpp.ComponentDomain+`'><body>optout</body></message>`)
		am.wait(t, waitLatency, "the component's answer to optout", func(s prosodytest.Stanza) bool {
			return s.Name == "message" && s.From == e.xmpp.ComponentDomain && s.Body != ""
		})
		bob.waitPresence(waitLatency, ghost, "alice offline after opting out", func(p dendritetest.Presence) bool { return p.Presence == "offline" })
		mark := e.tap.mark()
		sendPresence(t, alice, "", "", "chat", "alice-secret-3")
		e.tap.wait(mark, waitLatency, "alice's secret presence seen by the bridge", inPresence(mapping.NetworkXMPP, aliceJID, statusIs("alice-secret-3")))
		never(t, quiet, "opted-out alice's presence sent to Matrix", func() string {
			if e.tap.has(mark, outPresence(mapping.NetworkXMPP, aliceJID, statusIs("alice-secret-3"))) {
				return "the core published it"
			}
			return ""
		})
		quietMx(t, bob, sloLatency, ghost, "opted-out alice's presence at bob", func(p dendritetest.Presence) bool { return p.Presence != "offline" })
	})

	t.Run("OptOutMatrixUser", func(t *testing.T) {
		am := markX(alice)
		bob.say(room, "!presence off")
		am.wait(t, waitLatency, "bob unavailable after opting out", presenceFrom(puppet, func(s prosodytest.Stanza) bool { return s.Type == "unavailable" }))
		mark, am := e.tap.mark(), markX(alice)
		bob.put("online", "bob-secret-4")
		e.tap.wait(mark, waitLatency, "bob's secret presence seen by the bridge", inPresence(mapping.NetworkMatrix, bob.UserID, statusIs("bob-secret-4")))
		never(t, quiet, "opted-out bob's presence sent to XMPP", func() string {
			if e.tap.has(mark, outPresence(mapping.NetworkMatrix, bob.UserID, statusIs("bob-secret-4"))) {
				return "the core published it"
			}
			return ""
		})
		quietX(t, am, sloLatency, "opted-out bob's presence at alice", presenceFrom(puppet, nil))
	})
}

// TestStoryRevocation: either side can end the agreement. When bob leaves
// the room, alice's subscription ends and she sees his puppet go
// unavailable; when carol sends unsubscribed, dan sees her ghost go
// offline. Afterwards nothing flows either way.
func TestStoryRevocation(t *testing.T) {
	e := newEnv(t, options{})
	alice, carol := e.xmppUser("alice"), e.xmppUser("carol")
	bob, dan := e.matrixUser("bob"), e.matrixUser("dan")
	aliceGhost, carolGhost := e.ghost(alice.JID.Bare().String()), e.ghost(carol.JID.Bare().String())
	bobPuppet, danPuppet := e.puppet(bob.UserID), e.puppet(dan.UserID)

	sendPresence(t, alice, "", "", "", "alice-here")
	sendPresence(t, carol, "", "", "", "carol-here")
	bobRoom := e.link(alice, bob)
	e.link(carol, dan)
	bob.waitPresence(flowTimeout, aliceGhost, "alice linked", is("online", "alice-here"))
	dan.waitPresence(flowTimeout, carolGhost, "carol linked", is("online", "carol-here"))
	bob.put("online", "bob-here")
	dan.put("online", "dan-here")
	alice.Wait(t, waitLatency, "bob at alice", presenceFrom(bobPuppet, func(s prosodytest.Stanza) bool { return s.Status == "bob-here" }))
	carol.Wait(t, waitLatency, "dan at carol", presenceFrom(danPuppet, func(s prosodytest.Stanza) bool { return s.Status == "dan-here" }))

	t.Run("MatrixUserLeaves", func(t *testing.T) {
		am := markX(alice)
		ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
		defer cancel()
		if err := bob.Leave(ctx, bobRoom); err != nil {
			t.Fatal(err)
		}
		am.wait(t, waitLatency, "bob's puppet unavailable", presenceFrom(bobPuppet, func(s prosodytest.Stanza) bool { return s.Type == "unavailable" }))
		am.wait(t, waitLatency, "unsubscribed from bob's puppet", subscriptionFrom(bobPuppet, "unsubscribed"))
		poll(t, waitLatency, "alice's roster after revocation", func() error {
			if sub := rosterOf(t, alice)[bobPuppet]; sub == "both" || sub == "to" {
				return fmt.Errorf("alice still has %s as %q", bobPuppet, sub)
			}
			return nil
		})

		am = markX(alice)
		bob.put("unavailable", "bob-after-leave")
		quietX(t, am, quiet, "bob's presence after he left", presenceFrom(bobPuppet, nil))
	})

	t.Run("XMPPUserUnsubscribes", func(t *testing.T) {
		dan.skipPresence()
		sendPresence(t, carol, "unsubscribed", danPuppet, "", "")
		dan.waitPresence(waitLatency, carolGhost, "carol's ghost offline", func(p dendritetest.Presence) bool { return p.Presence == "offline" })

		cm := markX(carol)
		dan.put("unavailable", "dan-after-unsubscribed")
		quietX(t, cm, quiet, "dan's presence after carol revoked", presenceFrom(danPuppet, func(s prosodytest.Stanza) bool { return s.Type == "" }))
		sendPresence(t, carol, "", "", "away", "carol-after-unsubscribed")
		quietMx(t, dan, sloLatency, carolGhost, "carol's presence after she revoked", func(p dendritetest.Presence) bool { return p.Presence != "offline" })
		// dan no longer shares a room with the ghost, so his /sync would
		// not show it anyway: GET /presence (which ignores rooms) shows
		// whether the bridge still sets it.
		never(t, sloLatency, "carol's ghost after she revoked", func() string {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			p, err := dan.GetPresence(ctx, carolGhost)
			if err != nil {
				return err.Error()
			}
			if p.Presence != "offline" {
				return fmt.Sprintf("the ghost is %s %q", p.Presence, statusOf(p))
			}
			return ""
		})
	})
}
