package mapping

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Protocol limits on addresses.
const (
	// MaxMXIDLength is the Matrix limit on a user ID, in bytes.
	MaxMXIDLength = 255
	// MaxJIDPartLength is the RFC 7622 limit on each part of a JID, in bytes.
	MaxJIDPartLength = 1023
)

// Namespace says where the bridge's addresses live.
type Namespace struct {
	// GhostPrefix starts the localpart of every ghost, e.g. "_xmpp_".
	GhostPrefix string
	// HomeserverDomain is the Matrix server name of the ghosts, e.g. "example.org".
	HomeserverDomain string
	// ComponentDomain is the XMPP domain of the puppets, e.g. "matrix.example.net".
	ComponentDomain string
	// OwnServer says that HomeserverDomain belongs to the bridge alone
	// (the federation gateway's server name): no real user lives there, so
	// GhostPrefix may be empty.
	OwnServer bool
}

// Validate checks that the namespace can produce valid addresses.
func (n Namespace) Validate() error {
	var errs []error
	if n.GhostPrefix == "" && !n.OwnServer {
		errs = append(errs, fmt.Errorf("ghost prefix is empty: ghosts would collide with real users"))
	}
	for i := 0; i < len(n.GhostPrefix); i++ {
		if !isStrictLocalByte(n.GhostPrefix[i]) {
			errs = append(errs, fmt.Errorf("ghost prefix %q: byte %q is not allowed in a Matrix localpart", n.GhostPrefix, n.GhostPrefix[i]))
			break
		}
	}
	if err := validServerName(n.HomeserverDomain); err != nil {
		errs = append(errs, fmt.Errorf("homeserver domain: %w", err))
	}
	if err := validDomain(n.ComponentDomain); err != nil {
		errs = append(errs, fmt.Errorf("component domain: %w", err))
	}
	return joinErrs(errs)
}

// GhostMXID returns the Matrix user ID of the ghost of the bare JID
// local@domain, escaping the JID as the Matrix spec's "mapping from other
// character sets" appendix describes: "_" becomes "__", "A" becomes "_a", and
// any byte outside [a-z0-9.-/] becomes "=xx".
//
//	alice@example.com → @_xmpp_alice=40example.com:example.org
func (n Namespace) GhostMXID(jid BareJID) (UserID, error) {
	bareJID := string(jid)
	if _, _, err := ParseBareJID(bareJID); err != nil {
		return "", err
	}
	var b strings.Builder
	b.Grow(1 + len(n.GhostPrefix) + len(bareJID)*2 + 1 + len(n.HomeserverDomain))
	b.WriteByte('@')
	b.WriteString(n.GhostPrefix)
	for i := 0; i < len(bareJID); i++ {
		c := bareJID[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '-', c == '/':
			b.WriteByte(c)
		case c == '_':
			b.WriteString("__")
		case c >= 'A' && c <= 'Z':
			b.WriteByte('_')
			b.WriteByte(c + ('a' - 'A'))
		default:
			b.WriteByte('=')
			b.WriteByte(lowerHex[c>>4])
			b.WriteByte(lowerHex[c&0xf])
		}
	}
	b.WriteByte(':')
	b.WriteString(n.HomeserverDomain)
	if b.Len() > MaxMXIDLength {
		return "", fmt.Errorf("%w: ghost of %q would be %d bytes, Matrix allows %d", ErrTooLong, bareJID, b.Len(), MaxMXIDLength)
	}
	return UserID(b.String()), nil
}

// ParseGhostMXID is the inverse of [Namespace.GhostMXID]: it returns the bare
// JID a ghost stands for. A valid user ID outside the namespace returns
// [ErrNotGhost]; only the canonical escaping is accepted, so every JID has
// exactly one ghost.
func (n Namespace) ParseGhostMXID(id UserID) (BareJID, error) {
	mxid := string(id)
	local, server, err := ParseMXID(mxid)
	if err != nil {
		return "", err
	}
	if server != n.HomeserverDomain || !strings.HasPrefix(local, n.GhostPrefix) {
		return "", fmt.Errorf("%w: %q", ErrNotGhost, mxid)
	}
	enc := local[len(n.GhostPrefix):]
	buf := make([]byte, 0, len(enc))
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		switch {
		case c == '_':
			if i+1 >= len(enc) {
				return "", fmt.Errorf("%w: %q: dangling '_' escape", ErrNotGhost, mxid)
			}
			i++
			d := enc[i]
			switch {
			case d == '_':
				buf = append(buf, '_')
			case d >= 'a' && d <= 'z':
				buf = append(buf, d-('a'-'A'))
			default:
				return "", fmt.Errorf("%w: %q: bad '_' escape", ErrNotGhost, mxid)
			}
		case c == '=':
			if i+2 >= len(enc) {
				return "", fmt.Errorf("%w: %q: short '=' escape", ErrNotGhost, mxid)
			}
			hi, ok1 := unhexLower(enc[i+1])
			lo, ok2 := unhexLower(enc[i+2])
			v := hi<<4 | lo
			if !ok1 || !ok2 || needsNoEscape(v) {
				return "", fmt.Errorf("%w: %q: bad '=' escape", ErrNotGhost, mxid)
			}
			buf = append(buf, v)
			i += 2
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '-', c == '/':
			buf = append(buf, c)
		default:
			return "", fmt.Errorf("%w: %q: byte %q is never produced by the escaping", ErrNotGhost, mxid, c)
		}
	}
	jid := string(buf)
	if _, _, err := ParseBareJID(jid); err != nil {
		return "", fmt.Errorf("%w: %q decodes to an invalid JID: %w", ErrNotGhost, mxid, err)
	}
	return BareJID(jid), nil
}

