package xmppside

import (
	"context"
	"sync"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// contacts is the in-memory copy of the subscriptions bucket: the state of
// every (puppet, contact) pair that is not None. Fan-out reads it for every
// presence change, so it must not cost a bucket scan. Only the component
// writes subscription states, always through the bucket first (see
// subscription.go), so the copy stays exact. Safe for concurrent use.
type contacts struct {
	mu       sync.RWMutex
	byPuppet map[string]map[string]bridge.Subscription // mxid → contact bare JID → state
}

func newContacts() *contacts {
	return &contacts{byPuppet: make(map[string]map[string]bridge.Subscription)}
}

// load replaces the copy with the bucket's content. Keys that do not decode
// are skipped and reported through bad.
func (c *contacts) load(ctx context.Context, b *bridge.Bucket[bridge.Subscription], bad func(key string, err error)) error {
	m := make(map[string]map[string]bridge.Subscription)
	err := b.Range(ctx, func(key string, s bridge.Subscription) error {
		mxid, contact, err := bridge.ParsePairKey(key)
		if err != nil {
			bad(key, err)
			return nil
		}
		s = Normalize(s)
		if isNone(s) {
			return nil
		}
		if m[mxid] == nil {
			m[mxid] = make(map[string]bridge.Subscription)
		}
		m[mxid][contact] = s
		return nil
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.byPuppet = m
	c.mu.Unlock()
	return nil
}

func isNone(s bridge.Subscription) bool { return !s.To && !s.From && !s.PendingIn && !s.PendingOut }

// get returns the state of a pair (None if unknown).
func (c *contacts) get(mxid, contact string) bridge.Subscription {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.byPuppet[mxid][contact]
}

// set records the state of a pair.
func (c *contacts) set(mxid, contact string, s bridge.Subscription) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.byPuppet[mxid]
	if isNone(s) {
		delete(m, contact)
		if len(m) == 0 {
			delete(c.byPuppet, mxid)
		}
		return
	}
	if m == nil {
		m = make(map[string]bridge.Subscription)
		c.byPuppet[mxid] = m
	}
	m[contact] = s
}

// from appends to dst the contacts allowed to see the puppet's presence
// (From or Both) and returns it.
func (c *contacts) from(dst []string, mxid string) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for contact, s := range c.byPuppet[mxid] {
		if s.From {
			dst = append(dst, contact)
		}
	}
	return dst
}

// to returns the contacts whose presence the puppet sees (To or Both).
func (c *contacts) to(mxid string) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []string
	for contact, s := range c.byPuppet[mxid] {
		if s.To {
			out = append(out, contact)
		}
	}
	return out
}

// puppets returns every puppet with at least one non-None contact.
func (c *contacts) puppets() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]string, 0, len(c.byPuppet))
	for mxid := range c.byPuppet {
		out = append(out, mxid)
	}
	return out
}
