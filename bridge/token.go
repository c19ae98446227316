package bridge

import (
	"errors"
	"fmt"
	"strings"
)

// ErrBadToken is returned by [DecodeToken] for a string [EncodeToken] never makes.
var ErrBadToken = errors.New("bridge: malformed subject token")

const upperHex = "0123456789ABCDEF"

func tokenSafe(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// EncodeToken turns any string into one NATS subject token that is also a
// valid JetStream KV key token: bytes in [A-Za-z0-9_-] stay, every other byte
// becomes =XX (upper case hex). The empty string becomes "=".
func EncodeToken(s string) string {
	if s == "" {
		return "="
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !tokenSafe(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if tokenSafe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(upperHex[c>>4])
		b.WriteByte(upperHex[c&0xf])
	}
	return b.String()
}

// DecodeToken is the inverse of [EncodeToken]. Only canonical encodings are
// accepted, so each string has exactly one token.
func DecodeToken(tok string) (string, error) {
	if tok == "=" {
		return "", nil
	}
	if tok == "" {
		return "", fmt.Errorf("%w: empty", ErrBadToken)
	}
	if strings.IndexByte(tok, '=') < 0 {
		for i := 0; i < len(tok); i++ {
			if !tokenSafe(tok[i]) {
				return "", fmt.Errorf("%w: byte %q", ErrBadToken, tok[i])
			}
		}
		return tok, nil
	}
	out := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case tokenSafe(c):
			out = append(out, c)
		case c == '=' && i+2 < len(tok):
			hi, lo := strings.IndexByte(upperHex, tok[i+1]), strings.IndexByte(upperHex, tok[i+2])
			v := byte(hi<<4 | lo)
			if hi < 0 || lo < 0 || tokenSafe(v) {
				return "", fmt.Errorf("%w: bad escape at %d", ErrBadToken, i)
			}
			out = append(out, v)
			i += 2
		default:
			return "", fmt.Errorf("%w: byte %q at %d", ErrBadToken, c, i)
		}
	}
	return string(out), nil
}
