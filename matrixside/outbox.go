package matrixside

import (
	"container/heap"
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// wireState is what the bridge can set of a ghost's presence: the Matrix
// presence value and status message (last_active_ago and currently_active
// are computed by the homeserver).
type wireState struct {
	Presence string
	Status   string
}

// ghostOut is the outgoing presence of one ghost.
type ghostOut struct {
	mxid, local, jid string
	path             string // PUT path, built once

	desired    wireState // latest state asked for
	sent       wireState // last state the homeserver accepted
	hasSent    bool
	failed     wireState // a state the homeserver refused for good
	hasFailed  bool
	lastPut    time.Time // start, then end, of the last PUT attempt
	scheduled  bool      // queued, delayed or in flight
	force      bool      // send even if unchanged (refresh)
	dueAt      time.Time
	heapIndex  int
	puts, errs int
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

// sendFunc sets a ghost's presence on the homeserver.
type sendFunc func(ctx context.Context, g *ghostOut, w wireState) error

// outbox coalesces ghost presence: per ghost only the latest desired state
// is kept, a PUT goes out only when it differs from what the homeserver
// last accepted, and never sooner than window after the ghost's previous
// PUT. Failures that may pass (network, 5xx, 429) close a gate for all
// ghosts: while the homeserver is away nothing is sent but probes, and the
// states pile up one per ghost, to be sent once each when it is back.
type outbox struct {
	window     time.Duration
	minBackoff time.Duration
	maxBackoff time.Duration
	send       sendFunc
	log        *slog.Logger

	mu        sync.Mutex
	ghosts    map[string]*ghostOut
	ready     []*ghostOut // FIFO of ghosts due now
	delayed   dueHeap     // ghosts due later
	gateUntil time.Time   // no PUT before this
	backoff   time.Duration
	wake      chan struct{}
}

func newOutbox(window time.Duration, send sendFunc, log *slog.Logger) *outbox {
	return &outbox{
		window:     window,
		minBackoff: 250 * time.Millisecond,
		maxBackoff: 10 * time.Second,
		send:       send,
		log:        log,
		ghosts:     map[string]*ghostOut{},
		wake:       make(chan struct{}, 1),
	}
}

// set records the desired state of a ghost and schedules it. It never
// blocks on I/O; it is called from the bus handler.
func (o *outbox) set(mxid, local, jid string, w wireState) {
	o.mu.Lock()
	g := o.ghosts[mxid]
	if g == nil {
		g = &ghostOut{mxid: mxid, local: local, jid: jid, path: presencePath(mxid), heapIndex: -1}
		o.ghosts[mxid] = g
	}
	g.desired = w
	o.scheduleLocked(g, time.Now())
	o.mu.Unlock()
}

// scheduleLocked queues g for its next allowed PUT if it needs one and is
// not queued already.
func (o *outbox) scheduleLocked(g *ghostOut, now time.Time) {
	if g.scheduled || !g.needsSend() {
		return
	}
	g.scheduled = true
	due := g.lastPut.Add(o.window)
	if !due.After(now) {
		o.ready = append(o.ready, g)
		o.signal()
		return
	}
	g.dueAt = due
	heap.Push(&o.delayed, g)
	o.signal() // a waiting worker may have to wake up sooner
}

func (o *outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// run is one sending worker; several run at once. It returns when ctx ends.
func (o *outbox) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		g, w, force, wait := o.next(time.Now())
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
		o.done(g, w, force, err, time.Now())
	}
}

// next pops the next ghost due at now and marks its PUT as started. With
// nothing due it returns how long to wait (-1: until woken).
func (o *outbox) next(now time.Time) (g *ghostOut, w wireState, force bool, wait time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if now.Before(o.gateUntil) {
		return nil, w, false, o.gateUntil.Sub(now)
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
			continue
		}
		if len(o.ready) > 0 {
			o.signal()
		}
		w, force = g.desired, g.force
		g.force = false
		g.lastPut = now
		g.puts++
		return g, w, force, 0
	}
	if len(o.delayed) > 0 {
		return nil, w, false, o.delayed[0].dueAt.Sub(now)
	}
	return nil, w, false, -1
}

// done records the outcome of a PUT of w and reschedules g if needed.
func (o *outbox) done(g *ghostOut, w wireState, force bool, err error, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	g.scheduled = false
	// The window runs from the end of the PUT: registering a new ghost
	// first can delay a PUT's arrival well past its start.
	g.lastPut = now
	if err == nil {
		g.sent, g.hasSent, g.hasFailed = w, true, false
		o.backoff = 0
		o.scheduleLocked(g, now)
		return
	}
	g.errs++
	if retry, after := retryable(err); retry {
		if after <= 0 {
			o.backoff = min(max(o.backoff*2, o.minBackoff), o.maxBackoff)
			after = o.backoff
		}
		if until := now.Add(after); until.After(o.gateUntil) {
			o.gateUntil = until
		}
		o.log.Warn("ghost presence not sent, will retry", "ghost", g.mxid, "retry_in", after, "err", err)
		g.force = g.force || force
		g.scheduled = true
		g.dueAt = o.gateUntil
		heap.Push(&o.delayed, g)
		return
	}
	o.log.Error("ghost presence refused", "ghost", g.mxid, "presence", w.Presence, "err", err)
	g.failed, g.hasFailed = w, true
	o.scheduleLocked(g, now)
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

// dueHeap orders delayed ghosts by due time.
type dueHeap []*ghostOut

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].dueAt.Before(h[j].dueAt) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex, h[j].heapIndex = i, j
}
func (h *dueHeap) Push(x any) {
	g := x.(*ghostOut)
	g.heapIndex = len(*h)
	*h = append(*h, g)
}
func (h *dueHeap) Pop() any {
	old := *h
	g := old[len(old)-1]
	old[len(old)-1] = nil
	g.heapIndex = -1
	*h = old[:len(old)-1]
	return g
}

// shownOnline returns the ghosts the homeserver last saw as not offline,
// with the state it has, for the clean shutdown.
func (o *outbox) shownOnline() map[*ghostOut]wireState {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[*ghostOut]wireState)
	for _, g := range o.ghosts {
		if g.hasSent && g.sent.Presence != mapping.MatrixOffline.String() {
			out[g] = g.sent
		}
	}
	return out
}
