package xmppside

import (
	"context"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// users aggregates the resources of every XMPP user that sends presence to
// a puppet and remembers what was last reported for them, so that one
// change is reported once even though the XMPP server delivers it to every
// puppet the user shares presence with. Safe for concurrent use.
//
// Only contacts of puppets get here (presence from anyone else is
// dropped before), and at most max of them are kept: beyond it the one
// heard from least recently is forgotten, whatever their state. An
// evicted user who was reported online is handed back to be reported
// offline: nobody would be left to tell when they leave, and their ghost
// would show them online forever. Their next presence stanza (or the
// re-probe after a reconnect) brings them back.
type users struct {
	mu           sync.Mutex
	m            map[mapping.BareJID]*userPresence
	lru          userPresence // sentinel of the ring, most recently heard first
	max          int
	maxResources int
}

type userPresence struct {
	bare         mapping.BareJID
	res          mapping.Resources
	reported     mapping.Presence
	haveReported bool
	prev, next   *userPresence
}

// updated is what users.update did.
type updated struct {
	agg     mapping.Presence // the user's new aggregate
	changed bool             // agg differs from what was last reported (it now counts as reported)
	// userEvicted: another user was forgotten to make room; if they were
	// reported online, offline is set to the presence to report for them.
	userEvicted bool
	offline     *mapping.BareJID
	offlineAs   mapping.Presence
	// resourceEvicted: another resource of the user was forgotten to make
	// room.
	resourceEvicted bool
}

func newUsers(max, maxResources int) *users {
	u := &users{m: make(map[mapping.BareJID]*userPresence), max: max, maxResources: maxResources}
	u.lru.prev, u.lru.next = &u.lru, &u.lru
	return u
}

// update records one resource's presence and returns the new aggregate and
// whether it differs from what was last reported (it is then recorded as
// reported), and what was evicted to make room.
func (u *users) update(bare mapping.BareJID, resource string, p mapping.Presence, at time.Time) updated {
	u.mu.Lock()
	defer u.mu.Unlock()
	var r updated
	e := u.m[bare]
	if e == nil {
		if len(u.m) >= u.max {
			u.evictLocked(&r)
		}
		e = &userPresence{bare: bare, res: mapping.Resources{Max: u.maxResources}}
		u.m[bare] = e
	} else {
		e.unlink()
	}
	u.pushFrontLocked(e)
	adds := p.State != mapping.StateOffline && p.State != mapping.StateUnset // as mapping.Resources.Update
	r.resourceEvicted = adds && e.res.Len() >= u.maxResources && !e.res.Has(resource)
	r.agg = e.res.Update(resource, p, at)
	if e.haveReported && e.reported.Equal(r.agg) {
		return r
	}
	e.reported, e.haveReported = r.agg, true
	r.changed = true
	return r
}

// evictLocked forgets the user heard from least recently, noting in r the
// offline presence to report for them if they were reported online.
func (u *users) evictLocked(r *updated) {
	e := u.lru.prev
	e.unlink()
	delete(u.m, e.bare)
	r.userEvicted = true
	if e.haveReported && e.reported.State.Online() {
		bare := e.bare
		r.offline, r.offlineAs = &bare, mapping.Presence{State: mapping.StateOffline, Status: e.reported.Status}
	}
}

func (u *users) pushFrontLocked(e *userPresence) {
	e.prev, e.next = &u.lru, u.lru.next
	u.lru.next.prev = e
	u.lru.next = e
}

func (e *userPresence) unlink() {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

// forget drops everything known of bare, when they no longer hold a
// subscription with any puppet: their presence is nobody's business here
// any more (the core ends what the subscription carried).
func (u *users) forget(bare mapping.BareJID) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.m[bare]; e != nil {
		e.unlink()
		delete(u.m, bare)
	}
}

// len returns the number of users kept.
func (u *users) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.m)
}

// resetResources forgets every resource but keeps what was reported: after
// a reconnect the server's probe answers rebuild the resources, and only a
// real difference is reported again.
func (u *users) resetResources() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, e := range u.m {
		e.res.Forget()
	}
}

// unreport forgets what was reported for bare, after a failed report, so
// that the next presence is reported whatever it is.
func (u *users) unreport(bare mapping.BareJID) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.m[bare]; e != nil {
		e.haveReported = false
	}
}

// allOffline forgets every resource and calls report, with the users lock
// held, for every user last reported online, with an offline presence that
// keeps their status; a report that fails is forgotten (see unreport). The
// lock keeps a presence received meanwhile from being reported before the
// offline one. unless is checked under the lock too: when it holds,
// nothing happens. allOffline returns how many users were reported.
func (u *users) allOffline(ctx context.Context, unless func() bool, report func(context.Context, mapping.BareJID, mapping.Presence) error) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if unless() {
		return 0
	}
	n := 0
	for bare, e := range u.m {
		e.res.Forget()
		if !e.haveReported || !e.reported.State.Online() {
			continue
		}
		off := mapping.Presence{State: mapping.StateOffline, Status: e.reported.Status}
		if err := report(ctx, bare, off); err != nil {
			e.haveReported = false
			continue
		}
		e.reported = off
		n++
	}
	return n
}
