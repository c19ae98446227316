package matrixside

import (
	"container/heap"
	"container/list"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"maunium.net/go/mautrix"
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
	cli   *mautrix.Client // made by the worker that first sends it
	url   string          // of its presence, likewise
	rec   *ghostRecord    // its record in the GhostPresence bucket, likewise

	desired wireState // latest state asked for
	version uint64    // of desired: one more per set
	// desiredAt is when the presence desired shows was observed on XMPP,
	// reported on its delivery; zero once reported, or if unknown.
	desiredAt time.Time
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
	retries   int           // failed PUTs in a row, for its own back-off
	readyEl   *list.Element // in ready
	heapIdx   int           // in delayed; -1 if not
	evicted   bool          // forgotten at the max_tracked bound
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
// homeserver shows, or what it refused for good. No delivery of it is
// reported.
func (g *ghostOut) settle() {
	g.desiredAt = time.Time{}
	if g.hasFailed && g.desired == g.failed {
		g.failedVersion = g.version
	} else {
		g.sentVersion = g.version
	}
}

// sendFunc sets a ghost's presence on the homeserver. force: even if the
// ghost's record says the homeserver shows it (a refresh); without it,
// such a state is not sent and the result is errAlreadyShown.
type sendFunc func(ctx context.Context, g *ghostOut, w wireState, force bool) error

var (
	// errPresenceRefused is what waitShown returns when the homeserver
	// refused the state for good.
	errPresenceRefused = errors.New("matrixside: ghost presence refused")
	// errPresenceForgotten is what waitShown returns when the ghost was
	// forgotten at the max_tracked bound before its state was shown.
	errPresenceForgotten = errors.New("matrixside: ghost presence forgotten (max_tracked)")
)

// gateWaiter is the homeserver gate as the outbox sees it (health.wait).
type gateWaiter interface {
	wait(now time.Time) (time.Duration, <-chan struct{})
}

// outbox sends ghost presence: per ghost only the latest desired state is
// kept and a PUT goes out only when it differs from what the homeserver
// last accepted. It does not coalesce by time (the core does). While the
// homeserver gate is closed (it is down or limiting, see health) nothing
// is sent, and the states pile up one per ghost, to be sent once each
// when it opens; a ghost whose own PUT fails also waits a back-off of its
// own (minBackoff doubling to maxBackoff), or the retry_after_ms it got.
//
// At most max ghosts are kept: setting one more forgets the one set least
// recently, whatever its state (its pending state is dropped, and it is
// not set offline on shutdown). The core sends presence only for people
// with a link, so the bound is reached only if there are more of them.
type outbox struct {
	minBackoff time.Duration
	maxBackoff time.Duration
	send       sendFunc
	gate       gateWaiter
	log        *slog.Logger
	refusedLog *sampledLog

	mu      sync.Mutex
	ghosts  *lru[id.UserID, *ghostOut]
	ready   list.List // FIFO of *ghostOut due now
	delayed dueHeap   // ghosts due later
	pending int       // ghosts scheduled: queued, delayed or in flight
	wake    chan struct{}
	changed chan struct{} // closed and replaced when a PUT ends

	delivered func(observedAt time.Time) // see bridge.DeliveryReporter; may be nil
}

func newOutbox(send sendFunc, gate gateWaiter, max int, log *slog.Logger) *outbox {
	o := &outbox{
		minBackoff: 250 * time.Millisecond,
		maxBackoff: 10 * time.Second,
		send:       send,
		gate:       gate,
		log:        log,
		refusedLog: newSampledLog(log, slog.LevelError, "ghost presence refused by the homeserver"),
		wake:       make(chan struct{}, 1),
		changed:    make(chan struct{}),
	}
	o.ghosts = newLRU(max, o.forgetLocked)
	return o
}

// forgetLocked takes an evicted ghost out of the queues.
func (o *outbox) forgetLocked(_ id.UserID, g *ghostOut) {
	g.evicted = true
	if g.readyEl != nil {
		o.ready.Remove(g.readyEl)
		g.readyEl = nil
	}
	if g.heapIdx >= 0 {
		heap.Remove(&o.delayed, g.heapIdx)
	}
	o.setScheduledLocked(g, false)
}

func (o *outbox) evictedCount() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ghosts.evicted
}

