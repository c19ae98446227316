package xmppside

import (
	"context"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// maxTrackedUsers bounds the users map: above it, users known to be offline
// are forgotten, so that presence from many throw-away JIDs cannot grow
// memory without limit.
const maxTrackedUsers = 1 << 16

// users aggregates the resources of every XMPP user that sends presence to
// a puppet and remembers what was last reported for them, so that one
// change is reported once even though the XMPP server delivers it to every
// puppet the user shares presence with. Safe for concurrent use.
type users struct {
	mu sync.Mutex
	m  map[mapping.BareJID]*userPresence
}

type userPresence struct {
	res          mapping.Resources
	reported     mapping.Presence
	haveReported bool
}

func newUsers() *users { return &users{m: make(map[mapping.BareJID]*userPresence)} }

// update records one resource's presence and returns the new aggregate and
// whether it differs from what was last reported; if so it is recorded as
// reported.
func (u *users) update(bare mapping.BareJID, resource string, p mapping.Presence, at time.Time) (mapping.Presence, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	e := u.m[bare]
	if e == nil {
		if len(u.m) >= maxTrackedUsers {
			u.pruneLocked()
		}
		e = &userPresence{}
		u.m[bare] = e
	}
	agg := e.res.Update(resource, p, at)
	if e.haveReported && e.reported.Equal(agg) {
		return agg, false
	}
	e.reported, e.haveReported = agg, true
	return agg, true
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

func (u *users) pruneLocked() {
	for k, e := range u.m {
		if e.res.Len() == 0 {
			delete(u.m, k)
		}
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
