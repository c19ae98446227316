package xmppside

import (
	"sync"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// puppets remembers, per Matrix user, the last presence the puppet showed
// and where it sent directed presence (RFC 6121 §4.6), so that probes,
// reconnects and shutdown can answer without asking the bus. Safe for
// concurrent use.
type puppets struct {
	mu sync.Mutex
	m  map[string]*puppetState
}

type puppetState struct {
	rec      bridge.PresenceRecord
	known    bool
	directed map[string]struct{} // JIDs that got directed presence and no unavailable since
}

func newPuppets() *puppets { return &puppets{m: make(map[string]*puppetState)} }

func (p *puppets) stateLocked(mxid string) *puppetState {
	s := p.m[mxid]
	if s == nil {
		s = &puppetState{}
		p.m[mxid] = s
	}
	return s
}

// setIfNewer records rec unless a record with a larger sequence is known; it
// reports whether rec is now the current one.
func (p *puppets) setIfNewer(mxid string, rec bridge.PresenceRecord) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stateLocked(mxid)
	if s.known && s.rec.Seq > rec.Seq {
		return false
	}
	s.rec, s.known = rec, true
	return true
}

// get returns the last known presence of the puppet.
func (p *puppets) get(mxid string) (bridge.PresenceRecord, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.m[mxid]
	if s == nil || !s.known {
		return bridge.PresenceRecord{}, false
	}
	return s.rec, true
}

// directed adds (available) or removes (unavailable) a directed-presence
// recipient.
func (p *puppets) directed(mxid, to string, available bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stateLocked(mxid)
	if !available {
		delete(s.directed, to)
		return
	}
	if s.directed == nil {
		s.directed = make(map[string]struct{})
	}
	s.directed[to] = struct{}{}
}

// takeDirected returns and forgets the directed-presence recipients of a
// puppet.
func (p *puppets) takeDirected(mxid string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.m[mxid]
	if s == nil {
		return nil
	}
	out := make([]string, 0, len(s.directed))
	for to := range s.directed {
		out = append(out, to)
	}
	s.directed = nil
	return out
}

// allDirected returns every puppet with directed-presence recipients.
func (p *puppets) allDirected() map[string][]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string][]string)
	for mxid, s := range p.m {
		for to := range s.directed {
			out[mxid] = append(out[mxid], to)
		}
	}
	return out
}
