package matrixside

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

func TestHandlerBadInput(t *testing.T) {
	hs := newFakeHS(t)
	s := newTestSide(t, testConfig(hs.URL), nil, &fakeObserver{})
	h := s.Handler()
	tests := []struct {
		name, method, target, token, body string
		status                            int
		errcode                           string
	}{
		{"not json", "PUT", "/_matrix/app/v1/transactions/1", testHS, "{nope", 400, "M_NOT_JSON"},
		{"not an object", "PUT", "/_matrix/app/v1/transactions/2", testHS, "[1]", 400, "M_BAD_JSON"},
		{"events not an array", "PUT", "/_matrix/app/v1/transactions/3", testHS, `{"events":{}}`, 400, "M_BAD_JSON"},
		{"unknown path", "GET", "/_matrix/app/v1/nothing/here", testHS, "", 404, "M_UNRECOGNIZED"},
		{"no txn id", "PUT", "/_matrix/app/v1/transactions/", testHS, "{}", 404, "M_UNRECOGNIZED"},
		{"wrong method", "GET", "/_matrix/app/v1/transactions/4", testHS, "", 405, "M_UNRECOGNIZED"},
		{"no token", "PUT", "/_matrix/app/v1/transactions/4", "", `{"events":[]}`, 403, "M_FORBIDDEN"},
		{"wrong token", "PUT", "/_matrix/app/v1/transactions/4", "wrong", `{"events":[]}`, 403, "M_FORBIDDEN"},
		{"as token instead", "PUT", "/_matrix/app/v1/transactions/4", testAS, `{"events":[]}`, 403, "M_FORBIDDEN"},
		{"wrong query token", "PUT", "/_matrix/app/v1/transactions/4?access_token=wrong", "", `{"events":[]}`, 403, "M_FORBIDDEN"},
		{"user outside namespace", "GET", "/_matrix/app/v1/users/@bob:localhost", testHS, "", 404, "M_NOT_FOUND"},
		{"undecodable ghost", "GET", "/_matrix/app/v1/users/@_xmpp_NOPE:localhost", testHS, "", 404, "M_NOT_FOUND"},
		{"room alias", "GET", "/_matrix/app/v1/rooms/%23a:localhost", testHS, "", 404, "M_NOT_FOUND"},
		{"ghost query", "GET", "/_matrix/app/v1/users/@_xmpp_alice=40example.com:localhost", testHS, "", 200, ""},
		{"legacy ghost query", "GET", "/users/@_xmpp_bob=40example.com:localhost?access_token=" + testHS, "", "", 200, ""},
		{"legacy path", "PUT", "/transactions/5", testHS, `{"events":[]}`, 200, ""},
		{"legacy path and query token", "PUT", "/transactions/6?access_token=" + testHS, "", `{"events":[]}`, 200, ""},
		{"ping", "POST", "/_matrix/app/v1/ping", testHS, `{}`, 200, ""},
		{"ping with query token", "POST", "/_matrix/app/v1/ping?access_token=" + testHS, "", `{}`, 200, ""},
		{"bad events skipped", "PUT", "/_matrix/app/v1/transactions/7", testHS,
			`{"events":[1,null,{"type":"m.room.member"},{"type":"m.room.member","state_key":"@_xmpp_x:localhost","content":"x"},` +
				`{"type":"m.room.member","room_id":"!r:localhost","sender":"@_xmpp_BAD:localhost","state_key":"@bob:localhost","content":{"membership":"invite"}},` +
				`{"type":"m.room.member","room_id":"!r:localhost","sender":"@bob:localhost","state_key":"@_xmpp_a=40b.c:localhost","content":{"membership":5}},` +
				`{"type":"m.room.message","room_id":"!r:localhost","sender":"@bob:localhost","content":{"body":"help"}}],` +
				`"ephemeral":[{"type":"m.presence","sender":"@bob:localhost","content":{"presence":"sleeping"}},{"type":"m.typing"},7]}`, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := doAS(t, h, tt.method, tt.target, tt.token, tt.body)
			if status != tt.status || (tt.errcode != "" && body["errcode"] != tt.errcode) {
				t.Fatalf("%s %s: %d %v, want %d %s", tt.method, tt.target, status, body, tt.status, tt.errcode)
			}
		})
	}
}

