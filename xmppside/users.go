package xmppside

import (
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// maxTrackedUsers bounds the users map: above it, users known to be offline
// are forgotten, so that presence from many throw-away JIDs cannot grow
// memory without limit.
const maxTrackedUsers = 1 << 16

// users aggregates the resources of every XMPP user that sends presence to
// a puppet and remembers what was last published for them, so that one
// change is published once even though the XMPP server delivers it to every
// puppet the user shares presence with. Safe for concurrent use.
type users struct {
	mu sync.Mutex
	m  map[string]*userPresence
}

type userPresence struct {
	res       mapping.Resources
	published mapping.Presence
	havePub   bool
}

func newUsers() *users { return &users{m: make(map[string]*userPresence)} }

// update records one resource's presence and returns the new aggregate and
// whether it differs from what was last published; if so it is recorded as
// published.
func (u *users) update(bare, resource string, p mapping.Presence, at time.Time) (mapping.Presence, bool) {
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
	if e.havePub && e.published.Equal(agg) {
		return agg, false
	}
	e.published, e.havePub = agg, true
	return agg, true
}

// resetResources forgets every resource but keeps what was published: after
// a reconnect the server's probe answers rebuild the resources, and only a
// real difference is published again.
func (u *users) resetResources() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, e := range u.m {
		e.res = mapping.Resources{}
	}
}

func (u *users) pruneLocked() {
	for k, e := range u.m {
		if e.res.Len() == 0 {
			delete(u.m, k)
		}
	}
}

// unpublish forgets what was published for bare, after a failed publish, so
// that the next presence is published whatever it is.
func (u *users) unpublish(bare string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.m[bare]; e != nil {
		e.havePub = false
	}
}
