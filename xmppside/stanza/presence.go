package stanza

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"mellium.im/xmlstream"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// Type is the type attribute of a presence stanza (RFC 6121 §4.7.1).
type Type string

// The presence types. Available is the absent attribute.
const (
	Available    Type = ""
	Unavailable  Type = "unavailable"
	Subscribe    Type = "subscribe"
	Subscribed   Type = "subscribed"
	Unsubscribe  Type = "unsubscribe"
	Unsubscribed Type = "unsubscribed"
	Probe        Type = "probe"
	Error        Type = "error"
)

// Valid reports whether t is one of the RFC 6121 presence types.
func (t Type) Valid() bool {
	switch t {
	case Available, Unavailable, Subscribe, Subscribed, Unsubscribe, Unsubscribed, Probe, Error:
		return true
	}
	return false
}

// IsSubscription reports whether t is one of the four subscription types.
func (t Type) IsSubscription() bool {
	return t == Subscribe || t == Subscribed || t == Unsubscribe || t == Unsubscribed
}

// Errors returned by [DecodePresence] and noted in [Presence.Problems].
var (
	// ErrNotPresence: the element given to DecodePresence is not a presence.
	ErrNotPresence = errors.New("stanza: not a presence stanza")
	// ErrBadContent: a child held a value RFC 6121 or XEP-0319 does not
	// allow; the field keeps its default.
	ErrBadContent = errors.New("stanza: bad presence content")
)

// Presence is one presence stanza.
type Presence struct {
	Header
	// Type is the presence type; an unknown type attribute is kept here as
	// received so that callers can log and drop it.
	Type Type
	// Show is the <show/> of an available presence; unknown values are
	// ShowNone (RFC 6121 §4.7.2.1: treat as available).
	Show mapping.Show
	// Status is the <status/> without xml:lang, or else the first one.
	Status string
	// Priority is <priority/>, 0 when absent or invalid.
	Priority int8
	// IdleSince is XEP-0319 <idle since/>; zero when absent or invalid.
	IdleSince time.Time
	// ErrorType and ErrorCondition describe the <error/> of a type="error"
	// presence.
	ErrorType, ErrorCondition string
	// Problems joins every bad value met while decoding (each wrapping
	// ErrBadContent), for logging. Nil when the stanza was clean.
	Problems error
}

// XMPP returns the content of an available or unavailable presence in the
// mapping package's terms.
func (p *Presence) XMPP() mapping.XMPPPresence {
	return mapping.XMPPPresence{
		Unavailable: p.Type == Unavailable,
		Show:        p.Show,
		Status:      p.Status,
		Priority:    p.Priority,
		IdleSince:   p.IdleSince,
	}
}

// FromXMPP sets the content fields of p from x (type, show, status,
// priority, idle); the header is untouched.
func (p *Presence) FromXMPP(x mapping.XMPPPresence) {
	p.Type = Available
	if x.Unavailable {
		p.Type = Unavailable
	}
	p.Show, p.Status, p.Priority, p.IdleSince = x.Show, x.Status, x.Priority, x.IdleSince
}

// maxTextBytes bounds the text kept from one child element while decoding,
// whatever the status limit: Prosody bounds stanzas, but a decoder should
// not trust that.
const maxTextBytes = 64 << 10

// DecodePresence decodes the presence whose start element is start from r,
// which must be positioned just after start; it reads up to and including
// the matching end element. A status longer than maxStatus bytes is cut
// ([mapping.TruncateStatus]; 0 means no limit). Only a broken token stream
// returns an error; bad content is reported in Presence.Problems.
func DecodePresence(r xml.TokenReader, start xml.StartElement, maxStatus int) (Presence, error) {
	var p Presence
	if start.Name.Local != "presence" {
		return p, fmt.Errorf("%w: <%s>", ErrNotPresence, start.Name.Local)
	}
	p.Header = ParseHeader(start)
	p.Type = Type(p.Header.Type)
	var problems []error
	if !p.Type.Valid() {
		problems = append(problems, fmt.Errorf("%w: type %q", ErrBadContent, p.Header.Type))
	}
	ns := start.Name.Space
	var (
		haveStatus, statusHasLang bool
		haveShow, havePrio        bool
		text                      strings.Builder
		textCut                   bool
	)
	depth := 0
	var child xml.StartElement
	for {
		tok, err := r.Token()
		if err == io.EOF && tok == nil {
			return p, fmt.Errorf("stanza: presence: %w", io.ErrUnexpectedEOF)
		}
		if err != nil && err != io.EOF {
			return p, fmt.Errorf("stanza: presence: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 1 {
				child = t
				text.Reset()
				textCut = false
			} else if depth == 2 && child.Name.Local == "error" && child.Name.Space == ns && t.Name.Space == NSStanzaError && t.Name.Local != "text" && p.ErrorCondition == "" {
				p.ErrorCondition = t.Name.Local
			}
		case xml.CharData:
			if depth == 1 && !textCut {
				textCut = appendBounded(&text, t)
			}
		case xml.EndElement:
			if depth == 0 {
				p.Problems = errors.Join(problems...)
				if maxStatus > 0 || !validUTF8(p.Status) {
					p.Status = mapping.TruncateStatus(p.Status, maxStatus)
				}
				return p, nil
			}
			if depth == 1 {
				problems = p.child(child, ns, text.String(), &haveShow, &havePrio, &haveStatus, &statusHasLang, problems)
			}
			depth--
		}
		if err == io.EOF {
			return p, fmt.Errorf("stanza: presence: %w", io.ErrUnexpectedEOF)
		}
	}
}

