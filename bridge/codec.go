package bridge

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// The envelope is on the path of every presence event, so it has its own
// small JSON codec instead of reflection (see BENCHMARKS.md). It writes the
// same JSON as encoding/json would for Event, and reads anything
// encoding/json writes for it; FuzzCodecMatchesEncodingJSON holds it to that.

func appendEvent(b []byte, e *Event) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(e.V), 10)
	b = appendKeyString(b, `,"id":`, e.ID)
	b = appendKeyString(b, `,"kind":`, string(e.Kind))
	b = appendKeyString(b, `,"origin":`, e.Origin.String())
	b = appendKeyString(b, `,"user":`, e.User)
	if e.Peer != "" {
		b = appendKeyString(b, `,"peer":`, e.Peer)
	}
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"observed_at":"`...)
	b = e.ObservedAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if p := e.Presence; p != nil {
		b = appendKeyString(b, `,"presence":{"state":`, p.State.String())
		if p.Status != "" {
			b = appendKeyString(b, `,"status":`, p.Status)
		}
		if !p.LastActive.IsZero() {
			b = append(b, `,"last_active":"`...)
			b = p.LastActive.AppendFormat(b, time.RFC3339Nano)
			b = append(b, '"')
		}
		if p.CurrentlyActive {
			b = append(b, `,"currently_active":true`...)
		}
		if p.Priority != 0 {
			b = append(b, `,"priority":`...)
			b = strconv.AppendInt(b, int64(p.Priority), 10)
		}
		b = append(b, '}')
	}
	if e.OriginState != mapping.StateUnset {
		b = appendKeyString(b, `,"origin_state":`, e.OriginState.String())
	}
	if s := e.Subscription; s != nil {
		b = appendKeyString(b, `,"subscription":{"type":`, string(s.Type))
		if s.Status != "" {
			b = appendKeyString(b, `,"status":`, s.Status)
		}
		b = append(b, '}')
	}
	if m := e.Membership; m != nil {
		b = appendKeyString(b, `,"membership":{"membership":`, m.Membership)
		for _, f := range [...]struct{ k, v string }{{`,"room_id":`, m.RoomID}, {`,"member":`, m.Member}, {`,"sender":`, m.Sender}} {
			if f.v != "" {
				b = appendKeyString(b, f.k, f.v)
			}
		}
		if m.IsDirect {
			b = append(b, `,"is_direct":true`...)
		}
		b = append(b, '}')
	}
	if o := e.OptOut; o != nil {
		b = append(b, `,"optout":{"enabled":`...)
		b = strconv.AppendBool(b, o.Enabled)
		b = append(b, '}')
	}
	return append(b, '}')
}

func appendKeyString(b []byte, key, s string) []byte {
	return appendString(append(b, key...), s)
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string exactly as encoding/json does
// (HTML-safe escaping, invalid UTF-8 as U+FFFD, U+2028/2029 escaped).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// decoder reads the envelope. It accepts standard JSON with the envelope's
// keys in any order, ignores unknown keys (forward compatibility within a
// version) and null values, and rejects anything else.
type decoder struct {
	data []byte
	pos  int
}

func (d *decoder) errorf(format string, a ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrBadEvent, d.pos, fmt.Sprintf(format, a...))
}

