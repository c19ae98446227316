package xmppside

import (
	"context"
	"errors"

	"mellium.im/xmlstream"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// currentPresence returns the puppet's last presence: what the core last
// asked it to show, or, when nothing was asked since the start, the core's
// record in the presence bucket (read, never written: the core owns it).
func (c *Component) currentPresence(ctx context.Context, id mapping.UserID) (shown, bool) {
	if cur, ok := c.puppets.get(id); ok {
		return cur, true
	}
	gctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	rec, _, err := c.store.Presence.Get(gctx, bridge.PresenceKey(mapping.NetworkMatrix, string(id)))
	switch {
	case errors.Is(err, bridge.ErrNotFound):
		return shown{}, false
	case err != nil:
		c.plog.Warn("reading puppet presence failed", "mxid", id, "err", err)
		return shown{}, false
	}
	if st := rec.Presence.State; st == mapping.StateUnknown || st == mapping.StateUnset {
		return shown{}, false
	}
	// The record holds an opted-out user's real presence (the core shows
	// offline in its place): read their choice, and show nothing when it
	// cannot be read.
	set, _, err := c.store.Settings.Get(gctx, bridge.PresenceKey(mapping.NetworkMatrix, string(id)))
	switch {
	case err == nil && set.OptOut:
		return shown{}, false
	case err != nil && !errors.Is(err, bridge.ErrNotFound):
		c.plog.Warn("reading a puppet's opt-out failed; not showing its stored presence", "mxid", id, "err", err)
		return shown{}, false
	}
	return c.puppets.setIfUnknown(id, shown{presence: rec.Presence, seq: rec.Seq, at: rec.UpdatedAt}), true
}

// outPresence renders a puppet's presence as a stanza from the puppet.
func (c *Component) outPresence(puppet mapping.BareJID, p mapping.Presence) stanza.Presence {
	x := c.tr.ToXMPP(p)
	x.Status = mapping.TruncateStatus(x.Status, c.cfg.MaxStatusBytes)
	out := stanza.Presence{Header: stanza.Header{From: string(puppet)}}
	out.FromXMPP(x)
	return out
}

// probeIn answers a presence probe (the server probes from the full JID of
// a user who logs in): the puppet's current presence to a From/Both
// contact, unavailable if the puppet's presence is not known, and
// unsubscribed to anyone else (RFC 6121 §4.3.2).
func (c *Component) probeIn(ctx context.Context, w xmlstream.TokenWriter, from sender, to dest) {
	var reply stanza.Presence
	if !c.subs.get(to.user, from.bare).From {
		reply = stanza.Presence{Header: stanza.Header{From: string(to.puppet), To: string(from.bare)}, Type: stanza.Unsubscribed}
	} else if cur, ok := c.currentPresence(ctx, to.user); ok {
		reply = c.outPresence(to.puppet, cur.presence)
		reply.To = from.jid.String()
	} else {
		reply = stanza.Presence{Header: stanza.Header{From: string(to.puppet), To: from.jid.String()}, Type: stanza.Unavailable}
	}
	reply.ID = c.nextID()
	if _, err := reply.WriteXML(w); err != nil {
		c.plog.Warn("answering probe failed", "from", from.jid.String(), "err", err)
	}
}