func inviteTxn(ghost, eventID string) string {
	return `{"events":[{"type":"m.room.member","event_id":"` + eventID + `","room_id":"!r:localhost","sender":"@bob:localhost","state_key":"` + ghost + `","content":{"membership":"invite","is_direct":true}}]}`
}

// TestTransactionsDeduplicatedAcrossRestart: a transaction id seen before
// is acknowledged without being processed again, also by a new side on the
// same store (a restarted bridge), once the id was written behind.
func TestTransactionsDeduplicatedAcrossRestart(t *testing.T) {
	store := openTestStore(t, "")
	hs := newFakeHS(t)
	cfg := testConfig(hs.URL)
	cfg.PresenceSource = SourceEphemeral
	obs := &fakeObserver{}
	ghost := ghostOf(t, "alice@example.com")
	s := newTestSide(t, cfg, store, obs)
	stop := runSide(t, s, freeListener(t))
	for range 2 {
		if status, body := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/t1", testHS, inviteTxn(ghost, "$e1")); status != 200 {
			t.Fatalf("txn: %d %v", status, body)
		}
	}
	r, ok := obs.findMembership(func(bridge.MatrixMembership) bool { return true })
	if !ok || r.User != "@bob:localhost" || r.Ghost != "alice@example.com" || r.Membership != bridge.MembershipInvite ||
		!r.GhostChanged || r.BySelf || !r.IsDirect || r.RoomID != "!r:localhost" || r.ID == "" {
		t.Fatalf("report %+v", r)
	}
	waitFor(t, 5*time.Second, "t1 written behind", func() bool {
		_, _, err := store.Txns.Get(t.Context(), txnKey("t1"))
		return err == nil
	})
	stop()

	// A new side (a restarted bridge) on the same store.
	s2 := newTestSide(t, cfg, store, obs)
	runSide(t, s2, freeListener(t))
	if status, _ := doAS(t, s2.Handler(), "PUT", "/_matrix/app/v1/transactions/t1", testHS, inviteTxn(ghost, "$e2")); status != 200 {
		t.Fatal(status)
	}
	if status, _ := doAS(t, s2.Handler(), "PUT", "/_matrix/app/v1/transactions/t2", testHS, inviteTxn(ghost, "$e3")); status != 200 {
		t.Fatal(status)
	}
	if n := obs.countMemberships(func(bridge.MatrixMembership) bool { return true }); n != 2 {
		t.Fatalf("%d membership reports, want 2 (t1 once, t2 once)", n)
	}
}

// TestDurableReportFailureRetried: when the core cannot record a
// membership, the transaction is answered 500 and processed when the
// homeserver sends it again.
func TestDurableReportFailureRetried(t *testing.T) {
	hs := newFakeHS(t)
	obs := &fakeObserver{}
	s := newTestSide(t, testConfig(hs.URL), nil, obs)
	ghost := ghostOf(t, "alice@example.com")
	obs.setFail(errors.New("core away"))
	if status, _ := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/f1", testHS, inviteTxn(ghost, "$e1")); status != 500 {
		t.Fatalf("failed report answered %d, want 500", status)
	}
	obs.setFail(nil)
	if status, _ := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/f1", testHS, inviteTxn(ghost, "$e1")); status != 200 {
		t.Fatalf("retry answered %d", status)
	}
	if n := obs.countMemberships(func(bridge.MatrixMembership) bool { return true }); n != 1 {
		t.Fatalf("%d reports, want 1", n)
	}
}

func presenceJSON(sender, p, status string, ago int) string {
	return `{"type":"m.presence","sender":"` + sender + `","content":{"presence":"` + p + `","status_msg":"` + status + `","last_active_ago":` + strconv.Itoa(ago) + `}}`
}

