package matrixside

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

func TestHandlerBadInput(t *testing.T) {
	hs := newFakeHS(t)
	s := newTestSide(t, testConfig(hs.URL), nil)
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
		{"user outside namespace", "GET", "/_matrix/app/v1/users/@bob:localhost", testHS, "", 404, "M_NOT_FOUND"},
		{"undecodable ghost", "GET", "/_matrix/app/v1/users/@_xmpp_NOPE:localhost", testHS, "", 404, "M_NOT_FOUND"},
		{"room alias", "GET", "/_matrix/app/v1/rooms/%23a:localhost", testHS, "", 404, "M_NOT_FOUND"},
		{"ghost query", "GET", "/_matrix/app/v1/users/@_xmpp_alice=40example.com:localhost", testHS, "", 200, ""},
		{"legacy path", "PUT", "/transactions/5", testHS, `{"events":[]}`, 200, ""},
		{"ping", "POST", "/_matrix/app/v1/ping", testHS, `{}`, 200, ""},
		{"bad events skipped", "PUT", "/_matrix/app/v1/transactions/6", testHS,
			`{"events":[1,null,{"type":"m.room.member"},{"type":"m.room.member","state_key":"@_xmpp_x:localhost","content":"x"},` +
				`{"type":"m.room.member","room_id":"!r:localhost","sender":"@_xmpp_BAD:localhost","state_key":"@bob:localhost","content":{"membership":"invite"}},` +
				`{"type":"m.room.message","room_id":"!r:localhost","sender":"@bob:localhost","content":{"body":"help"}}],` +
				`"ephemeral":[{"type":"m.presence","sender":"@bob:localhost","content":{"presence":"sleeping"}},{"type":"m.typing"}]}`, 200, ""},
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

// TestTransactionsDeduplicatedAcrossRestart: a transaction id seen before
// is acknowledged without being processed again, also by a new side on the
// same store.
func TestTransactionsDeduplicatedAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	bus := openTestBus(t, dir)
	rec := record(t, bus, bridge.SubjectFilter(bridge.In, mapping.NetworkMatrix, bridge.KindMembership))
	hs := newFakeHS(t)
	ghost := ghostOf(t, "alice@example.com")
	txn := func(eventID string) string {
		return `{"events":[{"type":"m.room.member","event_id":"` + eventID + `","room_id":"!r:localhost","sender":"@bob:localhost","state_key":"` + ghost + `","content":{"membership":"invite","is_direct":true}}]}`
	}
	s := newTestSide(t, testConfig(hs.URL), bus)
	for range 2 {
		if status, body := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/t1", testHS, txn("$e1")); status != 200 {
			t.Fatalf("txn: %d %v", status, body)
		}
	}
	ev := rec.wait(t, 5*time.Second, "invite", func(*bridge.Event) bool { return true })
	if ev.User != "@bob:localhost" || ev.Peer != "alice@example.com" || ev.Membership.Membership != "invite" ||
		ev.Membership.Member != "alice@example.com" || ev.Membership.Sender != "@bob:localhost" || !ev.Membership.IsDirect {
		t.Fatalf("event %+v %+v", ev, ev.Membership)
	}
	// A new side (a restarted bridge) on the same store.
	s2 := newTestSide(t, testConfig(hs.URL), bus)
	if status, _ := doAS(t, s2.Handler(), "PUT", "/_matrix/app/v1/transactions/t1", testHS, txn("$e2")); status != 200 {
		t.Fatal(status)
	}
	if status, _ := doAS(t, s2.Handler(), "PUT", "/_matrix/app/v1/transactions/t2", testHS, txn("$e3")); status != 200 {
		t.Fatal(status)
	}
	waitFor(t, 5*time.Second, "second invite", func() bool { return rec.count(func(*bridge.Event) bool { return true }) >= 2 })
	_ = bus.Conn().Flush()
	if n := rec.count(func(*bridge.Event) bool { return true }); n != 2 {
		t.Fatalf("%d membership events, want 2 (t1 once, t2 once)", n)
	}
}

// TestEphemeralPresence: MSC2409 m.presence in a transaction reaches the
// bus once per change; ghosts and the bot never do.
func TestEphemeralPresence(t *testing.T) {
	bus := openTestBus(t, "")
	rec := record(t, bus, bridge.SubjectFilter(bridge.In, mapping.NetworkMatrix, bridge.KindPresence))
	hs := newFakeHS(t)
	s := newTestSide(t, testConfig(hs.URL), bus)
	ghost := ghostOf(t, "alice@example.com")
	presence := func(sender, p, status string, ago int) string {
		return `{"type":"m.presence","sender":"` + sender + `","content":{"presence":"` + p + `","status_msg":"` + status + `","last_active_ago":` + strconv.Itoa(ago) + `}}`
	}
	txn := `{"events":[],"de.sorunome.msc2409.ephemeral":[` +
		presence(ghost, "online", "echo", 0) + "," +
		presence("@presencebot:localhost", "offline", "", 0) + "," +
		presence("@bob:localhost", "unavailable", "lunch", 60000) + "]}"
	if status, body := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/e1?access_token="+testHS, "", txn); status != 200 {
		t.Fatalf("%d %v", status, body)
	}
	// The same presence again (last_active_ago a little later) is no change.
	txn2 := `{"events":[],"ephemeral":[` + presence("@bob:localhost", "unavailable", "lunch", 61000) + "," +
		presence("@carol:localhost", "online", "", 0) + "]}"
	if status, _ := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/e2", testHS, txn2); status != 200 {
		t.Fatal(status)
	}
	rec.wait(t, 5*time.Second, "carol", func(ev *bridge.Event) bool { return ev.User == "@carol:localhost" })
	_ = bus.Conn().Flush()
	bob := rec.find(func(ev *bridge.Event) bool { return ev.User == "@bob:localhost" })
	if bob == nil || bob.Presence.State != mapping.StateAway || bob.Presence.Status != "lunch" || bob.Presence.LastActive.IsZero() {
		t.Fatalf("bob: %+v", bob)
	}
	if since := time.Since(bob.Presence.LastActive); since < 59*time.Second || since > 70*time.Second {
		t.Errorf("bob last active %v ago, want about 60s", since)
	}
	if n := rec.count(func(*bridge.Event) bool { return true }); n != 2 {
		t.Fatalf("%d presence events, want bob and carol once each: %+v", n, rec.events)
	}
	if !s.ephemeralSeen.Load() || !s.stopReading() {
		t.Error("ephemeral presence seen but sync/poll would continue in auto mode")
	}
}

// TestRunStopsCleanly: Run returns after its context ends.
func TestRunStopsCleanly(t *testing.T) {
	bus := openTestBus(t, "")
	hs := newFakeHS(t)
	s := newTestSide(t, testConfig(hs.URL), bus)
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
