package xmppside

import (
	"context"
	"encoding/xml"
	"strings"

	"mellium.im/xmlstream"

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
func (c *Component) handleCommand(ctx context.Context, r xml.TokenReader, w xmlstream.TokenWriter, start xml.StartElement, h stanza.Header, from sender) {
	var msg struct {
		Body string `xml:"body"`
	}
	if err := xml.NewTokenDecoder(xmlstream.MultiReader(xmlstream.Token(start), r)).Decode(&msg); err != nil {
		c.plog.Warn("unreadable command message", "from", clip(h.From), "err", err)
		return
	}
	cmd := strings.ToLower(strings.TrimSpace(msg.Body))
	if cmd == "" {
		return // chat states and receipts carry no body: nothing to answer
	}
	if !c.allowCommand(from) {
		return
	}
	reply := commandHelp
	switch cmd {
	case "optout", "opt-out", "stop":
		reply = c.setOptOut(ctx, from.bare, true)
	case "optin", "opt-in", "start":
		reply = c.setOptOut(ctx, from.bare, false)
	}
	c.writeChat(w, from.jid.String(), reply)
}

// allowCommand spends the budget of a command from the sender, or counts
// the refusal. A command over budget is neither run nor answered.
func (c *Component) allowCommand(from sender) bool {
	addr := from.jid.Bare().String()
	switch c.commandBudget.allow(addr, from.jid.Domainpart(), c.now()) {
	case overAddress:
		c.refused.commandsPerAddress.Add(1)
		c.plog.Info("command over the address's budget; ignored", "from", clip(addr), "limit", c.cfg.Limits.CommandsPerAddress.String())
		return false
	case overDomain:
		c.refused.commandsPerDomain.Add(1)
		c.plog.Info("command over the domain's budget; ignored", "from", clip(addr), "limit", c.cfg.Limits.CommandsPerDomain.String())
		return false
	}
	return true
}

// setOptOut reports the choice and returns the answer to the user.
func (c *Component) setOptOut(ctx context.Context, bare mapping.BareJID, enabled bool) string {
	if bare == "" {
		return "Your address cannot be bridged, so there is nothing to change."
	}
	rctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	if err := c.obs.XMPPOptOut(rctx, bridge.OptOut[mapping.BareJID]{User: bare, Enabled: enabled}); err != nil {
		c.plog.Error("reporting opt-out failed", "user", bare, "err", err)
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
			{Name: xml.Name{Local: "id"}, Value: c.nextID()},
		}},
	)
	if _, err := xmlstream.Copy(w, msg); err != nil {
		c.plog.Warn("writing command reply failed", "err", err)
	}
}