// TestEphemeralPresence: MSC2409 m.presence in a transaction reaches the
// core once per change; ghosts and the bot never do.
func TestEphemeralPresence(t *testing.T) {
	hs := newFakeHS(t)
	obs := &fakeObserver{}
	s := newTestSide(t, testConfig(hs.URL), nil, obs)
	ghost := ghostOf(t, "alice@example.com")
	txn := `{"events":[],"de.sorunome.msc2409.ephemeral":[` +
		presenceJSON(ghost, "online", "echo", 0) + "," +
		presenceJSON("@presencebot:localhost", "offline", "", 0) + "," +
		presenceJSON("@bob:localhost", "unavailable", "lunch", 60000) + "]}"
	if status, body := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/e1?access_token="+testHS, "", txn); status != 200 {
		t.Fatalf("%d %v", status, body)
	}
	// The same presence again (last_active_ago a little later) is no change.
	txn2 := `{"events":[],"ephemeral":[` + presenceJSON("@bob:localhost", "unavailable", "lunch", 61000) + "," +
		`{"type":"m.presence","sender":"@carol:localhost","content":{"presence":"online"}}]}`
	if status, _ := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/e2", testHS, txn2); status != 200 {
		t.Fatal(status)
	}
	bob := obs.presenceOfUser("@bob:localhost")
	if len(bob) != 1 || bob[0].State != mapping.StateAway || bob[0].Status != "lunch" || bob[0].LastActive.IsZero() {
		t.Fatalf("bob: %+v", bob)
	}
	if since := time.Since(bob[0].LastActive); since < 59*time.Second || since > 70*time.Second {
		t.Errorf("bob last active %v ago, want about 60s", since)
	}
	carol := obs.presenceOfUser("@carol:localhost")
	if len(carol) != 1 || carol[0].State != mapping.StateAvailable || !carol[0].LastActive.IsZero() {
		t.Errorf("carol: %+v, want available with no last activity (none was sent)", carol)
	}
	if n := obs.presenceCount(); n != 2 {
		t.Fatalf("%d presence reports, want bob and carol once each: %+v", n, obs.presence)
	}
	if !s.ephemeralSeen.Load() || !s.stopReading() {
		t.Error("ephemeral presence seen but sync/poll would continue in auto mode")
	}
}

// TestEphemeralUnderBothKeysOnce: a homeserver that sends the ephemeral
// events under both keys (the registration asks for both) sends them
// twice; they are processed once, in order.
func TestEphemeralUnderBothKeysOnce(t *testing.T) {
	hs := newFakeHS(t)
	obs := &fakeObserver{}
	s := newTestSide(t, testConfig(hs.URL), nil, obs)
	list := `[` + presenceJSON("@bob:localhost", "online", "s1", 0) + "," + presenceJSON("@bob:localhost", "unavailable", "s2", 0) + `]`
	txn := `{"events":[],"ephemeral":` + list + `,"de.sorunome.msc2409.ephemeral":` + list + `}`
	if status, body := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/b1", testHS, txn); status != 200 {
		t.Fatalf("%d %v", status, body)
	}
	var got []string
	for _, p := range obs.presenceOfUser("@bob:localhost") {
		got = append(got, p.Status)
	}
	if strings.Join(got, ",") != "s1,s2" {
		t.Fatalf("bob's presence arrived as %q, want s1,s2", got)
	}
}