func (d *decoder) ws() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *decoder) peek() byte {
	d.ws()
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

func (d *decoder) expect(c byte) error {
	if d.peek() != c {
		return d.errorf("want %q", c)
	}
	d.pos++
	return nil
}

// object calls field for each key; field must consume the value.
func (d *decoder) object(field func(key string) error) error {
	if err := d.expect('{'); err != nil {
		return err
	}
	if d.peek() == '}' {
		d.pos++
		return nil
	}
	for {
		key, err := d.str()
		if err != nil {
			return err
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		if d.literal("null") {
			// null leaves the field as it is, as encoding/json does.
		} else if err := field(key); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			return nil
		default:
			return d.errorf("want ',' or '}'")
		}
	}
}

func (d *decoder) literal(lit string) bool {
	d.ws()
	if len(d.data)-d.pos >= len(lit) && string(d.data[d.pos:d.pos+len(lit)]) == lit {
		d.pos += len(lit)
		return true
	}
	return false
}

func (d *decoder) boolean() (bool, error) {
	switch {
	case d.literal("true"):
		return true, nil
	case d.literal("false"):
		return false, nil
	}
	return false, d.errorf("want a boolean")
}

// number consumes a number by the JSON grammar:
// -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *decoder) number() (string, error) {
	d.ws()
	start := d.pos
	digits := func() int {
		n := 0
		for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
			d.pos++
			n++
		}
		return n
	}
	at := func(c byte) bool { return d.pos < len(d.data) && d.data[d.pos] == c }
	if at('-') {
		d.pos++
	}
	if at('0') {
		d.pos++
	} else if digits() == 0 {
		return "", d.errorf("want a number")
	}
	if at('.') {
		d.pos++
		if digits() == 0 {
			return "", d.errorf("bad number")
		}
	}
	if at('e') || at('E') {
		d.pos++
		if at('+') || at('-') {
			d.pos++
		}
		if digits() == 0 {
			return "", d.errorf("bad number")
		}
	}
	return string(d.data[start:d.pos]), nil
}

func (d *decoder) int(bits int) (int64, error) {
	s, err := d.number()
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(s, 10, bits)
	if err != nil {
		return 0, d.errorf("bad integer %q", s)
	}
	return n, nil
}

func (d *decoder) uint() (uint64, error) {
	s, err := d.number()
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, d.errorf("bad integer %q", s)
	}
	return n, nil
}

func (d *decoder) str() (string, error) {
	if err := d.expect('"'); err != nil {
		return "", err
	}
	start := d.pos
	// Fast path: no escapes, valid UTF-8.
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		if c == '"' {
			s := d.data[start:d.pos]
			d.pos++
			if utf8.Valid(s) {
				return string(s), nil
			}
			return string([]rune(string(s))), nil // invalid bytes become U+FFFD
		}
		if c == '\\' || c < 0x20 {
			break
		}
		d.pos++
	}
	buf := append([]byte(nil), d.data[start:d.pos]...)
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		switch {
		case c == '"':
			d.pos++
			if !utf8.Valid(buf) {
				return string([]rune(string(buf))), nil
			}
			return string(buf), nil
		case c < 0x20:
			return "", d.errorf("control character in string")
		case c != '\\':
			buf = append(buf, c)
			d.pos++
			continue
		}
		if d.pos+1 >= len(d.data) {
			return "", d.errorf("unterminated escape")
		}
		e := d.data[d.pos+1]
		d.pos += 2
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := d.hex4()
			if !ok {
				return "", d.errorf("bad \\u escape")
			}
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if d.pos+1 < len(d.data) && d.data[d.pos] == '\\' && d.data[d.pos+1] == 'u' {
					save := d.pos
					d.pos += 2
					if v, ok := d.hex4(); ok {
						r2 = v
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						buf = utf8.AppendRune(buf, dec)
						continue
					}
					d.pos = save
				}
				r = utf8.RuneError
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return "", d.errorf("bad escape")
		}
	}
	return "", d.errorf("unterminated string")
}

