package mapping

import (
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// Show is the XMPP <show/> value of an available presence (RFC 6121 §4.7.2.1).
type Show uint8

// The show values. ShowNone is an available presence without <show/>.
const (
	ShowNone Show = iota
	ShowChat
	ShowAway
	ShowXA
	ShowDND

	numShows = iota
)

var showNames = [numShows]string{"", "chat", "away", "xa", "dnd"}

// String returns the XML text of the show value ("" for ShowNone).
func (s Show) String() string {
	if int(s) < len(showNames) {
		return showNames[s]
	}
	return fmt.Sprintf("Show(%d)", uint8(s))
}

// ParseShow parses the text of a <show/> element. An unknown value returns
// ShowNone together with an error wrapping [ErrUnknownValue]: RFC 6121 says to
// treat it as plain available, so callers log the error and use the value.
func ParseShow(v string) (Show, error) {
	for i, n := range showNames {
		if n == v {
			return Show(i), nil
		}
	}
	return ShowNone, fmt.Errorf("%w: show %q", ErrUnknownValue, v)
}

// ParsePriority parses the text of a <priority/> element. Out-of-range or
// malformed values return 0 and an error; 0 is what RFC 6121 says to assume.
func ParsePriority(v string) (int8, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("%w: priority %q", ErrUnknownValue, v)
	}
	return int8(n), nil
}

// XMPPPresence is the content of one XMPP presence stanza of type available
// (absent) or unavailable. Subscription types are not presence and are
// handled elsewhere.
type XMPPPresence struct {
	Unavailable bool
	Show        Show
	Status      string
	Priority    int8
	// IdleSince is XEP-0319 <idle since=.../>; zero when absent.
	IdleSince time.Time
}

// TruncateStatus cuts s to at most maxBytes bytes without splitting a UTF-8
// sequence; invalid UTF-8 is replaced. maxBytes <= 0 means no limit.
func TruncateStatus(s string, maxBytes int) string {
	if !utf8.ValidString(s) {
		s = toValidUTF8(s)
	}
	if maxBytes <= 0 || len(s) <= maxBytes {
		return s
	}
	cut := maxBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

func toValidUTF8(s string) string {
	out := make([]rune, 0, len(s))
	for _, r := range s {
		out = append(out, r) // range yields U+FFFD for invalid bytes
	}
	return string(out)
}
