package xmppside

import (
	"context"
	"encoding/xml"
	"runtime/debug"
	"strings"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	xstanza "mellium.im/xmpp/stanza"

	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// handler returns the stream handler. It handles presence itself (mellium's
// mux would call a presence handler once per child element) and IQs and
// messages too, so that every reply carries the right from.
//
// A handler that returns an error ends the stream, so this one never does:
// bad stanzas are logged and dropped or answered with a stanza error, and a
// panic is recovered and logged.
//
// The handler is where addresses are validated: everything past it works
// with a [sender] and a [dest].
func (c *Component) handler(ctx context.Context) xmpp.Handler {
	return xmpp.HandlerFunc(func(t xmlstream.TokenReadEncoder, start *xml.StartElement) (err error) {
		defer func() {
			if r := recover(); r != nil {
				c.plog.Error("stanza handler panicked; stanza dropped", "panic", r, "stack", string(debug.Stack()))
				err = nil
			}
		}()
		c.handle(ctx, t, t, *start)
		return nil
	})
}

// handle dispatches one top-level element read from r (positioned after
// start); replies go to w.
//
// Reports to the observer are made before anything is written to w: the
// handler holds the stream's write lock from its first write on, and an
// observer may answer at once through SendSubscription, which writes.
func (c *Component) handle(ctx context.Context, r xml.TokenReader, w xmlstream.TokenWriter, start xml.StartElement) {
	if !stanza.IsStanza(start.Name) {
		c.plog.Warn("ignoring unknown top-level element", "name", start.Name.Local, "ns", start.Name.Space)
		return
	}
	switch start.Name.Local {
	case "presence":
		c.handlePresence(ctx, r, w, start)
	case "iq":
		c.handleIQ(ctx, r, w, start)
	case "message":
		c.handleMessage(ctx, r, w, start)
	}
}

// sender is the validated from of a stanza.
type sender struct {
	jid jid.JID // as sent, with its resource
	// bare is the sender's bare JID when it can have a ghost (see
	// mapping.NewBareJID), else empty: such senders get answers to IQs but
	// their presence and subscriptions are ignored.
	bare mapping.BareJID
}

// checkFrom refuses a stanza whose from is missing, invalid or on the
// component's own domain (only the component speaks for it: anything else
// is spoofed or a loop).
func (c *Component) checkFrom(h stanza.Header) (sender, bool) {
	if h.From == "" {
		c.plog.Warn("refusing stanza without from", "stanza", h.Name, "type", h.Type)
		return sender{}, false
	}
	from, err := jid.Parse(h.From)
	if err != nil {
		c.plog.Warn("refusing stanza with invalid from", "stanza", h.Name, "from", clip(h.From), "err", err)
		return sender{}, false
	}
	if c.ownDomain(from.Domainpart()) {
		c.plog.Warn("refusing stanza from the component's own domain", "stanza", h.Name, "from", clip(h.From))
		return sender{}, false
	}
	s := sender{jid: from}
	if bare, err := mapping.NewBareJID(from.Bare().String()); err == nil {
		s.bare = bare
	}
	return s, true
}

// ownDomain reports whether domain is the component domain or one of its
// subdomains.
func (c *Component) ownDomain(domain string) bool {
	return domain == c.cfg.ComponentDomain || strings.HasSuffix(domain, "."+c.cfg.ComponentDomain)
}

// dest is the validated to of a stanza: the component domain (user empty)
// or a puppet.
type dest struct {
	jid    jid.JID         // as sent, with its resource
	user   mapping.UserID  // the Matrix user of the puppet; empty for the domain
	puppet mapping.BareJID // the puppet's bare JID; empty for the domain
}

// toProblem says which stanza error answers a bad destination.
type toProblem struct {
	cond xstanza.Condition
}

// checkTo decodes the destination: the component domain or a puppet. A
// problem says which stanza error to reply with.
func (c *Component) checkTo(h stanza.Header) (dest, *toProblem) {
	to, err := jid.Parse(h.To)
	if err != nil {
		c.plog.Warn("stanza to an invalid JID", "stanza", h.Name, "to", clip(h.To), "err", err)
		return dest{}, &toProblem{xstanza.JIDMalformed}
	}
	if to.Domainpart() != c.cfg.ComponentDomain {
		c.plog.Warn("stanza addressed outside the component domain", "stanza", h.Name, "to", clip(h.To))
		return dest{jid: to}, &toProblem{xstanza.BadRequest}
	}
	if to.Localpart() == "" {
		return dest{jid: to}, nil
	}
	bare := to.Bare().String()
	id, err := c.ns.ParsePuppetJID(bare)
	if err != nil {
		c.plog.Info("stanza to a JID that is no puppet", "stanza", h.Name, "to", clip(h.To), "err", err)
		return dest{jid: to}, &toProblem{xstanza.ItemNotFound}
	}
	// ParsePuppetJID accepts only the canonical puppet JID.
	return dest{jid: to, user: id, puppet: mapping.BareJID(bare)}, nil
}

// replyError writes a stanza error in reply to h, unless h is itself an
// error (or an IQ result), which must never be answered. A reply to a stanza
// addressed outside our domain comes from the component domain, since
// anything else ends the stream.
func (c *Component) replyError(w xmlstream.TokenWriter, h stanza.Header, typ xstanza.ErrorType, cond xstanza.Condition) {
	if h.Type == "error" || (h.Name == "iq" && stanza.ParseIQType(h.Type) == stanza.IQResult) {
		return
	}
	from := ""
	if to, err := jid.Parse(h.To); err != nil || to.Domainpart() != c.cfg.ComponentDomain {
		from = c.cfg.ComponentDomain
	}
	if _, err := xmlstream.Copy(w, stanza.ErrorReply(h, from, typ, cond)); err != nil {
		c.plog.Warn("writing error reply failed", "err", err)
	}
}

// handleMessage answers messages: to the component domain they are
// commands (see commands.go); to puppets they are refused, the bridge
// carries presence only. Only chat and normal messages from people are
// answered: never an error (RFC 6120 §8.3.1), a headline or groupchat
// (bots and rooms, which answer back), nor a message from a server (a
// JID without a local part). The component's own domain and its puppets
// are refused by checkFrom. Together with the command budget this keeps a
// bot that answers everything from looping with the component.
func (c *Component) handleMessage(ctx context.Context, r xml.TokenReader, w xmlstream.TokenWriter, start xml.StartElement) {
	h := stanza.ParseHeader(start)
	switch h.Type {
	case "", "normal", "chat":
	default:
		c.refused.messagesIgnored.Add(1)
		c.log.Debug("ignoring message of a type never answered", "from", clip(h.From), "type", clip(h.Type))
		return
	}
	from, ok := c.checkFrom(h)
	if !ok {
		return
	}
	if from.jid.Localpart() == "" {
		c.refused.messagesIgnored.Add(1)
		c.log.Debug("ignoring message from a server", "from", clip(h.From))
		return
	}
	to, p := c.checkTo(h)
	if p != nil {
		c.replyError(w, h, xstanza.Cancel, p.cond)
		return
	}
	if to.user == "" && to.jid.Resourcepart() == "" {
		c.handleCommand(ctx, r, w, start, h, from)
		return
	}
	c.replyError(w, h, xstanza.Cancel, xstanza.ServiceUnavailable)
}

// clip shortens attacker-controlled strings for logs.
func clip(s string) string {
	if len(s) > 256 {
		return mapping.TruncateStatus(s, 256) + "…"
	}
	return s
}
