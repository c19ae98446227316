package mapping

import (
	"errors"
	"testing"
	"time"
)

// FuzzGhostRoundTrip: every JID the bridge accepts has a ghost that parses back
// to it, and every string that parses as a ghost is the canonical ghost of its JID.
func FuzzGhostRoundTrip(f *testing.F) {
	for _, s := range []string{"alice@example.com", "a_b@x.y", "zoë@example.com", "A@b.c", "=@x", "@_xmpp_a=40b:example.org"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if mxid, err := testNS.GhostMXID(BareJID(s)); err == nil {
			back, err := testNS.ParseGhostMXID(mxid)
			if err != nil || string(back) != s {
				t.Fatalf("GhostMXID(%q) = %q, parses back to %q, %v", s, mxid, back, err)
			}
		} else if !errors.Is(err, ErrInvalidJID) && !errors.Is(err, ErrTooLong) {
			t.Fatalf("GhostMXID(%q): untyped error %v", s, err)
		}
		if jid, err := testNS.ParseGhostMXID(UserID(s)); err == nil {
			again, err := testNS.GhostMXID(jid)
			if err != nil || string(again) != s {
				t.Fatalf("ParseGhostMXID(%q) = %q, whose ghost is %q, %v", s, jid, again, err)
			}
		}
	})
}

// FuzzPuppetRoundTrip is the same property for Matrix users and puppet JIDs.
func FuzzPuppetRoundTrip(f *testing.F) {
	for _, s := range []string{"@bob:example.org", "@a/b:[::1]:8448", `@back\slash:e.org`, `bob\40example.org@matrix.example.net`, "@x:y:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if jid, err := testNS.PuppetJID(UserID(s)); err == nil {
			back, err := testNS.ParsePuppetJID(string(jid))
			if err != nil || string(back) != s {
				t.Fatalf("PuppetJID(%q) = %q, parses back to %q, %v", s, jid, back, err)
			}
		} else if !errors.Is(err, ErrInvalidMXID) && !errors.Is(err, ErrTooLong) {
			t.Fatalf("PuppetJID(%q): untyped error %v", s, err)
		}
		if mxid, err := testNS.ParsePuppetJID(s); err == nil {
			again, err := testNS.PuppetJID(mxid)
			if err != nil || string(again) != trimResource(s) {
				t.Fatalf("ParsePuppetJID(%q) = %q, whose puppet is %q, %v", s, mxid, again, err)
			}
		}
	})
}

func trimResource(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i]
		}
	}
	return s
}

// FuzzTranslate: translation never panics, and an XMPP presence crossing to
// Matrix and back keeps its show and status.
func FuzzTranslate(f *testing.F) {
	f.Add(uint8(0), "", int8(0), int64(0), false, false)
	f.Add(uint8(4), "meeting", int8(-3), int64(600), true, true)
	f.Fuzz(func(t *testing.T, show uint8, status string, prio int8, idleSecs int64, unavailable, busy bool) {
		tr := NewTranslator(DefaultTable(), busy)
		in := XMPPPresence{Unavailable: unavailable, Show: Show(show % uint8(numShows)), Status: status, Priority: prio}
		if unavailable {
			in.Show = ShowNone
		}
		if idleSecs > 0 {
			in.IdleSince = now.Add(-time.Duration(idleSecs%1e6) * time.Second)
		}
		n := tr.FromXMPP(in)
		back := tr.ToXMPP(tr.FromMatrixEcho(tr.ToMatrix(n, now), now, n.State))
		if back.Show != in.Show || back.Unavailable != in.Unavailable || back.Status != in.Status {
			t.Fatalf("%+v came back as %+v", in, back)
		}
		_ = tr.FromMatrix(MatrixState{Presence: MatrixPresence(show), StatusMsg: status, HasLastActive: true, LastActiveAgo: time.Duration(idleSecs)}, now)
	})
}
