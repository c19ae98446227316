package core

import (
	"sync"
	"sync/atomic"
	"time"
)

// coalescer rate-limits emissions per key: the first offer after a quiet
// window is emitted at once (no added latency for single changes); offers
// within the window replace each other and the latest is emitted when the
// window ends. So a burst costs at most one emission per window per key and
// its final state is never lost.
type coalescer[T any] struct {
	window time.Duration
	emit   func(key string, v T)

	mu       sync.Mutex
	slots    map[string]*slot[T]
	stopped  bool
	inflight sync.WaitGroup // timer emissions under way, awaited by Flush
	replaced atomic.Int64   // offers that replaced a pending one: coalesced away
}

type slot[T any] struct {
	last    time.Time // when the last emission happened
	pending bool
	value   T
	timer   *time.Timer
}

func newCoalescer[T any](window time.Duration, emit func(string, T)) *coalescer[T] {
	return &coalescer[T]{window: window, emit: emit, slots: make(map[string]*slot[T])}
}

// Offer hands in the latest value for key.
func (c *coalescer[T]) Offer(key string, v T) {
	now := time.Now()
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	s := c.slots[key]
	if s == nil {
		if c.window <= 0 {
			// Nothing to coalesce: no slot, so nothing to forget.
			c.inflight.Add(1)
			c.mu.Unlock()
			defer c.inflight.Done()
			c.emit(key, v)
			return
		}
		s = &slot[T]{}
		c.slots[key] = s
	}
	if s.timer == nil && now.Sub(s.last) >= c.window {
		s.last = now
		// Come back after the window: to send what arrived meanwhile, or
		// to forget the idle key (the map holds only recent keys).
		s.timer = time.AfterFunc(c.window, func() { c.fire(key, s) })
		c.inflight.Add(1)
		c.mu.Unlock()
		defer c.inflight.Done()
		c.emit(key, v)
		return
	}
	if s.pending {
		c.replaced.Add(1)
	}
	s.value, s.pending = v, true
	if s.timer == nil {
		s.timer = time.AfterFunc(s.last.Add(c.window).Sub(now), func() { c.fire(key, s) })
	}
	c.mu.Unlock()
}

// fire ends the window of slot s of key. A timer of a slot that was
// forgotten finds another slot, or none, and does nothing.
func (c *coalescer[T]) fire(key string, s *slot[T]) {
	c.mu.Lock()
	if c.stopped || c.slots[key] != s {
		c.mu.Unlock()
		return
	}
	s.timer = nil
	if !s.pending {
		delete(c.slots, key)
		c.mu.Unlock()
		return
	}
	v := s.value
	var zero T
	s.value, s.pending = zero, false
	s.last = time.Now()
	// Come back once more after the window to forget an idle key.
	s.timer = time.AfterFunc(c.window, func() { c.fire(key, s) })
	c.inflight.Add(1)
	c.mu.Unlock()
	defer c.inflight.Done()
	c.emit(key, v)
}

// Forget drops what is pending for key: nothing more is emitted for it
// unless it is offered again.
func (c *coalescer[T]) Forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.slots[key]; s != nil {
		if s.timer != nil {
			s.timer.Stop()
		}
		delete(c.slots, key)
	}
}

// FlushKeys emits what is pending for keys now and forgets them.
func (c *coalescer[T]) FlushKeys(keys []string) {
	type kv struct {
		k string
		v T
	}
	var out []kv
	c.mu.Lock()
	for _, k := range keys {
		s := c.slots[k]
		if s == nil {
			continue
		}
		if s.timer != nil {
			s.timer.Stop()
		}
		if s.pending {
			out = append(out, kv{k, s.value})
		}
		delete(c.slots, k)
	}
	if !c.stopped {
		c.inflight.Add(1)
		defer c.inflight.Done()
	}
	c.mu.Unlock()
	for _, e := range out {
		c.emit(e.k, e.v)
	}
}

// size is the number of keys held, for tests of bounded memory.
func (c *coalescer[T]) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.slots)
}

// Flush emits every pending value now, stops all timers, and returns once
// no emission is under way: nothing is emitted after it returns.
func (c *coalescer[T]) Flush() {
	c.mu.Lock()
	c.stopped = true
	type kv struct {
		k string
		v T
	}
	var out []kv
	for k, s := range c.slots {
		if s.timer != nil {
			s.timer.Stop()
		}
		if s.pending {
			out = append(out, kv{k, s.value})
		}
	}
	clear(c.slots)
	c.mu.Unlock()
	for _, e := range out {
		c.emit(e.k, e.v)
	}
	c.inflight.Wait()
}
