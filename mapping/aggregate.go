package mapping

import "time"

// Resources aggregates the presences of one XMPP user's resources into the
// single presence the other network sees (RFC 6121 leaves this to us): the
// resource with the highest priority wins, then the most available, then the
// most recently updated. The zero value is ready to use; it is not safe for
// concurrent use.
type Resources struct {
	byName map[string]resourceEntry
	// last is what an unavailable presence said, kept so that "offline" can
	// still carry the last status message.
	last Presence
}

type resourceEntry struct {
	p  Presence
	at time.Time
}

// Update records the presence of one resource, observed at at, and returns
// the new aggregate. An offline presence removes the resource; an offline
// presence from the bare JID (resource "") removes all of them.
func (r *Resources) Update(resource string, p Presence, at time.Time) Presence {
	if p.State == StateOffline || p.State == StateUnset {
		if resource == "" {
			clear(r.byName)
		} else {
			delete(r.byName, resource)
		}
		r.last = p
		r.last.State = StateOffline
		if r.last.Status == "" {
			r.last.Status = r.lastStatus()
		}
		return r.Aggregate()
	}
	if r.byName == nil {
		r.byName = make(map[string]resourceEntry, 2)
	}
	r.byName[resource] = resourceEntry{p: p, at: at}
	r.last.Status = p.Status
	return r.Aggregate()
}

func (r *Resources) lastStatus() string { return r.last.Status }

// Aggregate returns the current aggregate: offline when no resource is
// available.
func (r *Resources) Aggregate() Presence {
	var best resourceEntry
	found := false
	for _, e := range r.byName {
		if !found || better(e, best) {
			best, found = e, true
		}
	}
	if !found {
		return Presence{State: StateOffline, Status: r.last.Status, LastActive: r.last.LastActive}
	}
	return best.p
}

// Len returns the number of available resources.
func (r *Resources) Len() int { return len(r.byName) }

func better(a, b resourceEntry) bool {
	if a.p.Priority != b.p.Priority {
		return a.p.Priority > b.p.Priority
	}
	if av, bv := a.p.State.Availability(), b.p.State.Availability(); av != bv {
		return av > bv
	}
	return a.at.After(b.at)
}
