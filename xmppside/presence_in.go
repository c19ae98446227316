package xmppside

import (
	"context"
	"encoding/xml"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	xstanza "mellium.im/xmpp/stanza"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// handlePresence handles one presence stanza from the server.
func (c *Component) handlePresence(ctx context.Context, r xml.TokenReader, w xmlstream.TokenWriter, start xml.StartElement) {
	p, err := stanza.DecodePresence(r, start, c.cfg.MaxStatusBytes)
	if err != nil {
		c.log.Warn("dropping undecodable presence", "err", err)
		return
	}
	if p.Type == stanza.Error {
		// Typically a bounce of something sent while the server could not
		// deliver it (or while we were away): nothing to retry.
		c.log.Info("presence error received", "from", clip(p.From), "to", clip(p.To), "error_type", p.ErrorType, "condition", p.ErrorCondition)
		return
	}
	from, ok := c.checkFrom(p.Header)
	if !ok {
		return
	}
	if !p.Type.Valid() {
		c.log.Warn("dropping presence of unknown type", "from", clip(p.From), "type", clip(p.Header.Type))
		return
	}
	if p.Problems != nil {
		c.log.Info("presence with bad content, using defaults", "from", clip(p.From), "problems", p.Problems.Error())
	}
	_, mxid, prob := c.checkTo(p.Header)
	if prob != nil {
		if prob.cond == xstanza.BadRequest {
			return // not ours to answer for
		}
		c.replyError(w, p.Header, xstanza.Cancel, prob.cond)
		return
	}
	if mxid == "" {
		c.log.Debug("ignoring presence to the component domain", "from", clip(p.From), "type", string(p.Type))
		return
	}
	bare := from.Bare().String()
	if _, _, err := mapping.ParseBareJID(bare); err != nil {
		c.log.Info("ignoring presence from a JID that cannot have a ghost", "from", clip(p.From), "err", err)
		return
	}
	switch {
	case p.Type == stanza.Available || p.Type == stanza.Unavailable:
		if from.Resourcepart() == "" && !c.subs.get(mxid, bare).To {
			// Prosody acknowledges a subscription request with unavailable
			// from the bare JID: it says nothing about the user. Presence
			// from the bare JID only counts from a contact the puppet is
			// subscribed to (a probe answer); directed presence comes from a
			// full JID.
			c.log.Debug("ignoring bare-JID presence from a non-contact", "from", bare, "to", p.To, "type", string(p.Type))
			return
		}
		c.presenceIn(ctx, from, &p)
	case p.Type.IsSubscription():
		c.subscriptionIn(ctx, w, bare, mxid, &p)
	case p.Type == stanza.Probe:
		c.probeIn(ctx, w, from, mxid, &p)
	}
}

// presenceIn aggregates an available or unavailable presence of one
// resource and publishes the user's aggregate if it changed.
func (c *Component) presenceIn(ctx context.Context, from jid.JID, p *stanza.Presence) {
	now := c.now()
	x := p.XMPP()
	if x.IdleSince.After(now) {
		x.IdleSince = now // a clock ahead of ours; idle cannot start in the future
	}
	np := c.tr.FromXMPP(x)
	bare := from.Bare().String()
	agg, changed := c.users.update(bare, from.Resourcepart(), np, now)
	c.log.Debug("presence received", "from", from.String(), "to", p.To, "state", np.State.String(), "aggregate", agg.State.String(), "changed", changed)
	if !changed {
		return
	}
	ev := &bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkXMPP, User: bare, Presence: &agg}
	if err := c.bus.Publish(ctx, bridge.In, ev); err != nil {
		c.log.Error("publishing presence failed", "user", bare, "err", err)
		c.users.unpublish(bare)
		return
	}
	c.presence.put(mapping.NetworkXMPP, bare, bridge.PresenceRecord{Presence: agg, Seq: ev.Seq, UpdatedAt: ev.ObservedAt})
}
