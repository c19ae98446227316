package matrixside

import (
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// wireState is what the bridge can set of a ghost's presence: the Matrix
// presence value and status message (last_active_ago and currently_active
// are computed by the homeserver).
type wireState struct {
	Presence event.Presence
	Status   string
}

// ghostOut is the outgoing presence of one ghost.
type ghostOut struct {
	ghost id.UserID
	jid   mapping.BareJID
	url   string // of its presence, built once by the worker that sends it

	desired   wireState // latest state asked for
	version   uint64    // of desired: one more per set
	sent      wireState // last state the homeserver accepted
	hasSent   bool
	failed    wireState // a state the homeserver refused for good
	hasFailed bool
	// sentVersion and failedVersion are the newest versions known to be
	// shown (accepted, or equal to what was) or refused for good.
	sentVersion, failedVersion uint64

	scheduled bool // queued, delayed or in flight
	force     bool // send even if unchanged (refresh)
	dueAt     time.Time
}

// needsSend reports whether the desired state still has to go out.
func (g *ghostOut) needsSend() bool {
	if g.force {
		return true
	}
	if g.hasFailed && g.desired == g.failed {
		return false
	}
	return !g.hasSent || g.desired != g.sent
}

// settle records that the desired state needs no PUT: it is what the
// homeserver shows, or what it refused for good.
func (g *ghostOut) settle() {
	if g.hasFailed && g.desired == g.failed {
		g.failedVersion = g.version
	} else {
		g.sentVersion = g.version
	}
}

// sendFunc sets a ghost's presence on the homeserver.
type sendFunc func(ctx context.Context, g *ghostOut, w wireState) error

// errPresenceRefused is what waitShown returns when the homeserver refused
// the state for good.
var errPresenceRefused = errors.New("matrixside: ghost presence refused")

// outbox sends ghost presence: per ghost only the latest desired state is
// kept and a PUT goes out only when it differs from what the homeserver
// last accepted. It does not coalesce by time (the core does). Failures
// that may pass (network, 5xx, 429) close a gate for all ghosts: while
// the homeserver is away or limiting nothing is sent, and the states pile
// up one per ghost, to be sent once each when the gate opens (after
// retry_after_ms, or a backoff that doubles up to maxBackoff).
type outbox struct {
	minBackoff time.Duration
	maxBackoff time.Duration
	send       sendFunc
	log        *slog.Logger

	mu        sync.Mutex
	ghosts    map[id.UserID]*ghostOut
	ready     []*ghostOut // FIFO of ghosts due now
	delayed   dueHeap     // ghosts due later
	gateUntil time.Time   // no PUT before this
	backoff   time.Duration
	wake      chan struct{}
	changed   chan struct{} // closed and replaced when a PUT ends
}

func newOutbox(send sendFunc, log *slog.Logger) *outbox {
	return &outbox{
		minBackoff: 250 * time.Millisecond,
		maxBackoff: 10 * time.Second,
		send:       send,
		log:        log,
		ghosts:     map[id.UserID]*ghostOut{},
		wake:       make(chan struct{}, 1),
		changed:    make(chan struct{}),
	}
}

// set records the desired state of a ghost and schedules it; it returns
// the version of that state, for waitShown, and whether a PUT is needed
// (false: the homeserver shows it already). It never blocks on I/O.
func (o *outbox) set(ghost id.UserID, jid mapping.BareJID, w wireState) (uint64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	g := o.ghosts[ghost]
	if g == nil {
		g = &ghostOut{ghost: ghost, jid: jid}
		o.ghosts[ghost] = g
	}
	g.desired = w
	g.version++
	o.scheduleLocked(g)
	if !g.scheduled { // settled at once: what the homeserver shows already
		o.broadcastLocked()
		return g.version, false
	}
	return g.version, true
}

// waitShown waits until version of ghost's state (or a newer one) is
// shown by the homeserver. It returns errPresenceRefused if the
// homeserver refused it for good, or ctx's error.
func (o *outbox) waitShown(ctx context.Context, ghost id.UserID, version uint64) error {
	for {
		o.mu.Lock()
		g, ch := o.ghosts[ghost], o.changed
		var shown, refused bool
		if g != nil {
			shown, refused = g.sentVersion >= version, g.failedVersion >= version
		}
		o.mu.Unlock()
		switch {
		case shown:
			return nil
		case refused:
			return errPresenceRefused
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// scheduleLocked queues g if it needs a PUT and is not queued or in
// flight already (a PUT in flight reschedules when it ends).
func (o *outbox) scheduleLocked(g *ghostOut) {
	if g.scheduled {
		return
	}
	if !g.needsSend() {
		g.settle()
		return
	}
	g.scheduled = true
	o.ready = append(o.ready, g)
	o.signal()
}

func (o *outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// broadcastLocked wakes the waiters of waitShown.
func (o *outbox) broadcastLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// run is one sending worker; several run at once. It returns when ctx ends.
func (o *outbox) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		g, w, version, force, wait := o.next(time.Now())
		if g == nil {
			if wait < 0 {
				wait = time.Hour
			}
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-o.wake:
			case <-timer.C:
			}
			continue
		}
		err := o.send(ctx, g, w)
		if ctx.Err() != nil {
			return
		}
		o.done(g, w, version, force, err, time.Now())
	}
}

// next pops the next ghost due at now and marks its PUT as started. With
// nothing due it returns how long to wait (-1: until woken).
func (o *outbox) next(now time.Time) (g *ghostOut, w wireState, version uint64, force bool, wait time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if now.Before(o.gateUntil) {
		return nil, w, 0, false, o.gateUntil.Sub(now)
	}
	for len(o.delayed) > 0 && !o.delayed[0].dueAt.After(now) {
		o.ready = append(o.ready, heap.Pop(&o.delayed).(*ghostOut))
	}
	for len(o.ready) > 0 {
		g = o.ready[0]
		o.ready[0] = nil
		o.ready = o.ready[1:]
		if !g.needsSend() { // became unchanged while queued
			g.scheduled = false
			g.settle()
			o.broadcastLocked()
			continue
		}
		if len(o.ready) > 0 {
			o.signal()
		}
		w, version, force = g.desired, g.version, g.force
		g.force = false
		return g, w, version, force, 0
	}
	if len(o.delayed) > 0 {
		return nil, w, 0, false, o.delayed[0].dueAt.Sub(now)
	}
	return nil, w, 0, false, -1
}

// done records the outcome of a PUT of w (version) and reschedules g if
// needed.
func (o *outbox) done(g *ghostOut, w wireState, version uint64, force bool, err error, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	defer o.broadcastLocked()
	g.scheduled = false
	if err == nil {
		g.sent, g.hasSent, g.hasFailed = w, true, false
		g.sentVersion = max(g.sentVersion, version)
		o.backoff = 0
		o.scheduleLocked(g)
		return
	}
	if retry, after := retryable(err); retry {
		if after <= 0 {
			o.backoff = min(max(o.backoff*2, o.minBackoff), o.maxBackoff)
			after = o.backoff
		}
		if until := now.Add(after); until.After(o.gateUntil) {
			o.gateUntil = until
		}
		o.log.Warn("ghost presence not sent, will retry", "ghost", g.ghost, "retry_in", after, "err", err)
		g.force = g.force || force
		g.scheduled = true
		g.dueAt = o.gateUntil
		heap.Push(&o.delayed, g)
		return
	}
	o.log.Error("ghost presence refused", "ghost", g.ghost, "presence", w.Presence, "err", err)
	g.failed, g.hasFailed = w, true
	g.failedVersion = max(g.failedVersion, version)
	o.scheduleLocked(g)
}

// refresh re-sends the presence of every ghost that has one, spread evenly
// over period so the homeserver sees a trickle, not a burst.
func (o *outbox) refresh(period time.Duration, now time.Time) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	var gs []*ghostOut
	for _, g := range o.ghosts {
		if g.hasSent && !g.scheduled {
			gs = append(gs, g)
		}
	}
	for i, g := range gs {
		g.force = true
		g.scheduled = true
		g.dueAt = now.Add(period * time.Duration(i) / time.Duration(len(gs)))
		heap.Push(&o.delayed, g)
	}
	if len(gs) > 0 {
		o.signal()
	}
	return len(gs)
}

// idle reports whether nothing is queued or in flight.
func (o *outbox) idle() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, g := range o.ghosts {
		if g.scheduled {
			return false
		}
	}
	return true
}

// shownOnline returns the ghosts the homeserver last saw as not offline,
// with the state it has, for the clean shutdown.
func (o *outbox) shownOnline() map[*ghostOut]wireState {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[*ghostOut]wireState)
	for _, g := range o.ghosts {
		if g.hasSent && g.sent.Presence != event.PresenceOffline {
			out[g] = g.sent
		}
	}
	return out
}

// dueHeap orders delayed ghosts by due time.
type dueHeap []*ghostOut

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].dueAt.Before(h[j].dueAt) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(*ghostOut)) }
func (h *dueHeap) Pop() any {
	old := *h
	g := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return g
}
