package xmppside

import (
	"context"
	"encoding/xml"

	"mellium.im/xmlstream"
	xstanza "mellium.im/xmpp/stanza"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// handlePresence handles one presence stanza from the server.
func (c *Component) handlePresence(ctx context.Context, r xml.TokenReader, w xmlstream.TokenWriter, start xml.StartElement) {
	p, err := stanza.DecodePresence(r, start, c.cfg.MaxStatusBytes)
	if err != nil {
		c.plog.Warn("dropping undecodable presence", "err", err)
		return
	}
	if p.Type == stanza.Error {
		// Typically a bounce of something sent while the server could not
		// deliver it (or while we were away): nothing to retry.
		c.plog.Info("presence error received", "from", clip(p.From), "to", clip(p.To), "error_type", p.ErrorType, "condition", p.ErrorCondition)
		return
	}
	from, ok := c.checkFrom(p.Header)
	if !ok {
		return
	}
	if !p.Type.Valid() {
		c.plog.Warn("dropping presence of unknown type", "from", clip(p.From), "type", clip(p.Header.Type))
		return
	}
	if p.Problems != nil {
		c.plog.Info("presence with bad content, using defaults", "from", clip(p.From), "problems", p.Problems.Error())
	}
	to, prob := c.checkTo(p.Header)
	if prob != nil {
		if prob.cond == xstanza.BadRequest {
			return // not ours to answer for
		}
		c.replyError(w, p.Header, xstanza.Cancel, prob.cond)
		return
	}
	if to.user == "" {
		c.log.Debug("ignoring presence to the component domain", "from", clip(p.From), "type", string(p.Type))
		return
	}
	if from.bare == "" {
		c.plog.Info("ignoring presence from a JID that cannot have a ghost", "from", clip(p.From))
		return
	}
	switch {
	case p.Type == stanza.Available || p.Type == stanza.Unavailable:
		rel := c.subs.get(to.user, from.bare)
		if isNone(rel) {
			// A stranger to this puppet: directed presence asks nothing
			// of its addressee (RFC 6121 §4.6), so it is ignored and
			// nothing is kept of it. Only people with a subscription (or
			// a pending request) with the puppet are heard.
			c.refused.strangerPresence.Add(1)
			c.log.Debug("ignoring presence from a stranger to the puppet", "from", clip(p.From), "to", p.To, "type", string(p.Type))
			return
		}
		if from.jid.Resourcepart() == "" && !rel.To {
			// Prosody acknowledges a subscription request with unavailable
			// from the bare JID: it says nothing about the user. Presence
			// from the bare JID only counts from a contact the puppet is
			// subscribed to (a probe answer); directed presence comes from a
			// full JID.
			c.log.Debug("ignoring bare-JID presence from a non-contact", "from", from.bare, "to", p.To, "type", string(p.Type))
			return
		}
		c.presenceIn(ctx, from, &p)
	case p.Type.IsSubscription():
		c.subscriptionIn(ctx, w, from.bare, to, &p)
	case p.Type == stanza.Probe:
		c.probeIn(ctx, w, from, to)
	}
}

// presenceIn aggregates an available or unavailable presence of one
// resource and reports the user's aggregate if it changed. When the last
// resource goes, the aggregate is offline with the status the person last
// set while available (see users.update).
func (c *Component) presenceIn(ctx context.Context, from sender, p *stanza.Presence) {
	now := c.now()
	x := p.XMPP()
	if x.IdleSince.After(now) {
		x.IdleSince = now // a clock ahead of ours; idle cannot start in the future
	}
	np := c.tr.FromXMPP(x)
	r := c.users.update(from.bare, from.jid.Resourcepart(), np, now)
	if r.resourceEvicted {
		c.refused.resourcesEvicted.Add(1)
		c.plog.Info("too many resources; the one heard from least recently forgotten", "user", from.bare, "limit", c.cfg.Limits.ResourcesPerAddress)
	}
	c.log.Debug("presence received", "from", from.jid.String(), "to", p.To, "state", np.State.String(), "aggregate", r.agg.State.String(), "changed", r.changed)
	rctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	if r.userEvicted {
		c.refused.usersEvicted.Add(1)
	}
	if r.offline != nil {
		// Nobody would tell when this user leaves: show them offline.
		c.plog.Info("too many XMPP users tracked; the one heard from least recently reported offline and forgotten", "user", *r.offline, "limit", c.cfg.Limits.TrackedUsers)
		if err := c.obs.XMPPPresence(rctx, bridge.XMPPPresence{User: *r.offline, Presence: r.offlineAs}); err != nil {
			c.plog.Error("reporting presence failed", "user", *r.offline, "err", err)
		}
	}
	if !r.changed {
		return
	}
	if err := c.obs.XMPPPresence(rctx, bridge.XMPPPresence{User: from.bare, Presence: r.agg}); err != nil {
		c.plog.Error("reporting presence failed", "user", from.bare, "err", err)
		c.users.unreport(from.bare)
	}
}
