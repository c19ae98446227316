package matrixside

import (
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// FuzzTransaction feeds arbitrary bodies to the transaction parser and the
// membership classification: nothing may panic, errors must carry an
// errcode, and every bus event made must be valid.
func FuzzTransaction(f *testing.F) {
	for _, seed := range []string{
		`{"events":[]}`,
		`{"events":[{"type":"m.room.member","event_id":"$1","room_id":"!r:localhost","sender":"@bob:localhost","state_key":"@_xmpp_alice=40example.com:localhost","content":{"membership":"invite","is_direct":true}}]}`,
		`{"events":[{"type":"m.room.member","room_id":"!r:localhost","sender":"@_xmpp_alice=40example.com:localhost","state_key":"@_xmpp_alice=40example.com:localhost","content":{"membership":"leave"},"unsigned":{"prev_content":{"membership":"invite"}}}]}`,
		`{"ephemeral":[{"type":"m.presence","sender":"@bob:localhost","content":{"presence":"online","status_msg":"hi","last_active_ago":5,"currently_active":true}}]}`,
		`{"events":[{"type":"m.room.member","room_id":"!r:localhost","sender":"@_xmpp_BAD:localhost","state_key":"@bob:localhost","content":{"membership":"ban"}}]}`,
		`{nope`, `[]`, `{"events":{}}`, `null`,
	} {
		f.Add([]byte(seed))
	}
	tr := mapping.NewTranslator(mapping.DefaultTable(), false)
	s, err := newSide(testConfig("http://127.0.0.1:1"), testNS, tr, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		txn, code, err := parseTransaction(body)
		if err != nil {
			if code != "M_NOT_JSON" && code != "M_BAD_JSON" {
				t.Fatalf("error %v with errcode %q", err, code)
			}
			return
		}
		for _, m := range txn.Members {
			if m.RoomID == "" || m.StateKey == "" || m.Sender == "" || m.Membership == "" {
				t.Fatalf("incomplete member event %+v", m)
			}
			for _, ev := range s.membershipEvents(m) {
				ev.V, ev.ID = bridge.SchemaVersion, "x"
				if err := ev.Validate(); err != nil {
					t.Fatalf("invalid event from %+v: %v", m, err)
				}
				if kind, _ := s.classify(ev.User); kind != kindMatrix {
					t.Fatalf("event user %q is not a Matrix user", ev.User)
				}
				if _, _, err := mapping.ParseBareJID(ev.Peer); err != nil {
					t.Fatalf("event peer %q is not a bare JID: %v", ev.Peer, err)
				}
			}
		}
		for _, p := range txn.Presence {
			if ms, ok := toMatrixState(p.Content); ok {
				_ = tr.FromMatrix(ms, time.Now())
			}
		}
	})
}
