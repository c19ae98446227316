package xmppside

import (
	"bytes"
	"context"
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

const testDomain = "matrix.example.net"

// newTestComponent returns a component that is not connected, on a KV
// store of its own, reporting to a fake core.
func newTestComponent(t testing.TB) (*Component, *fakeObserver) {
	t.Helper()
	obs := &fakeObserver{}
	c, err := New(validConfig(), testNamespace(testDomain), mapping.NewTranslator(mapping.DefaultTable(), false), openTestStore(t), obs, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, obs
}

// feed runs the handler on one raw element and returns what it wrote.
func feed(t testing.TB, c *Component, raw string) string {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(`<stream xmlns='jabber:component:accept'>` + raw + `</stream>`))
	if _, err := d.Token(); err != nil {
		t.Fatal(err)
	}
	var start xml.StartElement
	for {
		tok, err := d.Token()
		if err != nil {
			return ""
		}
		if s, ok := tok.(xml.StartElement); ok {
			start = s
			break
		}
	}
	var out bytes.Buffer
	e := xml.NewEncoder(&out)
	c.handle(context.Background(), d, e, start)
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestSpoofedSendersRefused(t *testing.T) {
	c, obs := newTestComponent(t)
	puppet := puppetOf(t, c, bob)
	tests := []struct{ name, from string }{
		{"component domain", testDomain},
		{"a puppet", puppet},
		{"a subdomain", "x@sub." + testDomain},
		{"missing", ""},
		{"invalid", "a@@b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fromAttr := ""
			if tt.from != "" {
				fromAttr = ` from='` + tt.from + `'`
			}
			out := feed(t, c, `<iq type='get' id='s1' to='`+testDomain+`'`+fromAttr+`><ping xmlns='urn:xmpp:ping'/></iq>`)
			if !strings.Contains(out, `type="error"`) || !strings.Contains(out, "forbidden") || strings.Contains(out, `to=`) {
				t.Errorf("iq from %q: got %s, want a forbidden error without to", tt.from, out)
			}
			if out := feed(t, c, `<presence to='`+puppet+`'`+fromAttr+`><show>away</show></presence>`); out != "" {
				t.Errorf("presence from %q answered: %s", tt.from, out)
			}
			if out := feed(t, c, `<presence type='subscribe' to='`+puppet+`'`+fromAttr+`/>`); out != "" {
				t.Errorf("subscribe from %q answered: %s", tt.from, out)
			}
		})
	}
	if n := obs.reports(); n != 0 {
		t.Fatalf("spoofed stanzas made %d reports", n)
	}
}

func TestHandlerAddressing(t *testing.T) {
	c, obs := newTestComponent(t)
	puppet := puppetOf(t, c, bob)
	tests := []struct {
		name, raw string
		want      []string // substrings of the reply; nil means no reply
	}{
		{"iq outside our domain", `<iq type='get' id='a' from='u@x.org/r' to='other.example'><ping xmlns='urn:xmpp:ping'/></iq>`,
			[]string{`type="error"`, `from="` + testDomain + `"`, "bad-request"}},
		{"presence outside our domain ignored", `<presence from='u@x.org/r' to='bob@other.example'/>`, nil},
		{"iq to a non-puppet", `<iq type='get' id='b' from='u@x.org/r' to='nobody@` + testDomain + `'><ping xmlns='urn:xmpp:ping'/></iq>`,
			[]string{"item-not-found", `from="nobody@` + testDomain + `"`}},
		{"bounce while away ignored", `<presence type='error' from='u@x.org' to='` + puppet + `'><error type='wait'><remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>`, nil},
		{"iq error ignored", `<iq type='error' id='c' from='u@x.org/r' to='` + puppet + `'/>`, nil},
		{"iq of unknown type", `<iq type='bogus' id='d' from='u@x.org/r' to='` + puppet + `'/>`, []string{"bad-request"}},
		{"presence of unknown type ignored", `<presence type='bogus' from='u@x.org/r' to='` + puppet + `'/>`, nil},
		{"unknown top-level element ignored", `<foo from='u@x.org'/>`, nil},
		{"ping to puppet", `<iq type='get' id='e' from='u@x.org/r' to='` + puppet + `/res'><ping xmlns='urn:xmpp:ping'/></iq>`,
			[]string{`type="result"`, `from="` + puppet + `/res"`, `to="u@x.org/r"`, `id="e"`}},
		{"disco with node", `<iq type='get' id='f' from='u@x.org/r' to='` + testDomain + `'><query xmlns='http://jabber.org/protocol/disco#info' node='x'/></iq>`,
			[]string{"item-not-found"}},
		{"probe from a stranger", `<presence type='probe' from='u@x.org/r' to='` + puppet + `'/>`,
			[]string{`type="unsubscribed"`, `to="u@x.org"`, `from="` + puppet + `"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := feed(t, c, tt.raw)
			if tt.want == nil && out != "" {
				t.Fatalf("unexpected reply %s", out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("reply %s lacks %s", out, w)
				}
			}
		})
	}
	// Presence from someone who holds no subscription with the puppet is
	// nobody's business.
	feed(t, c, `<presence from='u@x.org/r' to='`+puppet+`'><show>dnd</show></presence>`)
	if ps := obs.presenceOf("u@x.org"); len(ps) != 0 {
		t.Fatalf("a stranger's presence was reported: %+v", ps)
	}
	// Once they ask for the puppet's presence, they are heard; but a
	// bare-JID unavailable from someone the puppet is not subscribed to
	// (Prosody's acknowledgement of a subscription request) is not news
	// about anybody.
	feed(t, c, `<presence type='subscribe' from='u@x.org' to='`+puppet+`'/>`)
	feed(t, c, `<presence type='unavailable' from='u@x.org' to='`+puppet+`'/>`)
	// Directed presence from a full JID is.
	feed(t, c, `<presence from='u@x.org/r' to='`+puppet+`'><show>dnd</show></presence>`)
	if ps := obs.presenceOf("u@x.org"); len(ps) != 1 || ps[0].State != mapping.StateBusy {
		t.Fatalf("reported %+v, want one busy", ps)
	}
}

func TestLastActiveSeconds(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		p       mapping.Presence
		updated time.Time
		want    int64
	}{
		{mapping.Presence{State: mapping.StateAvailable, CurrentlyActive: true}, now.Add(-time.Hour), 0},
		{mapping.Presence{State: mapping.StateAway, LastActive: now.Add(-90 * time.Second)}, now, 90},
		{mapping.Presence{State: mapping.StateOffline}, now.Add(-time.Minute), 60},
		{mapping.Presence{State: mapping.StateAway, LastActive: now.Add(time.Hour)}, now, 0},
	}
	for i, tt := range tests {
		if got := lastActiveSeconds(tt.p, tt.updated, now); got != tt.want {
			t.Errorf("%d: got %d, want %d", i, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Second}
	for i := 0; i < 10; i++ {
		d := b.next()
		if d > time.Second || d < 50*time.Millisecond {
			t.Fatalf("attempt %d: %v outside [min/2, max]", i, d)
		}
		if i > 5 && d < 500*time.Millisecond {
			t.Fatalf("attempt %d: %v, want capped near max", i, d)
		}
	}
	b.reset()
	if d := b.next(); d > 100*time.Millisecond {
		t.Fatalf("after reset: %v", d)
	}
}

// FuzzHandle: no element makes the stream handler panic.
func FuzzHandle(f *testing.F) {
	for _, s := range []string{
		`<presence from='a@b/c' to='bob\40example.org@matrix.example.net'><show>away</show></presence>`,
		`<presence type='subscribe' from='a@b' to='bob\40example.org@matrix.example.net'/>`,
		`<presence type='probe' from='a@b/c' to='bob\40example.org@matrix.example.net'/>`,
		`<iq type='set' id='1' from='a@b/c' to='matrix.example.net'><query xmlns='jabber:iq:gateway'><prompt>@x:y</prompt></query></iq>`,
		`<iq type='get' id='1' from='a@b/c' to='bob\40example.org@matrix.example.net'><query xmlns='jabber:iq:last'/></iq>`,
		`<message from='a@b/c' to='x@matrix.example.net'><body>x</body></message>`,
		`<presence type='unavailable' from='a@b/c' to='bob\40example.org@matrix.example.net'><status>Disconnected: Received SIGTERM</status></presence>`,
		`<presence type='unsubscribe' from='a@b' to='bob\40example.org@matrix.example.net'/>`,
		`<message type='chat' from='a@b/c' to='matrix.example.net'><body>optout</body></message>`,
		`<iq type='bogus' id='1' from='a@b/c' to='matrix.example.net'/>`,
	} {
		f.Add(s)
	}
	c, _ := newTestComponent(f)
	f.Fuzz(func(t *testing.T, raw string) {
		feed(t, c, raw)
	})
}

// puppetOf returns the puppet JID of id.
func puppetOf(t testing.TB, c *Component, id mapping.UserID) string {
	t.Helper()
	j, err := c.ns.PuppetJID(id)
	if err != nil {
		t.Fatal(err)
	}
	return string(j)
}
