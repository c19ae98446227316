package xmppside

import (
	"context"
	"hash/maphash"
	"sync"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// contacts is an index of the subscriptions bucket: the state of every
// (puppet, contact) pair that is not None. Fan-out reads it for every
// presence change, so it must not cost a bucket scan. It is not a source of
// truth: it is loaded from the bucket at start and then set from the result
// of every compare-and-set (see subscription.go), under the pair's lock, so
// that it follows the bucket in order. Safe for concurrent use.
type contacts struct {
	mu       sync.RWMutex
	byPuppet map[mapping.UserID]map[mapping.BareJID]bridge.Subscription
}

func newContacts() *contacts {
	return &contacts{byPuppet: make(map[mapping.UserID]map[mapping.BareJID]bridge.Subscription)}
}

// load replaces the index with the bucket's content. Keys that do not
// decode into a Matrix user ID and a bare JID are skipped and reported
// through bad.
func (c *contacts) load(ctx context.Context, b *bridge.Bucket[bridge.Subscription], bad func(key string, err error)) error {
	m := make(map[mapping.UserID]map[mapping.BareJID]bridge.Subscription)
	err := b.Range(ctx, func(key string, s bridge.Subscription) error {
		id, contact, err := parsePairKey(key)
		if err != nil {
			bad(key, err)
			return nil
		}
		s = Normalize(s)
		if isNone(s) {
			return nil
		}
		if m[id] == nil {
			m[id] = make(map[mapping.BareJID]bridge.Subscription)
		}
		m[id][contact] = s
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

// pairKey is the subscriptions bucket key of a pair.
func pairKey(id mapping.UserID, contact mapping.BareJID) string {
	return bridge.PairKey(string(id), string(contact))
}

// parsePairKey is the inverse of pairKey, validating both halves.
func parsePairKey(key string) (mapping.UserID, mapping.BareJID, error) {
	mxid, jid, err := bridge.ParsePairKey(key)
	if err != nil {
		return "", "", err
	}
	id, err := mapping.NewUserID(mxid)
	if err != nil {
		return "", "", err
	}
	contact, err := mapping.NewBareJID(jid)
	if err != nil {
		return "", "", err
	}
	return id, contact, nil
}

func isNone(s bridge.Subscription) bool { return !s.To && !s.From && !s.PendingIn && !s.PendingOut }

// get returns the state of a pair (None if unknown).
func (c *contacts) get(id mapping.UserID, contact mapping.BareJID) bridge.Subscription {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.byPuppet[id][contact]
}

// set records the state of a pair.
func (c *contacts) set(id mapping.UserID, contact mapping.BareJID, s bridge.Subscription) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.byPuppet[id]
	if isNone(s) {
		delete(m, contact)
		if len(m) == 0 {
			delete(c.byPuppet, id)
		}
		return
	}
	if m == nil {
		m = make(map[mapping.BareJID]bridge.Subscription)
		c.byPuppet[id] = m
	}
	m[contact] = s
}

// from appends to dst the contacts allowed to see the puppet's presence
// (From or Both) and returns it.
func (c *contacts) from(dst []mapping.BareJID, id mapping.UserID) []mapping.BareJID {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for contact, s := range c.byPuppet[id] {
		if s.From {
			dst = append(dst, contact)
		}
	}
	return dst
}

// to returns the contacts whose presence the puppet sees (To or Both).
func (c *contacts) to(id mapping.UserID) []mapping.BareJID {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []mapping.BareJID
	for contact, s := range c.byPuppet[id] {
		if s.To {
			out = append(out, contact)
		}
	}
	return out
}

// puppets returns every puppet with at least one non-None contact.
func (c *contacts) puppets() []mapping.UserID {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]mapping.UserID, 0, len(c.byPuppet))
	for id := range c.byPuppet {
		out = append(out, id)
	}
	return out
}

// pairLocks serializes the transitions of one pair in this process, so that
// the index is set in the order the bucket was written. The bucket's
// compare-and-set, not these locks, is what keeps transitions from being
// lost.
type pairLocks struct {
	seed  maphash.Seed
	locks [64]sync.Mutex
}

func newPairLocks() *pairLocks { return &pairLocks{seed: maphash.MakeSeed()} }

// lock locks the pair and returns the unlock func.
func (p *pairLocks) lock(id mapping.UserID, contact mapping.BareJID) func() {
	h := maphash.String(p.seed, string(id)+"\x00"+string(contact))
	m := &p.locks[h%uint64(len(p.locks))]
	m.Lock()
	return m.Unlock
}