// set records the desired state of a ghost, observed at observedAt (zero:
// unknown), and schedules it; it returns the version of that state, for
// waitShown, and whether a PUT is needed (false: the homeserver shows it
// already). It never blocks on I/O.
func (o *outbox) set(ghost id.UserID, jid mapping.BareJID, w wireState, observedAt time.Time) (uint64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	g, ok := o.ghosts.get(ghost)
	if !ok {
		g = &ghostOut{ghost: ghost, jid: jid, heapIdx: -1}
		o.ghosts.put(ghost, g)
	}
	g.desired = w
	g.desiredAt = observedAt
	g.version++
	o.scheduleLocked(g)
	if !g.scheduled { // settled at once: what the homeserver shows already
		o.broadcastLocked()
		return g.version, false
	}
	return g.version, true
}

// setIfNone is set for a ghost the outbox knows nothing of yet: what a
// start restores from the stores never overrides what the core asked.
func (o *outbox) setIfNone(ghost id.UserID, jid mapping.BareJID, w wireState) bool {
	o.mu.Lock()
	_, known := o.ghosts.peek(ghost)
	o.mu.Unlock()
	if known {
		return false
	}
	o.set(ghost, jid, w, time.Time{})
	return true
}

// waitShown waits until version of ghost's state (or a newer one) is
// shown by the homeserver. It returns errPresenceRefused if the
// homeserver refused it for good, errPresenceForgotten if the ghost was
// forgotten meanwhile, or ctx's error.
func (o *outbox) waitShown(ctx context.Context, ghost id.UserID, version uint64) error {
	for {
		o.mu.Lock()
		g, ok := o.ghosts.peek(ghost)
		ch := o.changed
		var shown, refused bool
		if ok {
			shown, refused = g.sentVersion >= version, g.failedVersion >= version
		}
		o.mu.Unlock()
		switch {
		case !ok:
			return errPresenceForgotten
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
	o.setScheduledLocked(g, true)
	g.readyEl = o.ready.PushBack(g)
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
		g, w, at, version, force, wait, gateChanged := o.next(time.Now())
		if g == nil {
			if wait < 0 {
				wait = time.Hour
			}
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-o.wake:
			case <-gateChanged:
			case <-timer.C:
			}
			continue
		}
		err := o.send(ctx, g, w, force)
		if ctx.Err() != nil {
			return
		}
		if o.done(g, w, at, version, force, err, time.Now()) && o.delivered != nil {
			o.delivered(at)
		}
	}
}