// needsNoEscape reports whether GhostMXID writes byte c as itself, so an
// "=xx" escape of it is not canonical.
func needsNoEscape(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '/' || c == '_' || c >= 'A' && c <= 'Z'
}

// PuppetJID returns the bare JID of the puppet of a Matrix user: the user ID
// without its sigil, XEP-0106-escaped into the localpart of the component
// domain.
//
//	@bob:example.org → bob\40example.org@matrix.example.net
func (n Namespace) PuppetJID(id UserID) (BareJID, error) {
	mxid := string(id)
	local, server, err := ParseMXID(mxid)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.Grow(len(mxid)*2 + len(n.ComponentDomain))
	escape106(&b, local)
	b.WriteString(`\40`)
	escape106(&b, server)
	if b.Len() > MaxJIDPartLength {
		return "", fmt.Errorf("%w: puppet localpart for %q would be %d bytes", ErrTooLong, mxid, b.Len())
	}
	b.WriteByte('@')
	b.WriteString(n.ComponentDomain)
	return BareJID(b.String()), nil
}

// ParsePuppetJID is the inverse of [Namespace.PuppetJID]. A resource, if any,
// is ignored. A JID on another domain returns [ErrNotPuppet].
func (n Namespace) ParsePuppetJID(jid string) (UserID, error) {
	if i := strings.IndexByte(jid, '/'); i >= 0 {
		jid = jid[:i]
	}
	at := strings.LastIndexByte(jid, '@')
	if at < 0 || jid[at+1:] != n.ComponentDomain {
		return "", fmt.Errorf("%w: %q", ErrNotPuppet, jid)
	}
	raw, ok := unescape106(jid[:at])
	if !ok {
		return "", fmt.Errorf("%w: %q: bad XEP-0106 escape", ErrNotPuppet, jid)
	}
	sep := strings.LastIndexByte(raw, '@')
	if sep < 0 {
		return "", fmt.Errorf("%w: %q: no Matrix server in localpart", ErrNotPuppet, jid)
	}
	mxid := "@" + raw[:sep] + ":" + raw[sep+1:]
	if _, _, err := ParseMXID(mxid); err != nil {
		return "", fmt.Errorf("%w: %q: %w", ErrNotPuppet, jid, err)
	}
	if canon, err := n.PuppetJID(UserID(mxid)); err != nil || string(canon) != jid {
		return "", fmt.Errorf("%w: %q is not the canonical puppet of %s", ErrNotPuppet, jid, mxid)
	}
	return UserID(mxid), nil
}

// IsPuppetDomain reports whether a bare or full JID is on the component
// domain itself (no localpart), i.e. addresses the bridge, not a puppet.
func (n Namespace) IsPuppetDomain(jid string) bool {
	if i := strings.IndexByte(jid, '/'); i >= 0 {
		jid = jid[:i]
	}
	return jid == n.ComponentDomain
}

// ParseMXID splits a Matrix user ID into localpart and server name. It accepts
// the historical localpart grammar (printable ASCII but ':'), except upper case
// letters, which cannot survive an XMPP localpart (servers case-fold it).
func ParseMXID(mxid string) (local, server string, err error) {
	if len(mxid) > MaxMXIDLength {
		return "", "", fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidMXID, len(mxid), MaxMXIDLength)
	}
	if len(mxid) < 4 || mxid[0] != '@' {
		return "", "", fmt.Errorf("%w: %q: must look like @user:server", ErrInvalidMXID, mxid)
	}
	colon := strings.IndexByte(mxid, ':')
	if colon < 2 {
		return "", "", fmt.Errorf("%w: %q: must look like @user:server", ErrInvalidMXID, mxid)
	}
	local, server = mxid[1:colon], mxid[colon+1:]
	for i := 0; i < len(local); i++ {
		c := local[i]
		if c < 0x21 || c > 0x7e {
			return "", "", fmt.Errorf("%w: %q: byte %q not allowed in localpart", ErrInvalidMXID, mxid, c)
		}
		if c >= 'A' && c <= 'Z' {
			return "", "", fmt.Errorf("%w: %q: upper case localparts cannot be bridged", ErrInvalidMXID, mxid)
		}
	}
	if err := validServerName(server); err != nil {
		return "", "", fmt.Errorf("%w: %q: %w", ErrInvalidMXID, mxid, err)
	}
	return local, server, nil
}

