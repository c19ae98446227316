package xmppside

import (
	"math/rand/v2"
	"time"
)

// backoff is capped exponential backoff with jitter: attempt n waits a
// random time in [d/2, d] with d = min·2ⁿ capped at max, so that several
// bridges restarted together do not reconnect in lockstep.
type backoff struct {
	min, max time.Duration
	attempt  int
}

// next returns the wait before the next attempt and counts it.
func (b *backoff) next() time.Duration {
	d := b.min
	for i := 0; i < b.attempt && d < b.max; i++ {
		d *= 2
	}
	if d > b.max {
		d = b.max
	}
	b.attempt++
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(d-half+1)
}

// reset starts over after a connection that worked.
func (b *backoff) reset() { b.attempt = 0 }
