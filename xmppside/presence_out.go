package xmppside

import (
	"context"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// onPresenceOut is the bus callback for presence the core wants a puppet to
// show. Without Peer the puppet broadcasts to its From/Both contacts, and
// only to them; with Peer (a JID) it sends directed presence to Peer alone
// (RFC 6121 §4.6), remembered so that Peer gets unavailable at shutdown.
// It runs on a NATS goroutine, one event at a time.
func (c *Component) onPresenceOut(ctx context.Context, ev *bridge.Event) {
	if !c.inputs.enter() {
		return
	}
	defer c.inputs.leave()
	if ev.Origin != mapping.NetworkMatrix || ev.Presence == nil {
		c.log.Warn("ignoring presence command not from matrix", "origin", ev.Origin.String(), "user", ev.User, "id", ev.ID)
		return
	}
	mxid := ev.User
	puppetTyped, err := c.ns.PuppetJID(mapping.UserID(mxid))
	puppet := string(puppetTyped)
	if err != nil {
		c.log.Warn("ignoring presence for a Matrix user without puppet", "mxid", mxid, "err", err)
		return
	}
	if st := ev.Presence.State; st == mapping.StateUnknown || st == mapping.StateUnset {
		c.log.Debug("not showing unknown presence", "mxid", mxid)
		return
	}
	rec := bridge.PresenceRecord{Presence: *ev.Presence, OriginState: ev.OriginState, Seq: ev.Seq, UpdatedAt: ev.ObservedAt}
	if ev.Peer != "" {
		c.directedOut(mxid, puppet, ev.Peer, rec)
		return
	}
	if !c.puppets.setIfNewer(mxid, rec) {
		c.log.Debug("ignoring stale presence", "mxid", mxid, "seq", ev.Seq)
		return
	}
	c.presence.put(mapping.NetworkMatrix, mxid, rec)
	sess := c.session()
	if sess == nil {
		return // announced after the reconnect
	}
	p := c.outPresence(puppet, rec)
	to := c.subs.from(nil, mxid)
	if p.Type == stanza.Unavailable {
		to = append(to, c.puppets.takeDirected(mxid)...)
	}
	if err := c.writeFanOut(ctx, sess, &p, to); err != nil {
		c.log.Warn("sending puppet presence failed", "puppet", puppet, "err", err)
	}
}

func (c *Component) directedOut(mxid, puppet, peer string, rec bridge.PresenceRecord) {
	to, err := jid.Parse(peer)
	if err != nil || to.Domainpart() == c.cfg.ComponentDomain {
		c.log.Warn("ignoring directed presence to a bad JID", "mxid", mxid, "peer", clip(peer))
		return
	}
	p := c.outPresence(puppet, rec)
	p.To = to.String()
	if err := c.send(p.TokenReader()); err != nil {
		c.log.Warn("sending directed presence failed", "puppet", puppet, "peer", p.To, "err", err)
		return
	}
	c.puppets.directed(mxid, p.To, p.Type != stanza.Unavailable)
}

// outPresence renders a puppet's presence as a stanza from the puppet.
func (c *Component) outPresence(puppet string, rec bridge.PresenceRecord) stanza.Presence {
	x := c.tr.ToXMPP(rec.Presence)
	x.Status = mapping.TruncateStatus(x.Status, c.cfg.MaxStatusBytes)
	p := stanza.Presence{Header: stanza.Header{From: puppet}}
	p.FromXMPP(x)
	return p
}

// probeIn answers a presence probe (the server probes from the full JID of
// a user who logs in): the puppet's current presence to a From/Both
// contact, unavailable if the puppet's presence is not known, and
// unsubscribed to anyone else (RFC 6121 §4.3.2).
func (c *Component) probeIn(ctx context.Context, w xmlstream.TokenWriter, from jid.JID, mxid string, probe *stanza.Presence) {
	puppet := probe.To
	if to, err := jid.Parse(probe.To); err == nil {
		puppet = to.Bare().String()
	}
	bare := from.Bare().String()
	var reply stanza.Presence
	if !c.subs.get(mxid, bare).From {
		reply = stanza.Presence{Header: stanza.Header{From: puppet, To: bare}, Type: stanza.Unsubscribed}
	} else if rec, ok := c.currentPresence(ctx, mxid, false); ok {
		reply = c.outPresence(puppet, rec)
		reply.To = from.String()
	} else {
		reply = stanza.Presence{Header: stanza.Header{From: puppet, To: from.String()}, Type: stanza.Unavailable}
	}
	reply.ID = c.nextID()
	if _, err := reply.WriteXML(w); err != nil {
		c.log.Warn("answering probe failed", "from", from.String(), "err", err)
	}
}
