package stanza

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzDecodePresence: no input makes DecodePresence panic, every status it
// returns is valid UTF-8 within the limit, and what it decodes encodes and
// decodes again to the same content.
func FuzzDecodePresence(f *testing.F) {
	for _, s := range []string{
		`<presence from='a@b/c'><show>away</show><status>x</status><priority>1</priority></presence>`,
		`<presence type='unavailable'/>`,
		`<presence><idle xmlns='urn:xmpp:idle:1' since='2024-01-02T03:04:05.123+02:00'/></presence>`,
		`<presence type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>`,
		`<presence><status xml:lang='fr'>a</status><status>b</status></presence>`,
		`<presence><show>chat<b/>x</show></presence>`,
	} {
		f.Add(s)
	}
	const limit = 16
	f.Fuzz(func(t *testing.T, raw string) {
		d := xml.NewDecoder(strings.NewReader(`<stream xmlns='jabber:component:accept'>` + raw + `</stream>`))
		if _, err := d.Token(); err != nil {
			return
		}
		var start xml.StartElement
		for {
			tok, err := d.Token()
			if err != nil {
				return
			}
			if s, ok := tok.(xml.StartElement); ok {
				start = s
				break
			}
		}
		p, err := DecodePresence(d, start, limit)
		if err != nil {
			return
		}
		if !utf8.ValidString(p.Status) || len(p.Status) > limit {
			t.Fatalf("status %q: invalid or over the limit", p.Status)
		}
		if p.Type != Available && p.Type != Unavailable {
			return
		}
		var b bytes.Buffer
		e := xml.NewEncoder(&b)
		if _, err := p.WriteXML(e); err != nil {
			t.Fatal(err)
		}
		e.Flush()
		d2 := xml.NewDecoder(strings.NewReader(`<stream xmlns='jabber:component:accept'>` + b.String() + `</stream>`))
		d2.Token()
		tok, err := d2.Token()
		if err != nil {
			t.Fatalf("re-encoded %q: %v", b.String(), err)
		}
		q, err := DecodePresence(d2, tok.(xml.StartElement), limit)
		if err != nil {
			t.Fatalf("re-decoding %q: %v", b.String(), err)
		}
		// The encoder replaces characters XML cannot carry, so compare
		// after one round trip.
		if p.Type == Available && (q.Show != p.Show || q.Priority != p.Priority) || !q.IdleSince.Equal(p.IdleSince.Truncate(time.Second)) {
			t.Fatalf("round trip changed %+v into %+v", p, q)
		}
	})
}
