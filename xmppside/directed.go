package xmppside

import (
	"context"
	"sync"

	"mellium.im/xmpp"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// A puppet sends presence only to the contacts the subscriptions bucket
// lets see it (From/Both), so the bucket says whom the announce and the
// goodbye must reach, with one exception: a contact whose From is taken
// away. The revocation is stored, then unavailable is sent (unsubscribed
// from the core, SendSubscription; unsubscribe from the contact,
// subscriptionIn); a process that dies in between leaves a contact who
// still sees the puppet available and whom no later fan-out reaches. So
// such a contact is first recorded as owed an unavailable, in the
// Directed bucket (one writer: the component), and the record is deleted
// once the unavailable is written. After every connect and in the
// goodbye, every contact still owed one gets it (unless they are From
// again: the puppet's presence reaches them anyway).
//
// Records exist only for pairs that had From (whose growth the
// subscription budgets bound), and only between the revocation and the
// next write of the stream; the in-memory copy follows the bucket.

// owedUnavailable is the in-memory copy of the Directed bucket.
type owedUnavailable struct {
	mu sync.Mutex
	m  map[string]owedPair // by pair key
}

type owedPair struct {
	puppet  mapping.UserID
	contact mapping.BareJID
}

func newOwedUnavailable() *owedUnavailable {
	return &owedUnavailable{m: make(map[string]owedPair)}
}

func (o *owedUnavailable) all() []owedPair {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]owedPair, 0, len(o.m))
	for _, p := range o.m {
		out = append(out, p)
	}
	return out
}

// testHookRevocationStored, if set, runs after a revocation of From was
// stored and before its unavailable is written (tests: a crash there).
var testHookRevocationStored func()

// loadOwed reads the Directed bucket (at start).
func (c *Component) loadOwed(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	m := make(map[string]owedPair)
	err := c.store.Directed.Range(lctx, func(key string, _ bridge.Directed) error {
		id, contact, err := parsePairKey(key)
		if err != nil {
			c.log.Warn("skipping undecodable key of owed unavailable", "key", key, "err", err)
			return nil
		}
		m[key] = owedPair{id, contact}
		return nil
	})
	if err != nil {
		return err
	}
	c.owed.mu.Lock()
	c.owed.m = m
	c.owed.mu.Unlock()
	if len(m) > 0 {
		c.log.Info("contacts owed an unavailable by a puppet loaded", "contacts", len(m))
	}
	return nil
}

// owe records, before a revocation of From is stored, that contact is
// owed an unavailable from the puppet of id. A record that cannot be
// written is logged: the revocation goes on (its unavailable follows at
// once unless the process dies).
func (c *Component) owe(ctx context.Context, id mapping.UserID, contact mapping.BareJID) {
	key := pairKey(id, contact)
	wctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if _, err := c.store.Directed.Put(wctx, key, bridge.Directed{Since: c.now().UTC()}); err != nil {
		c.plog.Error("recording an owed unavailable failed", "mxid", id, "contact", contact, "err", err)
		return
	}
	c.owed.mu.Lock()
	c.owed.m[key] = owedPair{id, contact}
	c.owed.mu.Unlock()
}

// settle forgets that contact is owed an unavailable from the puppet of
// id: it was written, or the contact is From again. A record that cannot
// be deleted stays in memory too, to be settled by the next connect.
func (c *Component) settle(ctx context.Context, id mapping.UserID, contact mapping.BareJID) {
	key := pairKey(id, contact)
	c.owed.mu.Lock()
	_, ok := c.owed.m[key]
	c.owed.mu.Unlock()
	if !ok {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if err := c.store.Directed.Delete(dctx, key); err != nil {
		c.plog.Warn("deleting an owed unavailable failed", "mxid", id, "contact", contact, "err", err)
		return
	}
	c.owed.mu.Lock()
	delete(c.owed.m, key)
	c.owed.mu.Unlock()
}

// payOwed sends unavailable to every contact still owed one, unless they
// are From again, and settles each. It returns how many were sent.
func (c *Component) payOwed(ctx context.Context, sess *xmpp.Session) int {
	n := 0
	for _, p := range c.owed.all() {
		if ctx.Err() != nil {
			return n
		}
		unlock := c.pairs.lock(p.puppet, p.contact)
		if !c.subs.get(p.puppet, p.contact).From {
			puppet, err := c.ns.PuppetJID(p.puppet)
			if err != nil {
				unlock()
				continue
			}
			u := stanza.Presence{Header: stanza.Header{From: string(puppet)}, Type: stanza.Unavailable}
			if err := c.writeFanOut(ctx, sess, &u, []mapping.BareJID{p.contact}); err != nil {
				unlock()
				c.log.Warn("sending an owed unavailable failed; the next connect sends it", "puppet", puppet, "err", err)
				return n
			}
			n++
		}
		c.settle(ctx, p.puppet, p.contact)
		unlock()
	}
	return n
}
