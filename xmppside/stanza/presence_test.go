package stanza

import (
	"bytes"
	"encoding/xml"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// decode parses raw as the first element of a component stream.
func decode(t testing.TB, raw string, maxStatus int) (Presence, error) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(`<stream xmlns='jabber:component:accept'>` + raw + `</stream>`))
	if _, err := d.Token(); err != nil {
		t.Fatal(err)
	}
	for {
		tok, err := d.Token()
		if err != nil {
			return Presence{}, err
		}
		if start, ok := tok.(xml.StartElement); ok {
			return DecodePresence(d, start, maxStatus)
		}
	}
}

func TestDecodePresence(t *testing.T) {
	idle := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name     string
		raw      string
		want     Presence
		problems bool
	}{
		{
			name: "full",
			raw: `<presence from='alice@example.com/phone' to='bob\40example.org@matrix.example.net' id='p1'>` +
				`<show>away</show><status>lunch &amp; more</status><priority>5</priority>` +
				`<idle xmlns='urn:xmpp:idle:1' since='2024-01-02T03:04:05Z'/><x xmlns='vcard-temp:x:update'><photo/></x></presence>`,
			want: Presence{Header: Header{Name: "presence", ID: "p1", From: "alice@example.com/phone", To: `bob\40example.org@matrix.example.net`},
				Show: mapping.ShowAway, Status: "lunch & more", Priority: 5, IdleSince: idle},
		},
		{
			name: "unavailable",
			raw:  `<presence type='unavailable' from='a@b/c' to='x@y'><status>bye</status></presence>`,
			want: Presence{Header: Header{Name: "presence", Type: "unavailable", From: "a@b/c", To: "x@y"}, Type: Unavailable, Status: "bye"},
		},
		{
			name:     "unknown show is available",
			raw:      `<presence from='a@b'><show>sleeping</show></presence>`,
			want:     Presence{Header: Header{Name: "presence", From: "a@b"}},
			problems: true,
		},
		{
			name:     "priority out of range",
			raw:      `<presence><priority>300</priority></presence>`,
			want:     Presence{Header: Header{Name: "presence"}},
			problems: true,
		},
		{
			name: "negative priority with spaces",
			raw:  `<presence><priority> -1 </priority></presence>`,
			want: Presence{Header: Header{Name: "presence"}, Priority: -1},
		},
		{
			name:     "bad idle",
			raw:      `<presence><idle xmlns='urn:xmpp:idle:1' since='yesterday'/></presence>`,
			want:     Presence{Header: Header{Name: "presence"}},
			problems: true,
		},
		{
			name: "status without lang preferred",
			raw:  `<presence><status xml:lang='de'>Mittag</status><status>lunch</status><status>second</status></presence>`,
			want: Presence{Header: Header{Name: "presence"}, Status: "lunch"},
		},
		{
			name: "status truncated to limit",
			raw:  `<presence><status>ééééé</status></presence>`,
			want: Presence{Header: Header{Name: "presence"}, Status: "éé"},
		},
		{
			name: "error presence",
			raw:  `<presence type='error' from='a@b'><error type='wait'><remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>`,
			want: Presence{Header: Header{Name: "presence", Type: "error", From: "a@b"}, Type: Error, ErrorType: "wait", ErrorCondition: "remote-server-timeout"},
		},
		{
			name:     "unknown type kept",
			raw:      `<presence type='bogus'/>`,
			want:     Presence{Header: Header{Name: "presence", Type: "bogus"}, Type: "bogus"},
			problems: true,
		},
		{
			name: "show in a foreign namespace ignored",
			raw:  `<presence><show xmlns='urn:example'>dnd</show></presence>`,
			want: Presence{Header: Header{Name: "presence"}},
		},
		{
			name:     "two shows: first wins",
			raw:      `<presence><show>dnd</show><show>chat</show></presence>`,
			want:     Presence{Header: Header{Name: "presence"}, Show: mapping.ShowDND},
			problems: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decode(t, tt.raw, 4)
			if tt.name != "status truncated to limit" {
				got, err = decode(t, tt.raw, 1024)
			}
			if err != nil {
				t.Fatal(err)
			}
			if (got.Problems != nil) != tt.problems {
				t.Errorf("problems = %v, want %v", got.Problems, tt.problems)
			}
			if got.Problems != nil && !errors.Is(got.Problems, ErrBadContent) {
				t.Errorf("problems %v do not wrap ErrBadContent", got.Problems)
			}
			got.Problems = nil
			if !got.IdleSince.Equal(tt.want.IdleSince) {
				t.Errorf("idle = %v, want %v", got.IdleSince, tt.want.IdleSince)
			}
			got.IdleSince, tt.want.IdleSince = time.Time{}, time.Time{}
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeNotPresence(t *testing.T) {
	if _, err := decode(t, `<message/>`, 0); !errors.Is(err, ErrNotPresence) {
		t.Fatalf("err = %v", err)
	}
}

func TestDecodeTruncatedStream(t *testing.T) {
	d := xml.NewDecoder(strings.NewReader(`<presence><show>away</show>`))
	tok, _ := d.Token()
	if _, err := DecodePresence(d, tok.(xml.StartElement), 0); err == nil {
		t.Fatal("no error for a presence without end")
	}
}

func encode(t testing.TB, p *Presence) string {
	t.Helper()
	var b bytes.Buffer
	e := xml.NewEncoder(&b)
	if _, err := p.WriteXML(e); err != nil {
		t.Fatal(err)
	}
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestWriteXML(t *testing.T) {
	idle := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		p    Presence
		want string
	}{
		{"available", Presence{Header: Header{From: "p@c", To: "a@b", ID: "1"}, Show: mapping.ShowDND, Status: "busy <now>", Priority: -3, IdleSince: idle},
			`<presence id="1" from="p@c" to="a@b"><show>dnd</show><status>busy &lt;now&gt;</status><priority>-3</priority><idle xmlns="urn:xmpp:idle:1" since="2024-01-02T03:04:05Z"></idle></presence>`},
		{"plain", Presence{Header: Header{From: "p@c", To: "a@b"}},
			`<presence from="p@c" to="a@b"></presence>`},
		{"unavailable drops show and priority", Presence{Header: Header{From: "p@c"}, Type: Unavailable, Show: mapping.ShowAway, Priority: 4, Status: "gone"},
			`<presence type="unavailable" from="p@c"><status>gone</status></presence>`},
		{"subscribe", Presence{Header: Header{From: "p@c", To: "a@b"}, Type: Subscribe},
			`<presence type="subscribe" from="p@c" to="a@b"></presence>`},
		{"control characters replaced", Presence{Header: Header{From: "p@c"}, Status: "a\x00b"},
			`<presence from="p@c"><status>a` + "\uFFFD" + `b</status></presence>`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := encode(t, &tt.p); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestRoundTrip: what WriteXML writes, DecodePresence reads back.
func TestRoundTrip(t *testing.T) {
	p := Presence{Header: Header{From: "p@c", To: "a@b/r", ID: "x"}, Show: mapping.ShowXA, Status: "far & away", Priority: 127,
		IdleSince: time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)}
	got, err := decode(t, strings.Replace(encode(t, &p), "<presence ", "<presence xmlns='jabber:component:accept' ", 1), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.XMPP() != p.XMPP() || got.From != p.From || got.To != p.To || got.ID != p.ID || got.Problems != nil {
		t.Fatalf("round trip: got %+v, want %+v", got, p)
	}
}

func TestTokenReaderMatchesWriteXML(t *testing.T) {
	p := Presence{Header: Header{From: "p@c", To: "a@b"}, Show: mapping.ShowChat, Status: "hi"}
	var b bytes.Buffer
	e := xml.NewEncoder(&b)
	r := p.TokenReader()
	for {
		tok, err := r.Token()
		if err != nil {
			break
		}
		if err := e.EncodeToken(tok); err != nil {
			t.Fatal(err)
		}
	}
	e.Flush()
	if b.String() != encode(t, &p) {
		t.Fatalf("TokenReader %s != WriteXML %s", b.String(), encode(t, &p))
	}
}

func TestParseHeaderAndReply(t *testing.T) {
	start := xml.StartElement{Name: xml.Name{Space: NSComponent, Local: "iq"}, Attr: []xml.Attr{
		{Name: xml.Name{Local: "type"}, Value: "get"}, {Name: xml.Name{Local: "id"}, Value: "42"},
		{Name: xml.Name{Local: "from"}, Value: "a@b/c"}, {Name: xml.Name{Local: "to"}, Value: "x@y"},
		{Name: xml.Name{Space: NSXML, Local: "lang"}, Value: "en"},
	}}
	h := ParseHeader(start)
	if h != (Header{Name: "iq", ID: "42", Type: "get", From: "a@b/c", To: "x@y"}) {
		t.Fatalf("header %+v", h)
	}
	r := h.Reply("result")
	if r.From != "x@y" || r.To != "a@b/c" || r.ID != "42" || r.Type != "result" {
		t.Fatalf("reply %+v", r)
	}
	if !IsStanza(start.Name) || IsStanza(xml.Name{Local: "handshake"}) || IsStanza(xml.Name{Space: "urn:x", Local: "iq"}) {
		t.Fatal("IsStanza")
	}
}

func TestParseIQType(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want IQType
	}{
		{"get", IQGet}, {"set", IQSet}, {"result", IQResult},
		{"error", IQError}, {"", IQInvalid}, {"GET", IQInvalid}, {"bogus", IQInvalid},
	} {
		got := ParseIQType(tt.in)
		if got != tt.want {
			t.Errorf("ParseIQType(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if tt.want != IQInvalid && got.String() != tt.in {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
}

// TestLongStatusCut: a status longer than the decoder keeps of one element
// (64 KiB), whether it comes in one text chunk or several, is cut to the
// limit (at a character boundary: valid UTF-8), never dropped nor left
// with holes; the configured limit then applies.
func TestLongStatusCut(t *testing.T) {
	long := strings.Repeat("ab€", 30000) // 150,000 bytes; € is 3 bytes
	tests := []struct {
		name, status string
	}{
		{"one chunk", long},
		{"chunks", strings.Repeat("x", 60000) + "<![CDATA[" + strings.Repeat("y", 10000) + "]]>" + "zzz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := `<presence from='a@b/c'><status>` + tt.status + `</status></presence>`
			want := strings.ReplaceAll(strings.ReplaceAll(tt.status, "<![CDATA[", ""), "]]>", "")
			for _, limit := range []int{0, 1024} {
				p, err := decode(t, raw, limit)
				if err != nil {
					t.Fatal(err)
				}
				max := maxTextBytes
				if limit > 0 {
					max = limit
				}
				if len(p.Status) == 0 || len(p.Status) > max || len(p.Status) < max-3 {
					t.Errorf("limit %d: status of %d bytes, want about %d", limit, len(p.Status), max)
				}
				if !strings.HasPrefix(want, p.Status) {
					t.Errorf("limit %d: the status is not a prefix of the one sent", limit)
				}
				if !validUTF8(p.Status) {
					t.Errorf("limit %d: invalid UTF-8", limit)
				}
			}
		})
	}
}
