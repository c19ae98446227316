package mapping

import "time"

// Resources aggregates the presences of one XMPP user's resources into the
// single presence the other network sees (RFC 6121 leaves this to us): the
// resource with the highest priority wins, then the most available, then the
// most recently updated. The zero value is ready to use; it is not safe for
// concurrent use.
type Resources struct {
	byName map[string]resourceEntry
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
		} else {
			delete(r.byName, resource)
		}
		r.lastActive = p.LastActive
	} else {
		if r.byName == nil {
			r.byName = make(map[string]resourceEntry, 2)
		}
		r.byName[resource] = resourceEntry{p: p, at: at}
	}
	agg := r.Aggregate()
	if agg.State.Online() {
		r.status = agg.Status
	}
	return agg
}

// Forget drops every resource but keeps the last status, for when the
// resources are about to be learnt again (after a reconnect, the server's
// probe answers).
func (r *Resources) Forget() { clear(r.byName) }

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
		return Presence{State: StateOffline, Status: r.status, LastActive: r.lastActive}
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
