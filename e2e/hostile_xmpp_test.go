package e2e

import (
	"context"
	"encoding/xml"
	"fmt"
	"strings"
	"testing"

	"github.com/presence-bridge/presence-bridge/bridge"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestStoryStrangerXMPPUser: an XMPP user who holds no subscription with
// anyone behaves as a spammer would, through the real bridge. Their
// presence to puppets never reaches the bus (no ghost, nothing stored);
// of 100 subscription requests to 100 Matrix users, no more than the
// per-address budget (xmpp.limits.subscribe_per_address, 10 at once by
// default) reach the core; and an echo bot gets a bounded number of
// answers to its commands.
func TestStoryStrangerXMPPUser(t *testing.T) {
	e := newEnv(t, options{})
	mallory := e.xmppUser("mallory")
	malloryJID := mallory.JID.Bare().String()
	bob := e.matrixUser("bob")
	puppet := e.puppet(bob.UserID)
	mark := e.tap.mark()

	// Presence directed at puppets, from a stranger.
	sendPresence(t, mallory, "", puppet, "chat", "look at me")
	for i := range 20 {
		sendPresence(t, mallory, "", e.puppet(fmt.Sprintf("@nobody%d:localhost", i)), "dnd", "spam")
	}
	pingServer(t, mallory)
	never(t, quiet, "a stranger's presence on the bus", func() string {
		if e.tap.has(mark, inPresence(mapping.NetworkXMPP, malloryJID, nil)) {
			return "the XMPP side reported it"
		}
		return ""
	})

	// A burst of subscription requests.
	const requests = 100
	for i := range requests {
		sendPresence(t, mallory, "subscribe", e.puppet(fmt.Sprintf("@target%d:localhost", i)), "", "")
	}
	pingServer(t, mallory)
	isRequest := func(ev tapped) bool {
		return ev.Dir == bridge.In && ev.Event.Kind == bridge.KindSubscription && ev.Event.User == malloryJID
	}
	e.tap.wait(mark, waitLatency, "the first requests reported", isRequest)
	never(t, quiet, "more requests than the budget", func() string {
		n := 0
		e.tap.mu.Lock()
		for _, ev := range e.tap.events[mark:] {
			if isRequest(ev) {
				n++
			}
		}
		e.tap.mu.Unlock()
		if n > 11 { // the burst, and one more if a token came back meanwhile
			return fmt.Sprintf("%d of %d requests reported", n, requests)
		}
		return ""
	})

	// An echo bot: every answer of the component goes back to it.
	domain := e.xmpp.ComponentDomain
	fromDomain := func(s prosodytest.Stanza) bool { return s.Name == "message" && s.From == domain && s.Type != "error" }
	send(t, mallory, `<message type='chat' to='`+domain+`'><body>hello</body></message>`)
	answers := 0
	for range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), quiet)
		got, err := mallory.Client.Wait(ctx, fromDomain)
		cancel()
		if err != nil {
			break // no answer within the quiet time: the bot was cut off
		}
		answers++
		var body strings.Builder
		_ = xml.EscapeText(&body, []byte(got.Body))
		send(t, mallory, `<message type='chat' to='`+domain+`'><body>`+body.String()+`</body></message>`)
	}
	if answers > 6 {
		t.Errorf("the component answered an echo bot %d times, want the budget (5, and one more if a token came back)", answers)
	}
	if answers == 0 {
		t.Error("the component never answered")
	}
}