// ParseBareJID splits a bare JID local@domain. It checks the RFC 7622 rules
// that matter to the bridge (lengths, forbidden localpart characters, valid
// UTF-8, no resource) and requires the case-folded form that servers produce,
// so that every user has one ghost. Full PRECIS checks are left to the XMPP
// library on the XMPP side.
func ParseBareJID(jid string) (local, domain string, err error) {
	at := strings.IndexByte(jid, '@')
	if at <= 0 {
		return "", "", fmt.Errorf("%w: %q: must look like user@domain", ErrInvalidJID, jid)
	}
	local, domain = jid[:at], jid[at+1:]
	if len(local) > MaxJIDPartLength {
		return "", "", fmt.Errorf("%w: localpart is %d bytes, at most %d", ErrInvalidJID, len(local), MaxJIDPartLength)
	}
	if !utf8.ValidString(local) {
		return "", "", fmt.Errorf("%w: %q: localpart is not UTF-8", ErrInvalidJID, jid)
	}
	for _, r := range local {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`"&'/:<>@`, r) || r == utf8.RuneError {
			return "", "", fmt.Errorf("%w: %q: %q not allowed in localpart", ErrInvalidJID, jid, r)
		}
	}
	if strings.ToLower(local) != local {
		return "", "", fmt.Errorf("%w: %q: localpart is not case-folded", ErrInvalidJID, jid)
	}
	if err := validDomain(domain); err != nil {
		return "", "", fmt.Errorf("%w: %q: %w", ErrInvalidJID, jid, err)
	}
	return local, domain, nil
}

// validDomain checks an XMPP domainpart: a lower case host name or IP literal.
func validDomain(d string) error {
	if d == "" {
		return fmt.Errorf("empty domain")
	}
	if len(d) > MaxJIDPartLength {
		return fmt.Errorf("domain is %d bytes, at most %d", len(d), MaxJIDPartLength)
	}
	if d[0] == '[' {
		return validIPv6Literal(d)
	}
	return validHostname(d)
}

// validServerName checks a Matrix server name: hostname or IP literal, with
// an optional port. Upper case is refused for the same reason as in ParseMXID.
func validServerName(s string) error {
	if s == "" {
		return fmt.Errorf("empty server name")
	}
	host, port := s, ""
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return fmt.Errorf("server name %q: unclosed '['", s)
		}
		host, port = s[:end+1], s[end+1:]
		if err := validIPv6Literal(host); err != nil {
			return err
		}
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i:]
		}
		if err := validHostname(host); err != nil {
			return err
		}
	}
	if port != "" {
		if port[0] != ':' || len(port) < 2 || len(port) > 6 {
			return fmt.Errorf("server name %q: bad port", s)
		}
		for i := 1; i < len(port); i++ {
			if port[i] < '0' || port[i] > '9' {
				return fmt.Errorf("server name %q: bad port", s)
			}
		}
	}
	return nil
}

func validHostname(h string) error {
	if h == "" || len(h) > 253 {
		return fmt.Errorf("host name %q: bad length", h)
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("host name %q: byte %q not allowed (lower case letters, digits, '-', '.')", h, c)
		}
	}
	if h[0] == '.' || h[len(h)-1] == '.' || strings.Contains(h, "..") {
		return fmt.Errorf("host name %q: empty label", h)
	}
	return nil
}

func validIPv6Literal(h string) error {
	if len(h) < 3 || h[0] != '[' || h[len(h)-1] != ']' || len(h) > 47 {
		return fmt.Errorf("IPv6 literal %q: malformed", h)
	}
	for i := 1; i < len(h)-1; i++ {
		c := h[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == ':' || c == '.') {
			return fmt.Errorf("IPv6 literal %q: byte %q not allowed", h, c)
		}
	}
	return nil
}

func isStrictLocalByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("._=-/+", c) >= 0
}

const lowerHex = "0123456789abcdef"

func unhexLower(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// xep0106 lists the characters XEP-0106 escapes and their codes.
var xep0106 = [256]string{' ': `\20`, '"': `\22`, '&': `\26`, '\'': `\27`, '/': `\2f`, ':': `\3a`, '<': `\3c`, '>': `\3e`, '@': `\40`, '\\': `\5c`}

func escape106(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		if e := xep0106[s[i]]; e != "" {
			b.WriteString(e)
		} else {
			b.WriteByte(s[i])
		}
	}
}

func unescape106(s string) (string, bool) {
	if strings.IndexByte(s, '\\') < 0 {
		return s, true
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			out = append(out, s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		hi, ok1 := unhexLower(s[i+1])
		lo, ok2 := unhexLower(s[i+2])
		v := hi<<4 | lo
		if !ok1 || !ok2 || xep0106[v] == "" {
			return "", false
		}
		out = append(out, v)
		i += 2
	}
	return string(out), true
}
