package xmppside

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"

	"mellium.im/xmlstream"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// The component applies RFC 6121 (roster.go) and nothing else: whether a
// request is approved is the core's decision (the subscription policy),
// which comes back as SendSubscription commands.
//
// The subscriptions bucket is the truth about every pair, and the
// component its only writer. Every transition is a compare-and-set
// (Bucket.Update) computed on the state it replaces; the index in contacts
// is then set from the stored result.

// subscriptionIn handles a subscription stanza from contact to the puppet
// of to.user. The transition is stored first, then reported: an observer
// that answers at once (SendSubscription) finds the state it answers. If
// the report fails, the transition is undone, so that the server's re-send
// at the contact's next login is news again.
//
// A request (subscribe) that would reach the core spends the sender's
// budget (Config.Limits); over it, the request is ignored: nothing is
// stored, reported or answered. Stanzas that change nothing (from a
// stranger, most of them) cost no bucket access.
func (c *Component) subscriptionIn(ctx context.Context, w xmlstream.TokenWriter, contact mapping.BareJID, to dest, p *stanza.Presence) {
	t := bridge.SubscriptionType(p.Type)
	cur := c.subs.get(to.user, contact)
	_, news := Inbound(cur, t)
	// A request stored Pending In before a restart may never have been
	// reported (the bridge died in between): its first re-send is.
	again := t == bridge.Subscribe && !news && cur.PendingIn && c.subs.isUnreported(to.user, contact)
	autoReply := t == bridge.Subscribe && cur.From
	if !news && !again && !autoReply {
		c.log.Debug("subscription stanza changes nothing", "puppet", to.puppet, "contact", contact, "type", string(t), "state", StateName(cur))
		return
	}
	if t == bridge.Subscribe && (news || again) && !c.allowSubscribe(contact) {
		return
	}
	owing := t == bridge.Unsubscribe && cur.From
	if owing {
		c.owe(ctx, to.user, contact) // see directed.go
	}
	prev, next, err := c.transition(ctx, to.user, contact, func(s bridge.Subscription) bridge.Subscription {
		n, _ := Inbound(s, t)
		return n
	})
	if err != nil {
		c.plog.Error("storing subscription failed", "puppet", to.puppet, "contact", contact, "err", err)
		return
	}
	revoked := prev.From && !next.From
	if owing && !revoked {
		c.settle(ctx, to.user, contact)
	}
	changed := !SameState(prev, next)
	c.plog.Info("subscription stanza received", "puppet", to.puppet, "contact", contact, "type", string(t),
		"state", StateName(prev), "next", StateName(next))
	if changed || again {
		rctx, cancel := context.WithTimeout(ctx, reportTimeout)
		err := c.obs.XMPPSubscription(rctx, bridge.XMPPSubscription{Contact: contact, Puppet: to.user, Type: t, Status: p.Status})
		cancel()
		if err != nil {
			c.plog.Error("reporting subscription failed; transition undone", "puppet", to.puppet, "contact", contact, "err", err)
			if changed {
				c.undo(ctx, to.user, contact, prev, next)
			}
			return
		}
		c.subs.reported(to.user, contact)
	}
	var out []stanza.Presence
	switch {
	case t == bridge.Subscribe && next.From:
		// Approved before: the server re-sends subscribe at every login,
		// and RFC 6121 §3.1.3 wants an auto-reply.
		out = append(out, stanza.Presence{Header: stanza.Header{From: string(to.puppet)}, Type: stanza.Subscribed})
		if cur, ok := c.currentPresence(ctx, to.user); ok {
			out = append(out, c.outPresence(to.puppet, cur.presence))
		}
	case t == bridge.Unsubscribe && prev.From && !next.From:
		out = append(out, stanza.Presence{Header: stanza.Header{From: string(to.puppet)}, Type: stanza.Unavailable})
	}
	for i := range out {
		out[i].To, out[i].ID = string(contact), c.nextID()
		if _, err := out[i].WriteXML(w); err != nil {
			c.plog.Warn("answering subscription failed", "err", err)
			return
		}
	}
	if revoked {
		c.settle(ctx, to.user, contact)
	}
}

// allowSubscribe spends the budget of a subscription request from
// contact, or counts the refusal.
func (c *Component) allowSubscribe(contact mapping.BareJID) bool {
	switch c.subscribeBudget.allow(string(contact), contact.Domain(), c.now()) {
	case overAddress:
		c.refused.subscribePerAddress.Add(1)
		c.plog.Info("subscription request over the address's budget; ignored", "contact", contact, "limit", c.cfg.Limits.SubscribePerAddress.String())
		return false
	case overDomain:
		c.refused.subscribePerDomain.Add(1)
		c.plog.Info("subscription request over the domain's budget; ignored", "contact", contact, "limit", c.cfg.Limits.SubscribePerDomain.String())
		return false
	}
	return true
}

