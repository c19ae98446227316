package xmppside

import (
	"context"
	"errors"
	"fmt"

	"mellium.im/xmlstream"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// inboundPlan is what the component does about one inbound subscription
// stanza: the state to store, whether to tell the core, and what the puppet
// answers.
type inboundPlan struct {
	next        bridge.Subscription
	publish     bool
	replies     []stanza.Type // subscription stanzas from the puppet, in order
	presence    bool          // send the puppet's current presence
	unavailable bool          // send unavailable
}

// planInbound applies RFC 6121 A.2 and the policy. It is pure.
func planInbound(s bridge.Subscription, t bridge.SubscriptionType, policy Policy) inboundPlan {
	next, deliver := Inbound(s, t)
	pl := inboundPlan{next: next, publish: deliver}
	switch t {
	case bridge.Subscribe:
		switch {
		case next.From:
			// Already approved: the server re-sends subscribe at every
			// login, and RFC 6121 §3.1.3 wants an auto-reply.
			pl.replies = []stanza.Type{stanza.Subscribed}
			pl.presence = true
		case policy == PolicyAccept:
			pl.next, _ = Outbound(pl.next, bridge.Subscribed)
			pl.replies = append(pl.replies, stanza.Subscribed)
			pl.presence = true
			if !pl.next.To && !pl.next.PendingOut {
				pl.next, _ = Outbound(pl.next, bridge.Subscribe)
				pl.replies = append(pl.replies, stanza.Subscribe)
			}
		case policy == PolicyReject:
			pl.next, _ = Outbound(pl.next, bridge.Unsubscribed)
			pl.replies = []stanza.Type{stanza.Unsubscribed}
			pl.publish = false
		}
	case bridge.Unsubscribe:
		pl.unavailable = s.From && !next.From
	}
	return pl
}

// subscriptionIn handles a subscription stanza from contact to the puppet
// of mxid. The stored state changes only after the core has been told
// (durably): if telling fails, nothing changes and the server's re-send at
// the contact's next login tries again.
func (c *Component) subscriptionIn(ctx context.Context, w xmlstream.TokenWriter, contact, mxid string, p *stanza.Presence) {
	t := bridge.SubscriptionType(p.Type)
	puppetTyped, err := c.ns.PuppetJID(mapping.UserID(mxid))
	puppet := string(puppetTyped)
	if err != nil {
		return // checkTo decoded it, so this cannot fail
	}
	key := bridge.PairKey(mxid, contact)
	c.subMu.Lock()
	defer c.subMu.Unlock()
	cur, err := c.getSubscription(ctx, key)
	if err != nil {
		c.log.Error("reading subscription failed", "puppet", puppet, "contact", contact, "err", err)
		return
	}
	pl := planInbound(cur, t, c.cfg.SubscriptionPolicy)
	c.log.Info("subscription stanza received", "puppet", puppet, "contact", contact, "type", string(t),
		"state", StateName(cur), "next", StateName(pl.next), "policy", string(c.cfg.SubscriptionPolicy))
	if pl.publish {
		ev := &bridge.Event{Kind: bridge.KindSubscription, Origin: mapping.NetworkXMPP, User: contact, Peer: mxid,
			Subscription: &bridge.SubscriptionPayload{Type: t, Status: p.Status}}
		if err := c.bus.Publish(ctx, bridge.In, ev); err != nil {
			c.log.Error("publishing subscription failed; state unchanged", "puppet", puppet, "contact", contact, "err", err)
			return
		}
	}
	if !SameState(cur, pl.next) {
		if err := c.storeSubscription(ctx, mxid, contact, func(s bridge.Subscription) bridge.Subscription {
			return planInbound(s, t, c.cfg.SubscriptionPolicy).next
		}); err != nil {
			c.log.Error("storing subscription failed", "puppet", puppet, "contact", contact, "err", err)
			return
		}
	}
	// Look everything up before writing: the first write takes the
	// stream's write lock until the handler returns.
	var after *stanza.Presence
	switch {
	case pl.unavailable:
		after = &stanza.Presence{Header: stanza.Header{From: puppet}, Type: stanza.Unavailable}
	case pl.presence:
		if rec, ok := c.currentPresence(ctx, mxid, false); ok {
			p := c.outPresence(puppet, rec)
			after = &p
		}
	}
	for _, typ := range pl.replies {
		r := stanza.Presence{Header: stanza.Header{ID: c.nextID(), From: puppet, To: contact}, Type: typ}
		if _, err := r.WriteXML(w); err != nil {
			c.log.Warn("answering subscription failed", "err", err)
			return
		}
	}
	if after != nil {
		after.To, after.ID = contact, c.nextID()
		if _, err := after.WriteXML(w); err != nil {
			c.log.Warn("sending presence after subscription failed", "err", err)
		}
	}
}

// onSubscriptionCommand is the durable consumer of subscription commands
// from the core: the puppet of ev.User sends ev.Subscription.Type to the
// contact ev.Peer (RFC 6121 A.3). The stanza is sent before the state is
// stored, so a failure redelivers the command and at worst repeats a
// stanza. Malformed commands are logged and acknowledged.
func (c *Component) onSubscriptionCommand(ctx context.Context, ev *bridge.Event) error {
	if ev.Origin != mapping.NetworkMatrix || ev.Subscription == nil {
		c.log.Warn("dropping subscription command not from matrix", "id", ev.ID, "origin", ev.Origin.String())
		return nil
	}
	t := ev.Subscription.Type
	switch t {
	case bridge.Subscribe, bridge.Subscribed, bridge.Unsubscribe, bridge.Unsubscribed:
	default:
		c.log.Warn("dropping subscription command of unknown type", "id", ev.ID, "type", string(t))
		return nil
	}
	mxid, contact := ev.User, ev.Peer
	puppetTyped, err := c.ns.PuppetJID(mapping.UserID(mxid))
	puppet := string(puppetTyped)
	if err != nil {
		c.log.Warn("dropping subscription command for a user without puppet", "id", ev.ID, "mxid", mxid, "err", err)
		return nil
	}
	if _, domain, err := mapping.ParseBareJID(contact); err != nil || domain == c.cfg.ComponentDomain {
		c.log.Warn("dropping subscription command to a bad contact", "id", ev.ID, "peer", clip(contact), "err", err)
		return nil
	}
	if c.session() == nil {
		return ErrNotConnected
	}
	key := bridge.PairKey(mxid, contact)
	c.subMu.Lock()
	defer c.subMu.Unlock()
	cur, err := c.getSubscription(ctx, key)
	if err != nil {
		return err
	}
	next, send := Outbound(cur, t)
	c.log.Info("subscription command", "puppet", puppet, "contact", contact, "type", string(t),
		"state", StateName(cur), "next", StateName(next), "send", send)
	var out []stanza.Presence
	if send {
		out = append(out, stanza.Presence{Header: stanza.Header{From: puppet, To: contact}, Type: stanza.Type(t)})
	}
	switch {
	case t == bridge.Subscribed && next.From && !cur.From:
		if rec, ok := c.currentPresence(ctx, mxid, false); ok {
			p := c.outPresence(puppet, rec)
			p.To = contact
			out = append(out, p)
		}
	case t == bridge.Unsubscribed && cur.From && !next.From:
		out = append(out, stanza.Presence{Header: stanza.Header{From: puppet, To: contact}, Type: stanza.Unavailable})
	}
	for i := range out {
		out[i].ID = c.nextID()
		if err := c.send(out[i].TokenReader()); err != nil {
			return fmt.Errorf("xmppside: sending %s from %s: %w", t, puppet, err)
		}
	}
	if SameState(cur, next) {
		return nil
	}
	return c.storeSubscription(ctx, mxid, contact, func(s bridge.Subscription) bridge.Subscription {
		n, _ := Outbound(s, t)
		return n
	})
}

// getSubscription reads a pair's state; None when nothing is stored.
func (c *Component) getSubscription(ctx context.Context, key string) (bridge.Subscription, error) {
	gctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	s, _, err := c.store.Subscriptions.Get(gctx, key)
	if errors.Is(err, bridge.ErrNotFound) {
		return bridge.Subscription{}, nil
	}
	return Normalize(s), err
}

// storeSubscription applies step to the stored state with compare-and-set
// and updates the in-memory copy with the result. Call with subMu held.
func (c *Component) storeSubscription(ctx context.Context, mxid, contact string, step func(bridge.Subscription) bridge.Subscription) error {
	uctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	stored, err := c.store.Subscriptions.Update(uctx, bridge.PairKey(mxid, contact), func(cur bridge.Subscription, exists bool) (bridge.Subscription, bool, error) {
		cur = Normalize(cur)
		next := step(cur)
		if exists && SameState(cur, next) {
			return cur, false, nil
		}
		next.UpdatedAt = c.now().UTC()
		return next, true, nil
	})
	if err != nil {
		return err
	}
	c.subs.set(mxid, contact, Normalize(stored))
	return nil
}
