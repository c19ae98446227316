package mapping

import "time"

// Resources aggregates the presences of one XMPP user's resources into the
// single presence the other network sees (RFC 6121 leaves this to us): the
// resource with the highest priority wins, then the most available, then the
// most recently updated. The zero value is ready to use; it is not safe for
// concurrent use.
//
// The aggregate is kept up to date incrementally: an update costs a
// comparison with the current winner, and a scan of the resources only when
// the winner goes or gets worse (at most Max entries when Max is set).
type Resources struct {
	// Max, when positive, caps the number of resources kept: a new
	// resource beyond it replaces the one updated least recently. XMPP puts
	// no bound on a user's resources, and a hostile server can invent any
	// number of them for its own users.
	Max int

	byName map[string]resourceEntry
	// best is the resource of the aggregate; valid when byName is not
	// empty.
	best string
	// status is the aggregate's status the last time it was available:
	// offline carries it. The text of an unavailable stanza is not kept:
	// servers write their own there ("Disconnected: Received SIGTERM"),
	// and it is not what the person said.
	status string
	// lastActive is what the last unavailable said of the user's last
	// activity (XEP-0319 idle), if anything.
	lastActive time.Time
}

type resourceEntry struct {
	p  Presence
	at time.Time
}

// Update records the presence of one resource, observed at at, and returns
// the new aggregate. An offline presence removes the resource; an offline
// presence from the bare JID (resource "") removes all of them. When no
// resource is left the aggregate is offline with the status the person
// last showed while available.
func (r *Resources) Update(resource string, p Presence, at time.Time) Presence {
	if p.State == StateOffline || p.State == StateUnset {
		if resource == "" {
			clear(r.byName)
		} else if _, ok := r.byName[resource]; ok {
			delete(r.byName, resource)
			if resource == r.best {
				r.rescan()
			}
		}
		r.lastActive = p.LastActive
	} else {
		if r.byName == nil {
			r.byName = make(map[string]resourceEntry, 2)
		}
		e := resourceEntry{p: p, at: at}
		old, exists := r.byName[resource]
		if !exists && r.Max > 0 && len(r.byName) >= r.Max {
			r.evictOldest()
		}
		r.byName[resource] = e
		switch {
		case len(r.byName) == 1:
			r.best = resource
		case resource == r.best:
			if exists && better(old, e) {
				r.rescan() // the winner got worse: another may win now
			}
		case better(e, r.byName[r.best]):
			r.best = resource
		}
	}
	agg := r.Aggregate()
	if agg.State.Online() {
		r.status = agg.Status
	}
	return agg
}

// evictOldest removes the resource updated least recently.
func (r *Resources) evictOldest() {
	var oldest string
	var at time.Time
	first := true
	for name, e := range r.byName {
		if first || e.at.Before(at) {
			oldest, at, first = name, e.at, false
		}
	}
	delete(r.byName, oldest)
	if oldest == r.best {
		r.rescan()
	}
}

// rescan finds the winner among all resources.
func (r *Resources) rescan() {
	found := false
	var best resourceEntry
	for name, e := range r.byName {
		if !found || better(e, best) {
			r.best, best, found = name, e, true
		}
	}
}

// Forget drops every resource but keeps the last status, for when the
// resources are about to be learnt again (after a reconnect, the server's
// probe answers).
func (r *Resources) Forget() { clear(r.byName) }

// Aggregate returns the current aggregate: offline when no resource is
// available.
func (r *Resources) Aggregate() Presence {
	if e, ok := r.byName[r.best]; ok {
		return e.p
	}
	return Presence{State: StateOffline, Status: r.status, LastActive: r.lastActive}
}

// Len returns the number of available resources.
func (r *Resources) Len() int { return len(r.byName) }

// Has reports whether resource is one of the available resources.
func (r *Resources) Has(resource string) bool {
	_, ok := r.byName[resource]
	return ok
}

func better(a, b resourceEntry) bool {
	if a.p.Priority != b.p.Priority {
		return a.p.Priority > b.p.Priority
	}
	if av, bv := a.p.State.Availability(), b.p.State.Availability(); av != bv {
		return av > bv
	}
	return a.at.After(b.at)
}
