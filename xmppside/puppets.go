package xmppside

import (
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// shown is a presence a puppet was asked to show.
type shown struct {
	presence mapping.Presence
	seq      uint64    // the command's sequence; 0 if not stamped
	at       time.Time // when it was observed on Matrix (UTC)
	// observed is the command's ObservedAt, reported once when the
	// presence is written to the stream; zero once reported, or if the
	// command had none.
	observed time.Time
}

// puppets remembers, per Matrix user, the last presence the core asked the
// puppet to show, so that probes, reconnects and subscription approvals
// answer without a bucket read. After a restart it is filled lazily from
// the core's presence bucket (see currentPresence). Safe for concurrent use.
type puppets struct {
	mu sync.Mutex
	m  map[mapping.UserID]shown
}

func newPuppets() *puppets { return &puppets{m: make(map[mapping.UserID]shown)} }

// set records s and reports whether the puppet's presence changed. A
// command older than the known one (both stamped, smaller sequence) and a
// repeated one change nothing.
func (p *puppets) set(id mapping.UserID, s shown) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur, ok := p.m[id]
	switch {
	case !ok:
	case cur.seq != 0 && s.seq != 0 && s.seq < cur.seq:
		return false
	case cur.presence.Equal(s.presence):
		cur.seq = max(cur.seq, s.seq)
		p.m[id] = cur
		return false
	}
	p.m[id] = s
	return true
}

// setIfUnknown records s only when nothing is known of the puppet yet, so
// that a bucket read racing with a command never replaces the command's
// presence. It returns what is known afterwards.
func (p *puppets) setIfUnknown(id mapping.UserID, s shown) shown {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur, ok := p.m[id]; ok {
		return cur
	}
	p.m[id] = s
	return s
}

// delivered records that s, read for id, was written to the stream, and
// reports whether its observation time is to be reported: once, so that
// it is cleared if s is still the puppet's presence (a newer one keeps
// its own).
func (p *puppets) delivered(id mapping.UserID, s shown) bool {
	if s.observed.IsZero() {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur, ok := p.m[id]; ok && cur.observed.Equal(s.observed) && cur.presence.Equal(s.presence) {
		cur.observed = time.Time{}
		p.m[id] = cur
	}
	return true
}

// get returns the last presence shown by the puppet.
func (p *puppets) get(id mapping.UserID) (shown, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.m[id]
	return s, ok
}

// forget drops what is known of a puppet left without contacts.
func (p *puppets) forget(id mapping.UserID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, id)
}
