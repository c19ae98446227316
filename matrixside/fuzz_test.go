package matrixside

import (
	"encoding/json"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// FuzzTransaction feeds arbitrary bodies to the transaction parser and the
// event readers: nothing may panic, errors must carry an errcode, and
// every membership report must be addressed natively and validly.
func FuzzTransaction(f *testing.F) {
	for _, seed := range []string{
		`{"events":[]}`,
		`{"events":[{"type":"m.room.member","event_id":"$1","room_id":"!r:localhost","sender":"@bob:localhost","state_key":"@_xmpp_alice=40example.com:localhost","content":{"membership":"invite","is_direct":true}}]}`,
		`{"events":[{"type":"m.room.member","room_id":"!r:localhost","sender":"@_xmpp_alice=40example.com:localhost","state_key":"@_xmpp_alice=40example.com:localhost","content":{"membership":"leave"},"unsigned":{"prev_content":{"membership":"invite"}}}]}`,
		`{"ephemeral":[{"type":"m.presence","sender":"@bob:localhost","content":{"presence":"online","status_msg":"hi","last_active_ago":5,"currently_active":true}}]}`,
		`{"events":[{"type":"m.room.member","room_id":"!r:localhost","sender":"@_xmpp_BAD:localhost","state_key":"@bob:localhost","content":{"membership":"ban"}}]}`,
		`{"events":[{"type":"m.room.message","room_id":"!r:localhost","sender":"@bob:localhost","content":{"msgtype":"m.text","body":"!presence off"}}]}`,
		synapseTxn,
		`{nope`, `[]`, `{"events":{}}`, `null`,
	} {
		f.Add([]byte(seed))
	}
	s, err := New(testConfig("http://127.0.0.1:1"), testNS, mapping.NewTranslator(mapping.DefaultTable(), false), &bridge.Store{}, &fakeObserver{}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		txn, code, err := parseTransaction(body)
		if err != nil {
			if code.ErrCode != "M_NOT_JSON" && code.ErrCode != "M_BAD_JSON" {
				t.Fatalf("error %v with errcode %q", err, code.ErrCode)
			}
			return
		}
		for _, raw := range txn.Events {
			var evt event.Event
			if json.Unmarshal(raw, &evt) != nil {
				continue
			}
			_, _ = commandOf(&evt)
			m, ok := memberOf(&evt)
			if !ok {
				continue
			}
			if m.RoomID == "" || m.Target == "" || m.Sender == "" || m.Membership == "" {
				t.Fatalf("incomplete member event %+v", m)
			}
			for _, r := range s.membershipReports(m) {
				if _, err := mapping.NewUserID(string(r.User)); err != nil {
					t.Fatalf("report user %q: %v", r.User, err)
				}
				if _, err := mapping.NewBareJID(string(r.Ghost)); err != nil {
					t.Fatalf("report ghost %q: %v", r.Ghost, err)
				}
				if _, err := r.Membership.MarshalText(); err != nil || r.RoomID == "" {
					t.Fatalf("report %+v: %v", r, err)
				}
			}
		}
		for _, raw := range txn.ephemeral() {
			var evt event.Event
			if json.Unmarshal(raw, &evt) != nil || evt.Type.Type != event.EphemeralEventPresence.Type {
				continue
			}
			evt.Type.Class = event.EphemeralEventType
			_ = evt.Content.ParseRaw(evt.Type)
			if ms, ok := presenceOf(&evt); ok {
				_ = s.tr.FromMatrix(ms, time.Now())
			}
		}
	})
}