// synapseTxn is a transaction shaped as Synapse sends it to an
// appservice with receive_ephemeral and MSC3202 on: member events with
// unsigned data, MSC2409 presence, typing and receipts under both keys,
// to-device events, device lists and key counts under stable and unstable
// names, and fields the bridge does not know.
const synapseTxn = `{
  "events": [
    {"type": "m.room.create", "room_id": "!dm:localhost", "sender": "@bob:localhost", "state_key": "", "event_id": "$create",
     "origin_server_ts": 1700000000000, "content": {"room_version": "10", "creator": "@bob:localhost"}, "unsigned": {"age": 120}},
    {"type": "m.room.member", "room_id": "!dm:localhost", "sender": "@bob:localhost", "state_key": "@_xmpp_alice=40example.com:localhost",
     "event_id": "$invite", "origin_server_ts": 1700000000100,
     "content": {"membership": "invite", "is_direct": true, "displayname": "alice@example.com"},
     "unsigned": {"age": 100, "invite_room_state": [{"type": "m.room.name", "sender": "@bob:localhost", "state_key": "", "content": {"name": "DM"}}]}},
    {"type": "m.room.message", "room_id": "!dm:localhost", "sender": "@bob:localhost", "event_id": "$msg",
     "origin_server_ts": 1700000000200, "content": {"msgtype": "m.text", "body": "hello"}, "unsigned": {"age": 80, "transaction_id": "m1"}}
  ],
  "ephemeral": [
    {"type": "m.presence", "sender": "@bob:localhost", "content": {"presence": "online", "status_msg": "at work", "last_active_ago": 1200, "currently_active": true}},
    {"type": "m.typing", "room_id": "!dm:localhost", "content": {"user_ids": ["@bob:localhost"]}},
    {"type": "m.receipt", "room_id": "!dm:localhost", "content": {"$msg": {"m.read": {"@bob:localhost": {"ts": 1700000000300}}}}},
    {"type": "m.presence", "sender": "@carol:localhost", "content": {"presence": "unavailable", "last_active_ago": 600000}}
  ],
  "de.sorunome.msc2409.ephemeral": [
    {"type": "m.presence", "sender": "@bob:localhost", "content": {"presence": "online", "status_msg": "at work", "last_active_ago": 1200, "currently_active": true}},
    {"type": "m.typing", "room_id": "!dm:localhost", "content": {"user_ids": ["@bob:localhost"]}},
    {"type": "m.receipt", "room_id": "!dm:localhost", "content": {"$msg": {"m.read": {"@bob:localhost": {"ts": 1700000000300}}}}},
    {"type": "m.presence", "sender": "@carol:localhost", "content": {"presence": "unavailable", "last_active_ago": 600000}}
  ],
  "to_device": [
    {"type": "m.room_key_request", "sender": "@bob:localhost", "to_user_id": "@presencebot:localhost", "to_device_id": "BOTDEV",
     "content": {"action": "request_cancellation", "request_id": "r1", "requesting_device_id": "BOBDEV"}}
  ],
  "de.sorunome.msc2409.to_device": [
    {"type": "m.room_key_request", "sender": "@bob:localhost", "to_user_id": "@presencebot:localhost", "to_device_id": "BOTDEV",
     "content": {"action": "request_cancellation", "request_id": "r1", "requesting_device_id": "BOBDEV"}}
  ],
  "device_lists": {"changed": ["@bob:localhost"], "left": []},
  "org.matrix.msc3202.device_lists": {"changed": ["@bob:localhost"], "left": []},
  "device_one_time_keys_count": {"@presencebot:localhost": {"BOTDEV": {"signed_curve25519": 50}}},
  "org.matrix.msc3202.device_one_time_keys_count": {"@presencebot:localhost": {"BOTDEV": {"signed_curve25519": 50}}},
  "device_unused_fallback_key_types": {"@presencebot:localhost": {"BOTDEV": ["signed_curve25519"]}},
  "org.matrix.msc3202.device_unused_fallback_key_types": {"@presencebot:localhost": {"BOTDEV": ["signed_curve25519"]}},
  "com.example.unknown_field": {"anything": [1, 2, 3]}
}`

// TestSynapseShapedTransaction: a transaction exactly as Synapse sends it
// is accepted, its presence reported once per user and its membership
// reported.
func TestSynapseShapedTransaction(t *testing.T) {
	hs := newFakeHS(t)
	obs := &fakeObserver{}
	s := newTestSide(t, testConfig(hs.URL), nil, obs)
	if status, body := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/1700000000", testHS, synapseTxn); status != 200 {
		t.Fatalf("%d %v", status, body)
	}
	bob := obs.presenceOfUser("@bob:localhost")
	if len(bob) != 1 || bob[0].State != mapping.StateAvailable || bob[0].Status != "at work" || !bob[0].CurrentlyActive {
		t.Errorf("bob: %+v, want available \"at work\" once", bob)
	}
	carol := obs.presenceOfUser("@carol:localhost")
	if len(carol) != 1 || carol[0].State != mapping.StateAway || time.Since(carol[0].LastActive) < 9*time.Minute {
		t.Errorf("carol: %+v, want away, idle 10 minutes, once", carol)
	}
	if n := obs.presenceCount(); n != 2 {
		t.Errorf("%d presence reports, want 2", n)
	}
	r, ok := obs.findMembership(func(bridge.MatrixMembership) bool { return true })
	if !ok || r.User != "@bob:localhost" || r.Ghost != "alice@example.com" || r.Membership != bridge.MembershipInvite || !r.GhostChanged || !r.IsDirect || r.RoomID != "!dm:localhost" {
		t.Errorf("membership %+v", r)
	}
}

// TestRunStopsCleanly: Run returns after its context ends, and only once.
func TestRunStopsCleanly(t *testing.T) {
	hs := newFakeHS(t)
	s := newTestSide(t, testConfig(hs.URL), nil, &fakeObserver{})
	ctx, cancel := context.WithCancel(context.Background())
	s.listener = freeListener(t)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.Ready()
	if err := s.Run(ctx); err != ErrAlreadyRunning {
		t.Errorf("second Run: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}
