package matrixside

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"

	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	"github.com/presence-bridge/presence-bridge/mapping"
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
		raw, _ := json.Marshal(map[string]any{"type": "m.room.message", "room_id": "!r:x", "sender": "@bob:x", "event_id": "$1",
			"content": map[string]string{"msgtype": c.msgtype, "body": c.body}})
		var evt event.Event
		if err := json.Unmarshal(raw, &evt); err != nil {
			t.Fatal(err)
		}
		got, ok := commandOf(&evt)
		if ok != c.ok || got.Args != c.args {
			t.Errorf("commandOf(%q, %s) = %+v, %v", c.body, c.msgtype, got, ok)
		}
	}
}

// TestOptOutBotCommand: a Matrix user turns the export of their presence
// off and on by a command in a room with the bot, and the bot answers.
func TestOptOutBotCommand(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	bot := string(e.cfg.BotMXID())
	roomID, err := bob.CreateRoom(t.Context(), []string{bot}, true)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, wait, "bot joined", func() bool { _, ok := joinedMembers(t, bob, roomID)[bot]; return ok })
	say := func(i int, text string) {
		t.Helper()
		path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/t%d", url.PathEscape(roomID), i)
		if err := bob.Do(t.Context(), http.MethodPut, path, map[string]string{"msgtype": "m.text", "body": text}, nil); err != nil {
			t.Fatal(err)
		}
	}
	optOuts := func() string { return fmt.Sprint(e.obs.optOutsOf(mapping.UserID(bob.UserID))) }
	say(1, "!presence off")
	waitFor(t, wait, "opt-out report", func() bool { return optOuts() == "[true]" })
	waitForNotice(t, bob, roomID, bot, "no longer shown")
	say(2, "!presence on")
	waitFor(t, wait, "opt-in report", func() bool { return optOuts() == "[true false]" })
	waitForNotice(t, bob, roomID, bot, "shown to the XMPP contacts you approved")
	say(3, "just chatting")
	say(4, "!presence what")
	waitForNotice(t, bob, roomID, bot, "!presence off - stop")
	if got := optOuts(); got != "[true false]" {
		t.Fatalf("opt-out reports %s, want [true false]", got)
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