// child records one complete child element of the presence.
func (p *Presence) child(el xml.StartElement, ns, text string, haveShow, havePrio, haveStatus, statusHasLang *bool, problems []error) []error {
	switch {
	case el.Name.Space == ns && el.Name.Local == "show":
		if *haveShow {
			return append(problems, fmt.Errorf("%w: more than one <show/>", ErrBadContent))
		}
		*haveShow = true
		s, err := mapping.ParseShow(strings.TrimSpace(text))
		p.Show = s
		if err != nil {
			problems = append(problems, fmt.Errorf("%w: %w", ErrBadContent, err))
		}
	case el.Name.Space == ns && el.Name.Local == "priority":
		if *havePrio {
			return append(problems, fmt.Errorf("%w: more than one <priority/>", ErrBadContent))
		}
		*havePrio = true
		v, err := mapping.ParsePriority(strings.TrimSpace(text))
		p.Priority = v
		if err != nil {
			problems = append(problems, fmt.Errorf("%w: %w", ErrBadContent, err))
		}
	case el.Name.Space == ns && el.Name.Local == "status":
		hasLang := false
		for _, a := range el.Attr {
			if a.Name.Local == "lang" && (a.Name.Space == NSXML || a.Name.Space == "xml") && a.Value != "" {
				hasLang = true
			}
		}
		// Prefer the status without xml:lang; otherwise keep the first.
		if !*haveStatus || (*statusHasLang && !hasLang) {
			p.Status = text
			*haveStatus, *statusHasLang = true, hasLang
		}
	case el.Name.Space == NSIdle && el.Name.Local == "idle":
		since := ""
		for _, a := range el.Attr {
			if a.Name.Space == "" && a.Name.Local == "since" {
				since = a.Value
			}
		}
		t, err := time.Parse(time.RFC3339Nano, since)
		if y := t.UTC().Year(); err == nil && (y < 1970 || y > 9999) {
			err = ErrBadContent // cannot be a real last interaction, nor be written back
		}
		if err != nil {
			return append(problems, fmt.Errorf("%w: idle since %q", ErrBadContent, truncateForLog(since)))
		}
		p.IdleSince = t.UTC()
	case el.Name.Space == ns && el.Name.Local == "error":
		for _, a := range el.Attr {
			if a.Name.Space == "" && a.Name.Local == "type" {
				p.ErrorType = a.Value
			}
		}
	}
	return problems
}

// appendBounded appends t to b up to maxTextBytes in all, cutting at a
// character boundary, so that a long text is cut rather than dropped (the
// decoder hands a text over in one chunk however long it is). It reports
// whether the text was cut: nothing after a cut belongs to it (no holes).
func appendBounded(b *strings.Builder, t []byte) (cut bool) {
	room := maxTextBytes - b.Len()
	if len(t) <= room {
		b.Write(t)
		return false
	}
	n := max(room, 0)
	for n > 0 && !utf8.RuneStart(t[n]) {
		n--
	}
	b.Write(t[:n])
	return true
}

func validUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

func truncateForLog(s string) string {
	if len(s) > 64 {
		return mapping.TruncateStatus(s, 64) + "…"
	}
	return s
}

// WriteXML encodes the presence to w (the mellium.im/xmlstream WriterTo
// interface). Empty fields are left out, as is a zero priority; show,
// priority and idle are written only for an available presence.
func (p *Presence) WriteXML(w xmlstream.TokenWriter) (int, error) {
	h := p.Header
	h.Name = "presence"
	h.Type = string(p.Type)
	start := h.Start()
	n := 0
	if err := w.EncodeToken(start); err != nil {
		return n, err
	}
	n++
	if p.Type == Available {
		if p.Show != mapping.ShowNone {
			k, err := writeText(w, "show", p.Show.String())
			n += k
			if err != nil {
				return n, err
			}
		}
	}
	if p.Status != "" {
		k, err := writeText(w, "status", p.Status)
		n += k
		if err != nil {
			return n, err
		}
	}
	if p.Type == Available && p.Priority != 0 {
		k, err := writeText(w, "priority", strconv.Itoa(int(p.Priority)))
		n += k
		if err != nil {
			return n, err
		}
	}
	if (p.Type == Available || p.Type == Unavailable) && !p.IdleSince.IsZero() {
		idle := xml.StartElement{
			Name: xml.Name{Space: NSIdle, Local: "idle"},
			Attr: []xml.Attr{{Name: xml.Name{Local: "since"}, Value: p.IdleSince.UTC().Format(time.RFC3339)}},
		}
		if err := w.EncodeToken(idle); err != nil {
			return n, err
		}
		if err := w.EncodeToken(idle.End()); err != nil {
			return n, err
		}
		n += 2
	}
	if err := w.EncodeToken(start.End()); err != nil {
		return n, err
	}
	return n + 1, nil
}

// TokenReader returns the presence as a token stream, for Session.Send.
func (p *Presence) TokenReader() xml.TokenReader {
	var buf tokenBuffer
	_, _ = p.WriteXML(&buf)
	return &buf
}

func writeText(w xmlstream.TokenWriter, name, text string) (int, error) {
	start := xml.StartElement{Name: xml.Name{Local: name}}
	if err := w.EncodeToken(start); err != nil {
		return 0, err
	}
	if err := w.EncodeToken(xml.CharData(text)); err != nil {
		return 1, err
	}
	if err := w.EncodeToken(start.End()); err != nil {
		return 2, err
	}
	return 3, nil
}

// tokenBuffer is a token writer that can be read back.
type tokenBuffer struct {
	toks []xml.Token
	i    int
}

func (b *tokenBuffer) EncodeToken(t xml.Token) error {
	b.toks = append(b.toks, t)
	return nil
}

func (b *tokenBuffer) Token() (xml.Token, error) {
	if b.i >= len(b.toks) {
		return nil, io.EOF
	}
	b.i++
	return b.toks[b.i-1], nil
}