func (d *decoder) hex4() (rune, bool) {
	if d.pos+4 > len(d.data) {
		return 0, false
	}
	var r rune
	for _, c := range d.data[d.pos : d.pos+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	d.pos += 4
	return r, true
}

func (d *decoder) time() (time.Time, error) {
	s, err := d.str()
	if err != nil {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, d.errorf("bad time %q", s)
	}
	return t, nil
}

// skip consumes any JSON value.
func (d *decoder) skip(depth int) error {
	if depth > 32 {
		return d.errorf("nested too deep")
	}
	switch d.peek() {
	case '{':
		return d.object(func(string) error { return d.skip(depth + 1) })
	case '[':
		d.pos++
		if d.peek() == ']' {
			d.pos++
			return nil
		}
		for {
			if err := d.skip(depth + 1); err != nil {
				return err
			}
			switch d.peek() {
			case ',':
				d.pos++
			case ']':
				d.pos++
				return nil
			default:
				return d.errorf("want ',' or ']'")
			}
		}
	case '"':
		_, err := d.str()
		return err
	case 't', 'f':
		_, err := d.boolean()
		return err
	case 'n':
		if d.literal("null") {
			return nil
		}
		return d.errorf("bad literal")
	}
	_, err := d.number()
	return err
}

// unknown skips the value of an unknown key, but refuses a key that only
// differs in case from a known one: encoding/json would read it as that
// key, and the two readers must never disagree.
func (d *decoder) unknown(key string, known ...string) error {
	for _, k := range known {
		if strings.EqualFold(key, k) {
			return d.errorf("key %q: keys are lower case (%q)", key, k)
		}
	}
	return d.skip(0)
}

var (
	envelopeKeys     = []string{"v", "id", "kind", "origin", "user", "peer", "seq", "observed_at", "origin_state", "presence", "subscription", "membership", "optout"}
	presenceKeys     = []string{"state", "status", "last_active", "currently_active", "priority"}
	subscriptionKeys = []string{"type", "status"}
	membershipKeys   = []string{"membership", "room_id", "member", "sender", "is_direct"}
	optoutKeys       = []string{"enabled"}
)

func (d *decoder) text(u interface{ UnmarshalText([]byte) error }) error {
	s, err := d.str()
	if err != nil {
		return err
	}
	if err := u.UnmarshalText([]byte(s)); err != nil {
		return d.errorf("%v", err)
	}
	return nil
}

func decodeEnvelope(data []byte, e *Event) error {
	d := &decoder{data: data}
	err := d.object(func(key string) error {
		var err error
		switch key {
		case "v":
			var n int64
			n, err = d.int(64)
			e.V = int(n)
		case "id":
			e.ID, err = d.str()
		case "kind":
			var s string
			s, err = d.str()
			e.Kind = Kind(s)
		case "origin":
			err = d.text(&e.Origin)
		case "user":
			e.User, err = d.str()
		case "peer":
			e.Peer, err = d.str()
		case "seq":
			e.Seq, err = d.uint()
		case "observed_at":
			e.ObservedAt, err = d.time()
		case "origin_state":
			err = d.text(&e.OriginState)
		case "presence":
			if e.Presence == nil {
				e.Presence = &mapping.Presence{}
			}
			err = d.presence(e.Presence)
		case "subscription":
			if e.Subscription == nil {
				e.Subscription = &SubscriptionPayload{}
			}
			s := e.Subscription
			err = d.object(func(k string) error {
				var err error
				switch k {
				case "type":
					var t string
					t, err = d.str()
					s.Type = SubscriptionType(t)
				case "status":
					s.Status, err = d.str()
				default:
					err = d.unknown(k, subscriptionKeys...)
				}
				return err
			})
		case "membership":
			if e.Membership == nil {
				e.Membership = &MembershipPayload{}
			}
			m := e.Membership
			err = d.object(func(k string) error {
				var err error
				switch k {
				case "membership":
					m.Membership, err = d.str()
				case "room_id":
					m.RoomID, err = d.str()
				case "member":
					m.Member, err = d.str()
				case "sender":
					m.Sender, err = d.str()
				case "is_direct":
					m.IsDirect, err = d.boolean()
				default:
					err = d.unknown(k, membershipKeys...)
				}
				return err
			})
		case "optout":
			if e.OptOut == nil {
				e.OptOut = &OptOutPayload{}
			}
			o := e.OptOut
			err = d.object(func(k string) error {
				if k == "enabled" {
					var err error
					o.Enabled, err = d.boolean()
					return err
				}
				return d.unknown(k, optoutKeys...)
			})
		default:
			err = d.unknown(key, envelopeKeys...)
		}
		return err
	})
	if err != nil {
		return err
	}
	if d.ws(); d.pos != len(d.data) {
		return d.errorf("data after the event")
	}
	return nil
}

func (d *decoder) presence(p *mapping.Presence) error {
	return d.object(func(k string) error {
		var err error
		switch k {
		case "state":
			err = d.text(&p.State)
		case "status":
			p.Status, err = d.str()
		case "last_active":
			p.LastActive, err = d.time()
		case "currently_active":
			p.CurrentlyActive, err = d.boolean()
		case "priority":
			var n int64
			n, err = d.int(8)
			p.Priority = int8(n)
		default:
			err = d.unknown(k, presenceKeys...)
		}
		return err
	})
}
