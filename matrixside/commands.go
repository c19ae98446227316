package matrixside

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// CommandPrefix starts a command to the bridge in any room the bridge
// sees (a room with its bot, or a direct chat with a ghost).
const CommandPrefix = "!presence"

const commandHelp = `presence bridge commands:
!presence off - stop showing your presence to XMPP contacts
!presence on  - show it again (to the contacts you approved)
!presence help - this text`

// commandEvent is a text message that starts with CommandPrefix.
type commandEvent struct {
	EventID, RoomID, Sender string
	Args                    string // what follows the prefix, trimmed, lower case
}

func parseCommand(ev rawEvent) (commandEvent, bool) {
	var c struct {
		MsgType string `json:"msgtype"`
		Body    string `json:"body"`
	}
	if json.Unmarshal(ev.Content, &c) != nil || c.MsgType != "m.text" || ev.RoomID == "" || ev.Sender == "" {
		return commandEvent{}, false
	}
	body := strings.TrimSpace(c.Body)
	if len(body) < len(CommandPrefix) || !strings.EqualFold(body[:len(CommandPrefix)], CommandPrefix) {
		return commandEvent{}, false
	}
	rest := body[len(CommandPrefix):]
	if rest != "" && rest[0] != ' ' && rest[0] != '\t' {
		return commandEvent{}, false // "!presencex" is not ours
	}
	return commandEvent{EventID: ev.EventID, RoomID: ev.RoomID, Sender: ev.Sender, Args: strings.ToLower(strings.TrimSpace(rest))}, true
}

// runCommand carries out a command from a Matrix user and answers it in
// the room, as the bot. Commands from ghosts or the bot are ignored.
func (s *Side) runCommand(ctx context.Context, c commandEvent) error {
	if kind, _ := s.classify(c.Sender); kind != kindMatrix {
		return nil
	}
	reply := commandHelp
	switch c.Args {
	case "off", "optout", "stop":
		if err := s.publishOptOut(ctx, c.Sender, true); err != nil {
			return err
		}
		reply = "Your presence is no longer shown to XMPP contacts."
	case "on", "optin", "start":
		if err := s.publishOptOut(ctx, c.Sender, false); err != nil {
			return err
		}
		reply = "Your presence is shown to the XMPP contacts you approved again."
	}
	s.log.Info("bot command", "command", c.Args)
	// The answer is a courtesy: a room the bot is not in cannot have one.
	if err := s.c.sendNotice(ctx, s.cfg.BotMXID(), c.RoomID, "cmd-"+c.EventID, reply); err != nil {
		s.log.Debug("could not answer command", "err", err)
	}
	return nil
}

func (s *Side) publishOptOut(ctx context.Context, mxid string, enabled bool) error {
	if s.bus == nil {
		return nil
	}
	return s.bus.Publish(ctx, bridge.In, &bridge.Event{Kind: bridge.KindOptOut, Origin: mapping.NetworkMatrix, User: mxid, OptOut: &bridge.OptOutPayload{Enabled: enabled}})
}

// sendNotice sends an m.notice as user; txnID makes a retry idempotent.
func (c *client) sendNotice(ctx context.Context, as, roomID, txnID, text string) error {
	return c.do(ctx, c.http, http.MethodPut, clientV3+"/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+url.PathEscape(txnID)+asUser(as),
		map[string]string{"msgtype": "m.notice", "body": text}, nil)
}
