package matrixside

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/presence-bridge/presence-bridge/bridge"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
)

func TestParseCommand(t *testing.T) {
	cases := []struct {
		body, msgtype string
		ok            bool
		args          string
	}{
		{"!presence off", "m.text", true, "off"},
		{"  !Presence   ON ", "m.text", true, "on"},
		{"!presence", "m.text", true, ""},
		{"!presenceoff", "m.text", false, ""},
		{"hello", "m.text", false, ""},
		{"!presence off", "m.notice", false, ""}, // bots answer with notices: never a loop
	}
	for _, c := range cases {
		content, _ := json.Marshal(map[string]string{"msgtype": c.msgtype, "body": c.body})
		got, ok := parseCommand(rawEvent{Type: "m.room.message", RoomID: "!r:x", Sender: "@bob:x", Content: content})
		if ok != c.ok || got.Args != c.args {
			t.Errorf("parseCommand(%q, %s) = %+v, %v", c.body, c.msgtype, got, ok)
		}
	}
}

// TestOptOutBotCommand: a Matrix user turns the export of their presence
// off and on by a command in a room with the bot, and the bot answers.
func TestOptOutBotCommand(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	roomID, err := bob.CreateRoom(t.Context(), []string{e.cfg.BotMXID()}, true)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, wait, "bot joined", func() bool { _, ok := joinedMembers(t, bob, roomID)[e.cfg.BotMXID()]; return ok })
	say := func(i int, text string) {
		t.Helper()
		path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/t%d", url.PathEscape(roomID), i)
		if err := bob.Do(t.Context(), http.MethodPut, path, map[string]string{"msgtype": "m.text", "body": text}, nil); err != nil {
			t.Fatal(err)
		}
	}
	optout := func(enabled bool) func(*bridge.Event) bool {
		return func(ev *bridge.Event) bool {
			return ev.Kind == bridge.KindOptOut && ev.User == bob.UserID && ev.OptOut.Enabled == enabled
		}
	}
	say(1, "!presence off")
	e.in.wait(t, wait, "opt-out event", optout(true))
	waitForNotice(t, bob, roomID, e.cfg.BotMXID(), "no longer shown")
	say(2, "!presence on")
	e.in.wait(t, wait, "opt-in event", optout(false))
	waitForNotice(t, bob, roomID, e.cfg.BotMXID(), "shown to the XMPP contacts you approved")
	say(3, "just chatting")
	say(4, "!presence what")
	waitForNotice(t, bob, roomID, e.cfg.BotMXID(), "!presence off - stop")
	if n := e.in.count(optout(true)); n != 1 {
		t.Fatalf("%d opt-out events, want 1", n)
	}
}

func waitForNotice(t *testing.T, c *dendritetest.Client, roomID, from, contains string) {
	t.Helper()
	waitFor(t, wait, "bot notice containing "+contains, func() bool {
		var out struct {
			Chunk []struct {
				Sender  string `json:"sender"`
				Content struct {
					MsgType string `json:"msgtype"`
					Body    string `json:"body"`
				} `json:"content"`
			} `json:"chunk"`
		}
		path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/messages?dir=b&limit=20"
		if err := c.Do(t.Context(), http.MethodGet, path, nil, &out); err != nil {
			return false
		}
		for _, ev := range out.Chunk {
			if ev.Sender == from && ev.Content.MsgType == "m.notice" && strings.Contains(ev.Content.Body, contains) {
				return true
			}
		}
		return false
	})
}
