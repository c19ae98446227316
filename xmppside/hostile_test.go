package xmppside

import (
	"fmt"
	"strings"
	"testing"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestHostileStanzas: malformed and hostile stanzas from a real client are
// refused or answered with stanza errors, and the component stays connected
// and serving.
func TestHostileStanzas(t *testing.T) {
	r := startRig(t, PolicyAsk, func(c *Config) { c.MaxStatusBytes = 64 })
	alice := r.login("alice", "laptop", 0, "", "")
	puppet := r.puppet(bob)
	domain := r.srv.ComponentDomain
	ctx := r.ctx()
	send := func(raw string) {
		t.Helper()
		if err := alice.Send(ctx, raw); err != nil {
			t.Fatalf("sending %s: %v", raw, err)
		}
	}
	iqReply := func(id string) prosodytest.Stanza {
		t.Helper()
		return alice.Wait(t, waitLong, "reply to "+id, func(s prosodytest.Stanza) bool { return s.Name == "iq" && s.ID == id })
	}
	wantError := func(s prosodytest.Stanza, cond string) {
		t.Helper()
		if s.Type != "error" || !strings.Contains(s.Raw, "<"+cond) {
			t.Errorf("want error %s, got %s", cond, s.Raw)
		}
	}

	// Directed presence full of bad values, from someone who asked for the
	// puppet's presence: defaults are used, the status is cut, and it is
	// still reported.
	send(`<presence type='subscribe' to='` + puppet + `'/>`)
	r.waitSub(bob, "alice@localhost", sNonePI)
	long := strings.Repeat("é", 100)
	send(fmt.Sprintf(`<presence to='%s'><show>sleeping</show><priority>9999</priority><status>%s</status>`+
		`<idle xmlns='urn:xmpp:idle:1' since='not a date'/><a><b><c><d><e>deep</e></d></c></b></a></presence>`, puppet, long))
	waitFor(t, waitLong, "hostile presence reported with defaults", func() bool {
		p := r.obs.lastPresence("alice@localhost")
		return p.State == mapping.StateAvailable && p.Priority == 0 && len(p.Status) <= 64 && strings.HasPrefix(long, p.Status) && p.Status != ""
	})

	// Stanzas to JIDs that are no puppets.
	send(fmt.Sprintf(`<presence type='subscribe' to='nobody@%s'/>`, domain))
	s := alice.Wait(t, waitLong, "error for a non-puppet", func(s prosodytest.Stanza) bool { return s.Name == "presence" && s.From == "nobody@"+domain })
	wantError(s, "item-not-found")
	send(fmt.Sprintf(`<iq type='get' id='h1' to='bad\zz@%s'><ping xmlns='urn:xmpp:ping'/></iq>`, domain))
	wantError(iqReply("h1"), "")
	send(fmt.Sprintf(`<message to='%s' type='chat'><body>hello?</body></message>`, puppet))
	s = alice.Wait(t, waitLong, "message error", func(s prosodytest.Stanza) bool { return s.Name == "message" && s.From == puppet })
	wantError(s, "service-unavailable")

	// IQs: unknown payload, no payload, unknown type, bad gateway prompt,
	// last activity from a non-contact.
	send(fmt.Sprintf(`<iq type='get' id='h2' to='%s'><query xmlns='urn:example:unknown'/></iq>`, puppet))
	wantError(iqReply("h2"), "service-unavailable")
	send(fmt.Sprintf(`<iq type='set' id='h3' to='%s'/>`, domain))
	wantError(iqReply("h3"), "bad-request")
	send(fmt.Sprintf(`<iq type='set' id='h4' to='%s'><query xmlns='jabber:iq:gateway'><prompt>not a matrix id</prompt></query></iq>`, domain))
	wantError(iqReply("h4"), "not-acceptable")
	send(fmt.Sprintf(`<iq type='get' id='h5' to='%s'><query xmlns='jabber:iq:last'/></iq>`, puppet))
	wantError(iqReply("h5"), "forbidden")
	send(fmt.Sprintf(`<iq type='set' id='h6' to='%s'><query xmlns='jabber:iq:gateway'><prompt>%s</prompt></query></iq>`, domain, strings.Repeat("x", 5000)))
	wantError(iqReply("h6"), "not-acceptable")

	// Errors and results are never answered.
	send(fmt.Sprintf(`<presence type='error' to='%s'><error type='wait'><remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>`, puppet))
	send(fmt.Sprintf(`<iq type='result' id='h7' to='%s'/>`, domain))
	send(fmt.Sprintf(`<iq type='error' id='h8' to='%s'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>`, puppet))

	// Still connected and serving: ping, disco, gateway.
	r.ping(alice, domain)
	r.ping(alice, puppet)
	send(fmt.Sprintf(`<iq type='get' id='d1' to='%s'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`, domain))
	s = iqReply("d1")
	for _, want := range []string{`category="gateway"`, `type="matrix"`, `var="jabber:iq:gateway"`, `var="urn:xmpp:ping"`, `var="http://jabber.org/protocol/disco#info"`} {
		if !strings.Contains(s.Raw, want) {
			t.Errorf("domain disco#info lacks %s: %s", want, s.Raw)
		}
	}
	send(fmt.Sprintf(`<iq type='get' id='d2' to='%s'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`, puppet))
	if s = iqReply("d2"); !strings.Contains(s.Raw, `category="client"`) || s.From != puppet {
		t.Errorf("puppet disco#info: %s", s.Raw)
	}
	send(fmt.Sprintf(`<iq type='get' id='g1' to='%s'><query xmlns='jabber:iq:gateway'/></iq>`, domain))
	if s = iqReply("g1"); s.Type != "result" || !strings.Contains(s.Raw, "Matrix user ID</prompt>") {
		t.Errorf("gateway get: %s", s.Raw)
	}
	send(fmt.Sprintf(`<iq type='set' id='g2' to='%s'><query xmlns='jabber:iq:gateway'><prompt>@bob:example.org</prompt></query></iq>`, domain))
	if s = iqReply("g2"); s.Type != "result" || !strings.Contains(s.Raw, ">"+puppet+"</jid>") {
		t.Errorf("gateway set: %s", s.Raw)
	}
	if n := r.comp.connects.Load(); n != 1 {
		t.Errorf("the component reconnected %d times", n-1)
	}
	for _, st := range alice.Received() {
		if st.ID == "h7" || st.ID == "h8" {
			t.Errorf("an error or result was answered: %s", st.Raw)
		}
	}
}