// SendSubscription makes the puppet of cmd.Puppet send cmd.Type to
// cmd.Contact, applying RFC 6121 A.3. subscribed is followed by the
// puppet's current presence when it approves a pending request, and
// unsubscribed by unavailable when it revokes an approval. A command that
// changes nothing sends nothing (subscribe and unsubscribe excepted:
// repeating a request is harmless and lets a lost one through).
//
// The order of the write and the store is chosen so that a crash between
// them leaves a state that heals (see "What XEP-0114 cannot guarantee" in
// doc.go): subscribe, subscribed and unsubscribed are stored first, then
// sent; unsubscribe is sent first, then stored. When the write fails after
// the store, the store is undone and an error returned, so that the
// command comes again and finds the state it started from.
//
// It returns [ErrNotConnected] while the component has no stream, and
// other errors when the stanzas could not be written or the state stored:
// the command must come again. A malformed command is logged and dropped
// (nil), since it would never succeed. It may be called from within an
// XMPPObserver method.
func (c *Component) SendSubscription(ctx context.Context, cmd bridge.PuppetSubscription) error {
	t := cmd.Type
	switch t {
	case bridge.Subscribe, bridge.Subscribed, bridge.Unsubscribe, bridge.Unsubscribed:
	default:
		c.log.Warn("dropping subscription command of unknown type", "id", cmd.ID, "type", string(t))
		return nil
	}
	puppet, err := c.ns.PuppetJID(cmd.Puppet)
	if err != nil {
		c.log.Warn("dropping subscription command for a user without puppet", "id", cmd.ID, "mxid", cmd.Puppet, "err", err)
		return nil
	}
	contact, err := mapping.NewBareJID(string(cmd.Contact))
	if err == nil && c.ownDomain(contact.Domain()) {
		err = errors.New("a JID on the component domain")
	}
	if err != nil {
		c.log.Warn("dropping subscription command to a bad contact", "id", cmd.ID, "contact", clip(string(cmd.Contact)), "err", err)
		return nil
	}
	sess, _, release := c.acquireSession()
	defer release()
	if sess == nil {
		return ErrNotConnected
	}

	unlock := c.pairs.lock(cmd.Puppet, contact)
	defer unlock()
	cur, err := c.getSubscription(ctx, cmd.Puppet, contact)
	if err != nil {
		return err
	}
	next, send := Outbound(cur, t)
	c.log.Info("subscription command", "puppet", puppet, "contact", contact, "type", string(t),
		"state", StateName(cur), "next", StateName(next), "send", send)
	var out []stanza.Presence
	if send {
		out = append(out, stanza.Presence{Header: stanza.Header{From: string(puppet)}, Type: stanza.Type(t)})
	}
	switch {
	case t == bridge.Subscribed && next.From && !cur.From:
		if p, ok := c.currentPresence(ctx, cmd.Puppet); ok {
			out = append(out, c.outPresence(puppet, p.presence))
		}
	case t == bridge.Unsubscribed && cur.From && !next.From:
		out = append(out, stanza.Presence{Header: stanza.Header{From: string(puppet)}, Type: stanza.Unavailable})
	}
	revokes := cur.From && !next.From
	toks := make([]xml.TokenReader, len(out))
	for i := range out {
		out[i].To, out[i].ID = string(contact), c.nextID()
		toks[i] = out[i].TokenReader()
	}
	write := func() error {
		if err := c.writeStanzas(sess, toks...); err != nil {
			return fmt.Errorf("xmppside: sending %s from %s: %w", t, puppet, err)
		}
		return nil
	}
	step := func(s bridge.Subscription) bridge.Subscription {
		n, _ := Outbound(s, t)
		return n
	}
	if SameState(cur, next) {
		return write()
	}
	if t == bridge.Unsubscribe {
		// Sent first: if it is lost with the state unchanged (To), the
		// probe after the next connect finds out (the server answers
		// unsubscribed), and the core's command comes again.
		if err := write(); err != nil {
			return err
		}
		_, _, err = c.storeLocked(ctx, cmd.Puppet, contact, step)
		return err
	}
	// Stored first: if the stanza is lost after this (a crash, the stream
	// gone), what was stored is what heals. Pending Out: subscribe is sent
	// again after every connect. From: the contact's server re-sends its
	// request at the contact's next login, and it is approved again. Not
	// From: the contact's server probes at the next login, and gets
	// unsubscribed. Sent first, a lost subscribed or unsubscribed would
	// leave states no later stanza repairs.
	if revokes {
		c.owe(ctx, cmd.Puppet, contact) // see directed.go
	}
	prev, stored, err := c.storeLocked(ctx, cmd.Puppet, contact, step)
	if err != nil {
		if revokes {
			c.settle(ctx, cmd.Puppet, contact)
		}
		return err
	}
	if revokes && testHookRevocationStored != nil {
		testHookRevocationStored()
	}
	if err := write(); err != nil {
		if _, _, uerr := c.storeLocked(ctx, cmd.Puppet, contact, func(s bridge.Subscription) bridge.Subscription {
			if SameState(s, stored) {
				return prev
			}
			return s
		}); uerr != nil {
			c.log.Error("undoing subscription command failed", "puppet", puppet, "contact", contact, "err", uerr)
		}
		if revokes && c.subs.get(cmd.Puppet, contact).From {
			c.settle(ctx, cmd.Puppet, contact) // undone: From again
		}
		return err
	}
	if revokes {
		c.settle(ctx, cmd.Puppet, contact)
	}
	return nil
}

