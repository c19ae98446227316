package xmppside

import (
	"testing"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
)

// TestOptOutCommand: an XMPP user turns the export of their presence off
// and on again with a chat message to the component domain; unknown text
// gets the help; messages to puppets are still refused.
func TestOptOutCommand(t *testing.T) {
	r := startRig(t, PolicyAsk)
	alice := r.login("alice", "laptop", 0, "", "")
	optouts := func(enabled bool) int {
		r.obs.mu.Lock()
		defer r.obs.mu.Unlock()
		n := 0
		for _, o := range r.obs.optouts {
			if o.User == "alice@localhost" && o.Enabled == enabled {
				n++
			}
		}
		return n
	}
	send := func(body string) {
		t.Helper()
		err := alice.Send(r.ctx(), `<message type="chat" to="`+r.srv.ComponentDomain+`"><body>`+body+`</body></message>`)
		if err != nil {
			t.Fatal(err)
		}
	}
	reply := func(contains string) {
		t.Helper()
		alice.Wait(t, waitLong, "reply containing "+contains, func(s prosodytest.Stanza) bool {
			return s.Name == "message" && s.From == r.srv.ComponentDomain && s.Type == "chat" && containsFold(s.Body, contains)
		})
	}

	send("  OptOut ")
	reply("no longer shown")
	if n := optouts(true); n != 1 {
		t.Fatalf("%d opt-out reports, want 1 before the reply", n)
	}

	send("optin")
	reply("shown to the Matrix users you approved")
	if n := optouts(false); n != 1 {
		t.Fatalf("%d opt-in reports, want 1 before the reply", n)
	}

	send("what is this")
	reply("optout - stop showing your presence")

	// A message to a puppet is not a command.
	if err := alice.Send(r.ctx(), `<message type="chat" to="`+r.puppet(bob)+`"><body>optout</body></message>`); err != nil {
		t.Fatal(err)
	}
	alice.Wait(t, waitLong, "error from the puppet", func(s prosodytest.Stanza) bool {
		return s.Name == "message" && s.Type == "error" && s.From == r.puppet(bob)
	})
	if n := optouts(true); n != 1 {
		t.Fatalf("a message to a puppet changed the opt-out (%d reports)", n)
	}

	// When the core cannot record the choice, the user is told so.
	r.obs.fail.Store(true)
	send("optout")
	reply("did not work")
	r.obs.fail.Store(false)
}

func containsFold(s, sub string) bool { return contains(lower(s), lower(sub)) }

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}
