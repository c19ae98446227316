package xmppside

import (
	"context"
	"encoding/xml"
	"strings"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// Commands an XMPP user sends as a chat message to the component domain.
const commandHelp = `presence bridge commands:
  optout - stop showing your presence to Matrix users
  optin  - show it again (to the people you approved)
  help   - this text`

// handleCommand runs a command from a message to the component domain and
// replies with what happened.
func (c *Component) handleCommand(ctx context.Context, r xml.TokenReader, w xmlstream.TokenWriter, start xml.StartElement, h stanza.Header, from jid.JID) {
	var msg struct {
		Body string `xml:"body"`
	}
	if err := xml.NewTokenDecoder(xmlstream.MultiReader(xmlstream.Token(start), r)).Decode(&msg); err != nil {
		c.log.Warn("unreadable command message", "from", clip(h.From), "err", err)
		return
	}
	cmd := strings.ToLower(strings.TrimSpace(msg.Body))
	if cmd == "" {
		return // chat states and receipts carry no body: nothing to answer
	}
	reply := commandHelp
	switch cmd {
	case "optout", "opt-out", "stop":
		reply = c.setOptOut(ctx, from.Bare().String(), true)
	case "optin", "opt-in", "start":
		reply = c.setOptOut(ctx, from.Bare().String(), false)
	}
	c.writeChat(w, from.String(), reply)
}

func (c *Component) setOptOut(ctx context.Context, bareJID string, enabled bool) string {
	err := c.bus.Publish(ctx, bridge.In, &bridge.Event{Kind: bridge.KindOptOut, Origin: mapping.NetworkXMPP, User: bareJID, OptOut: &bridge.OptOutPayload{Enabled: enabled}})
	if err != nil {
		c.log.Error("publishing opt-out failed", "err", err)
		return "Sorry, that did not work; please try again later."
	}
	if enabled {
		return "Your presence is no longer shown to Matrix users."
	}
	return "Your presence is shown to the Matrix users you approved again."
}

// writeChat writes a chat message from the component domain.
func (c *Component) writeChat(w xmlstream.TokenWriter, to, text string) {
	msg := xmlstream.Wrap(
		xmlstream.Wrap(xmlstream.Token(xml.CharData(text)), xml.StartElement{Name: xml.Name{Local: "body"}}),
		xml.StartElement{Name: xml.Name{Local: "message"}, Attr: []xml.Attr{
			{Name: xml.Name{Local: "type"}, Value: "chat"},
			{Name: xml.Name{Local: "from"}, Value: c.cfg.ComponentDomain},
			{Name: xml.Name{Local: "to"}, Value: to},
			{Name: xml.Name{Local: "id"}, Value: bridge.NewID()},
		}},
	)
	if _, err := xmlstream.Copy(w, msg); err != nil {
		c.log.Warn("writing command reply failed", "err", err)
	}
}
