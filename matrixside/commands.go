package matrixside

import (
	"context"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

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

// command is a text message that starts with CommandPrefix.
type command struct {
	EventID id.EventID
	RoomID  id.RoomID
	Sender  id.UserID
	Args    string // what follows the prefix, trimmed, lower case
}

// commandOf reads a command from an m.room.message event. Only m.text
// counts: bots answer with m.notice, so answers never loop.
func commandOf(evt *event.Event) (command, bool) {
	if evt.Type.Type != event.EventMessage.Type || evt.RoomID == "" || evt.Sender == "" {
		return command{}, false
	}
	evt.Type.Class = event.MessageEventType
	if !parseContent(evt) {
		return command{}, false
	}
	c := evt.Content.AsMessage()
	if c.MsgType != event.MsgText {
		return command{}, false
	}
	body := strings.TrimSpace(c.Body)
	if len(body) < len(CommandPrefix) || !strings.EqualFold(body[:len(CommandPrefix)], CommandPrefix) {
		return command{}, false
	}
	rest := body[len(CommandPrefix):]
	if rest != "" && rest[0] != ' ' && rest[0] != '\t' {
		return command{}, false // "!presencex" is not ours
	}
	return command{EventID: evt.ID, RoomID: evt.RoomID, Sender: evt.Sender, Args: strings.ToLower(strings.TrimSpace(rest))}, true
}

// runCommand carries out a command from a Matrix user and answers it in
// the room, as the bot. Commands from ghosts or the bot are ignored. An
// error means the opt-out could not be reported: the transaction fails
// and comes again.
func (s *Side) runCommand(ctx context.Context, c command) error {
	if kind, _ := s.classify(c.Sender); kind != kindMatrix {
		return nil
	}
	reply := commandHelp
	switch c.Args {
	case "off", "optout", "stop":
		if err := s.obs.MatrixOptOut(ctx, bridge.OptOut[mapping.UserID]{User: mapping.UserID(c.Sender), Enabled: true}); err != nil {
			return err
		}
		reply = "Your presence is no longer shown to XMPP contacts."
	case "on", "optin", "start":
		if err := s.obs.MatrixOptOut(ctx, bridge.OptOut[mapping.UserID]{User: mapping.UserID(c.Sender), Enabled: false}); err != nil {
			return err
		}
		reply = "Your presence is shown to the XMPP contacts you approved again."
	}
	s.log.Info("bot command", "command", c.Args)
	// The answer is a courtesy: a room the bot is not in cannot have one.
	// The transaction id makes an answer sent again a no-op.
	_, err := s.bot.SendMessageEvent(ctx, c.RoomID, event.EventMessage,
		&event.MessageEventContent{MsgType: event.MsgNotice, Body: reply},
		mautrix.ReqSendEvent{TransactionID: "cmd-" + string(c.EventID)})
	if err != nil {
		s.log.Debug("could not answer command", "err", err)
	}
	return nil
}