// next pops the next ghost due at now and marks its PUT as started,
// returning the state to send and when it was observed. With nothing due,
// or the gate closed, it returns how long to wait (-1: until woken) and
// the gate's channel.
func (o *outbox) next(now time.Time) (g *ghostOut, w wireState, at time.Time, version uint64, force bool, wait time.Duration, gateChanged <-chan struct{}) {
	if d, ch := o.gate.wait(now); d != 0 {
		return nil, w, at, 0, false, d, ch
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for len(o.delayed) > 0 && !o.delayed[0].dueAt.After(now) {
		g := heap.Pop(&o.delayed).(*ghostOut)
		g.readyEl = o.ready.PushBack(g)
	}
	for e := o.ready.Front(); e != nil; e = o.ready.Front() {
		g = o.ready.Remove(e).(*ghostOut)
		g.readyEl = nil
		if !g.needsSend() { // became unchanged while queued
			o.setScheduledLocked(g, false)
			g.settle()
			o.broadcastLocked()
			continue
		}
		if o.ready.Len() > 0 {
			o.signal()
		}
		w, at, version, force = g.desired, g.desiredAt, g.version, g.force
		g.force = false
		return g, w, at, version, force, 0, nil
	}
	if len(o.delayed) > 0 {
		return nil, w, at, 0, false, o.delayed[0].dueAt.Sub(now), nil
	}
	return nil, w, at, 0, false, -1, nil
}

// done records the outcome of a PUT of w (version, observed at at) and
// reschedules g if needed. It reports whether w was delivered with an
// observation time not reported yet: the caller reports at.
func (o *outbox) done(g *ghostOut, w wireState, at time.Time, version uint64, force bool, err error, now time.Time) (report bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	defer o.broadcastLocked()
	if g.evicted {
		return false
	}
	o.setScheduledLocked(g, false)
	shownAlready := errors.Is(err, errAlreadyShown)
	if err == nil || shownAlready {
		g.sent, g.hasSent, g.hasFailed = w, true, false
		g.sentVersion = max(g.sentVersion, version)
		g.retries = 0
		if g.desired == w {
			// Reported once: a forced re-send (a refresh) reports
			// nothing. A newer state keeps its own time.
			g.desiredAt = time.Time{}
		}
		o.scheduleLocked(g)
		return !at.IsZero() && !shownAlready
	}
	if retry, after := retryable(err); retry {
		// Not sent through the closed gate: the gate paces it. Otherwise
		// a back-off of the ghost's own, so that a ghost the homeserver
		// fails on (a 500 for it alone) is not retried at the gate's pace.
		if !errors.Is(err, ErrHomeserverDown) {
			g.retries++
			if after <= 0 {
				after = min(o.minBackoff<<min(g.retries-1, 16), o.maxBackoff)
			}
		} else {
			after = 0
		}
		o.log.Debug("ghost presence not sent, will retry", "ghost", g.ghost, "retry_in", after, "err", err)
		g.force = g.force || force
		o.setScheduledLocked(g, true)
		g.dueAt = now.Add(after)
		heap.Push(&o.delayed, g)
		return false
	}
	o.refusedLog.note(now, "ghost", g.ghost, "presence", w.Presence, "err", err)
	g.failed, g.hasFailed = w, true
	g.failedVersion = max(g.failedVersion, version)
	g.retries = 0
	o.scheduleLocked(g) // settles the refused state: nothing reported
	return false
}

// refresh re-sends the presence of every ghost that has one, spread evenly
// over period so the homeserver sees a trickle, not a burst.
func (o *outbox) refresh(period time.Duration, now time.Time) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	var gs []*ghostOut
	o.ghosts.each(func(_ id.UserID, g *ghostOut) {
		if g.hasSent && !g.scheduled {
			gs = append(gs, g)
		}
	})
	for i, g := range gs {
		g.force = true
		o.setScheduledLocked(g, true)
		g.dueAt = now.Add(period * time.Duration(i) / time.Duration(len(gs)))
		heap.Push(&o.delayed, g)
	}
	if len(gs) > 0 {
		o.signal()
	}
	return len(gs)
}

// setScheduledLocked sets g.scheduled, keeping count.
func (o *outbox) setScheduledLocked(g *ghostOut, on bool) {
	switch {
	case on && !g.scheduled:
		o.pending++
	case !on && g.scheduled:
		o.pending--
	}
	g.scheduled = on
}

// idle reports whether nothing is queued or in flight.
func (o *outbox) idle() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pending == 0
}

// shownOnline returns the ghosts the homeserver last saw as not offline,
// with the state it has, for the clean shutdown.
func (o *outbox) shownOnline() map[*ghostOut]wireState {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[*ghostOut]wireState)
	o.ghosts.each(func(_ id.UserID, g *ghostOut) {
		if g.hasSent && g.sent.Presence != event.PresenceOffline {
			out[g] = g.sent
		}
	})
	return out
}

// dueHeap orders delayed ghosts by due time; each knows its index, so
// that a forgotten ghost can be taken out.
type dueHeap []*ghostOut

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].dueAt.Before(h[j].dueAt) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *dueHeap) Push(x any) {
	g := x.(*ghostOut)
	g.heapIdx = len(*h)
	*h = append(*h, g)
}
func (h *dueHeap) Pop() any {
	old := *h
	g := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	g.heapIdx = -1
	return g
}
