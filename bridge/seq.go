package bridge

import (
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"
)

// Sequencer hands out per-process increasing sequence numbers that also
// increase across restarts: each is max(previous+1, wall clock in ns), a
// hybrid logical clock. Safe for concurrent use.
type Sequencer struct {
	mu   sync.Mutex
	last uint64
	now  func() time.Time
}

// Next returns the next sequence number.
func (s *Sequencer) Next() uint64 {
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	t := uint64(now().UnixNano())
	s.mu.Lock()
	defer s.mu.Unlock()
	if t <= s.last {
		t = s.last + 1
	}
	s.last = t
	return t
}

// NewID returns a random event id.
func NewID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
