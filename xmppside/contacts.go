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
	// pairs counts each contact's pairs that are not None.
	pairs map[mapping.BareJID]int
	// unreported holds the pairs (keys) found Pending In at load whose
	// request has not been reported since: the bridge may have died
	// between storing a request and reporting it, so the first re-send
	// is reported again (see subscriptionIn).
	unreported map[string]struct{}
}

func newContacts() *contacts {
	return &contacts{
		byPuppet:   make(map[mapping.UserID]map[mapping.BareJID]bridge.Subscription),
		pairs:      make(map[mapping.BareJID]int),
		unreported: make(map[string]struct{}),
	}
}

// load replaces the index with the bucket's content. Keys that do not
// decode into a Matrix user ID and a bare JID are skipped and reported
// through bad. It returns the keys that hold None, which should not exist.
func (c *contacts) load(ctx context.Context, b *bridge.Bucket[bridge.Subscription], bad func(key string, err error)) (none []string, err error) {
	m := make(map[mapping.UserID]map[mapping.BareJID]bridge.Subscription)
	pairs := make(map[mapping.BareJID]int)
	unreported := make(map[string]struct{})
	err = b.Range(ctx, func(key string, s bridge.Subscription) error {
		id, contact, err := parsePairKey(key)
		if err != nil {
			bad(key, err)
			return nil
		}
		s = Normalize(s)
		if isNone(s) {
			none = append(none, key)
			return nil
		}
		if m[id] == nil {
			m[id] = make(map[mapping.BareJID]bridge.Subscription)
		}
		m[id][contact] = s
		pairs[contact]++
		if s.PendingIn {
			unreported[key] = struct{}{}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.byPuppet, c.pairs, c.unreported = m, pairs, unreported
	c.mu.Unlock()
	return none, nil
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

// set records the state of a pair. It reports whether the contact still
// holds a pair with any puppet, and whether the puppet still has a
// contact.
func (c *contacts) set(id mapping.UserID, contact mapping.BareJID, s bridge.Subscription) (contactKnown, puppetKnown bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !s.PendingIn {
		delete(c.unreported, pairKey(id, contact))
	}
	m := c.byPuppet[id]
	_, had := m[contact]
	if isNone(s) {
		if had {
			delete(m, contact)
			if c.pairs[contact]--; c.pairs[contact] <= 0 {
				delete(c.pairs, contact)
			}
		}
		if len(m) == 0 {
			delete(c.byPuppet, id)
		}
		return c.pairs[contact] > 0, len(m) > 0
	}
	if m == nil {
		m = make(map[mapping.BareJID]bridge.Subscription)
		c.byPuppet[id] = m
	}
	if !had {
		c.pairs[contact]++
	}
	m[contact] = s
	return true, true
}

// isUnreported reports whether the pair was found Pending In at load and
// its request was not reported since.
func (c *contacts) isUnreported(id mapping.UserID, contact mapping.BareJID) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.unreported[pairKey(id, contact)]
	return ok
}

// reported records that the pair's request was reported.
func (c *contacts) reported(id mapping.UserID, contact mapping.BareJID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.unreported, pairKey(id, contact))
}

// hasPuppet reports whether the puppet has a contact (a pair not None).
func (c *contacts) hasPuppet(id mapping.UserID) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.byPuppet[id]) > 0
}

// known reports whether the contact holds a pair with any puppet.
func (c *contacts) known(contact mapping.BareJID) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.pairs[contact] > 0
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
	return c.where(id, func(s bridge.Subscription) bool { return s.To })
}

// pendingOut returns the contacts the puppet asked for their presence
// without an answer yet (Pending Out).
func (c *contacts) pendingOut(id mapping.UserID) []mapping.BareJID {
	return c.where(id, func(s bridge.Subscription) bool { return s.PendingOut })
}

func (c *contacts) where(id mapping.UserID, pred func(bridge.Subscription) bool) []mapping.BareJID {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []mapping.BareJID
	for contact, s := range c.byPuppet[id] {
		if pred(s) {
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
