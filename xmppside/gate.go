package xmppside

import "sync"

// gate lets callbacks that arrive on goroutines the component does not own
// (NATS subscription callbacks) run until the gate is closed, and lets the
// closer wait until every callback that got in has left.
type gate struct {
	mu     sync.RWMutex
	closed bool
	wg     sync.WaitGroup
}

// enter reports whether the callback may run; if so it must call leave.
func (g *gate) enter() bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

func (g *gate) leave() { g.wg.Done() }

// close stops new callbacks and waits for running ones. Idempotent.
func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