// transition applies step to the stored state of a pair with
// compare-and-set, under the pair's lock, and returns the state it replaced
// and the state stored.
func (c *Component) transition(ctx context.Context, id mapping.UserID, contact mapping.BareJID, step func(bridge.Subscription) bridge.Subscription) (prev, next bridge.Subscription, err error) {
	unlock := c.pairs.lock(id, contact)
	defer unlock()
	return c.storeLocked(ctx, id, contact, step)
}

// undo puts prev back if the pair is still in the state next, after a
// transition that could not be reported.
func (c *Component) undo(ctx context.Context, id mapping.UserID, contact mapping.BareJID, prev, next bridge.Subscription) {
	_, _, err := c.transition(ctx, id, contact, func(s bridge.Subscription) bridge.Subscription {
		if SameState(s, next) {
			return prev
		}
		return s
	})
	if err != nil {
		c.plog.Error("undoing subscription transition failed", "mxid", id, "contact", contact, "err", err)
	}
}

// storeLocked is transition with the pair's lock held. The state written
// is step applied to the state read by the successful compare-and-set, so
// a concurrent writer (another instance) is never overwritten; nothing is
// written when step changes nothing. A pair that returns to None is
// deleted from the bucket: the bucket's single writer is this component,
// and the pair's lock keeps this process from racing with itself between
// the read and the delete.
func (c *Component) storeLocked(ctx context.Context, id mapping.UserID, contact mapping.BareJID, step func(bridge.Subscription) bridge.Subscription) (prev, next bridge.Subscription, err error) {
	uctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	key := pairKey(id, contact)
	var del bool
	stored, err := c.store.Subscriptions.Update(uctx, key, func(cur bridge.Subscription, exists bool) (bridge.Subscription, bool, error) {
		cur = Normalize(cur)
		prev, next = cur, Normalize(step(cur))
		del = exists && isNone(next)
		if del || SameState(cur, next) {
			return cur, false, nil
		}
		next.UpdatedAt = c.now().UTC()
		return next, true, nil
	})
	if err != nil {
		return prev, prev, err
	}
	if del {
		if err := c.store.Subscriptions.Delete(uctx, key); err != nil {
			return prev, prev, err
		}
		stored = bridge.Subscription{}
	}
	c.setIndex(id, contact, Normalize(stored))
	return prev, next, nil
}

// setIndex records a stored state in the index, and forgets what is kept
// in memory for a contact or a puppet left without any pair.
func (c *Component) setIndex(id mapping.UserID, contact mapping.BareJID, s bridge.Subscription) {
	contactKnown, puppetKnown := c.subs.set(id, contact, s)
	if !contactKnown {
		c.users.forget(contact)
	}
	if !puppetKnown {
		c.puppets.forget(id)
	}
}

// deleteNoneKeys deletes keys that hold None (written by older versions):
// the bucket keeps only pairs that are something.
func (c *Component) deleteNoneKeys(ctx context.Context, keys []string) {
	n := 0
	for _, key := range keys {
		dctx, cancel := context.WithTimeout(ctx, storeTimeout)
		err := c.store.Subscriptions.Delete(dctx, key)
		cancel()
		if err != nil {
			c.log.Warn("deleting a subscription key that holds None failed", "key", key, "err", err)
			continue
		}
		n++
	}
	if n > 0 {
		c.log.Info("deleted subscription keys that held None", "keys", n)
	}
}

// getSubscription reads a pair's state; None when nothing is stored.
func (c *Component) getSubscription(ctx context.Context, id mapping.UserID, contact mapping.BareJID) (bridge.Subscription, error) {
	gctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	s, _, err := c.store.Subscriptions.Get(gctx, pairKey(id, contact))
	if errors.Is(err, bridge.ErrNotFound) {
		return bridge.Subscription{}, nil
	}
	return Normalize(s), err
}
