package bridge

import (
	stdjson "encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	json "github.com/goccy/go-json"
)

// FuzzToken: every string encodes to one valid subject/KV token that
// decodes back to it, and DecodeToken accepts only canonical tokens.
func FuzzToken(f *testing.F) {
	for _, s := range []string{"", "alice@example.com", "@bob:example.org", "a.b*c>d e\tf", "=", "=3D", "日本"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok := EncodeToken(s)
		if tok == "" || strings.ContainsAny(tok, ".*> \t\r\n") {
			t.Fatalf("EncodeToken(%q) = %q: not a valid subject token", s, tok)
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; !tokenSafe(c) && c != '=' {
				t.Fatalf("EncodeToken(%q) = %q: byte %q not allowed in a KV key", s, tok, c)
			}
		}
		back, err := DecodeToken(tok)
		if err != nil || back != s {
			t.Fatalf("DecodeToken(EncodeToken(%q)) = %q, %v", s, back, err)
		}
		if dec, err := DecodeToken(s); err == nil && EncodeToken(dec) != s {
			t.Fatalf("DecodeToken accepted non-canonical %q", s)
		} else if err != nil && !errors.Is(err, ErrBadToken) {
			t.Fatalf("untyped error %v", err)
		}
	})
}

// FuzzDecodeEvent: hostile bytes on the bus never panic, and whatever
// decodes is valid and survives a re-encode.
func FuzzDecodeEvent(f *testing.F) {
	good, _ := EncodeEvent(sampleEvent())
	f.Add(good)
	f.Add([]byte(`{"v":1,"id":"x","kind":"subscription","origin":"xmpp","user":"a@b.c","peer":"@b:c.d","seq":1,"observed_at":"2026-01-01T00:00:00Z","subscription":{"type":"subscribe"}}`))
	f.Add([]byte(`{"v":2}`))
	f.Add([]byte(`{"v":1,"kind":"presence","origin":"irc","user":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := DecodeEvent(data)
		if err != nil {
			if !errors.Is(err, ErrBadEvent) && !errors.Is(err, ErrBadEvent) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		again, err := EncodeEvent(ev)
		if err != nil {
			t.Fatalf("decoded event does not re-encode: %v", err)
		}
		if _, err := DecodeEvent(again); err != nil {
			t.Fatalf("re-encoded event does not decode: %v", err)
		}
	})
}

func TestSubjectRoundTrip(t *testing.T) {
	subj := Subject(Out, 2, KindPresence, "@bob:example.org")
	if subj != "pb.v1.out.matrix.presence.=40bob=3Aexample=2Eorg" {
		t.Fatalf("subject %q", subj)
	}
	dir, net, kind, user, err := ParseSubject(subj)
	if err != nil || dir != Out || net.String() != "matrix" || kind != KindPresence || user != "@bob:example.org" {
		t.Fatalf("ParseSubject: %v %v %v %q %v", dir, net, kind, user, err)
	}
	for _, bad := range []string{"pb.v1.in.xmpp.presence", "pb.v2.in.xmpp.presence.a", "pb.v1.up.xmpp.presence.a", "pb.v1.in.irc.presence.a", "pb.v1.in.xmpp.nope.a", "pb.v1.in.xmpp.presence.a=2"} {
		if _, _, _, _, err := ParseSubject(bad); err == nil {
			t.Errorf("ParseSubject(%q) accepted", bad)
		}
	}
}

// FuzzEnvelopeMatchesEncodingJSON holds the envelope's JSON library
// (goccy/go-json, for speed on the event path) to encoding/json: any input
// both accept reads the same, and what one writes the other writes byte
// for byte.
func FuzzEnvelopeMatchesEncodingJSON(f *testing.F) {
	good, _ := EncodeEvent(sampleEvent())
	f.Add(good)
	f.Add([]byte(`{"v":1,"id":"x","kind":"membership","origin":"matrix","user":"@a:b.c","peer":"a@b.c","seq":1,"observed_at":"2026-01-01T00:00:00Z","membership":{"membership":"leave","room_id":"!r:b.c","before":{"state":"offline"}}}`))
	f.Add([]byte(`{"v":1,"kind":"presence","origin":"xmpp","user":"a@b.c","presence":{"state":"away","status":"\u00e9\ud83d\ude00","last_active":"2026-01-01T00:00:00.5+02:00","priority":-5}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var a, b Event
		errA := stdjson.Unmarshal(data, &a)
		errB := json.Unmarshal(data, &b)
		if errA != nil || errB != nil {
			return // which malformed inputs each refuses may differ; both refuse or both read the same
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("read differently:\nstd   %+v\ngo-json %+v", a, b)
		}
		outA, errA := stdjson.Marshal(&a)
		outB, errB := json.Marshal(&a)
		if (errA == nil) != (errB == nil) || string(outA) != string(outB) {
			t.Fatalf("written differently:\nstd   %s %v\ngo-json %s %v", outA, errA, outB, errB)
		}
	})
}
