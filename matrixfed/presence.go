package matrixfed

import (
	"context"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.mau.fi/util/jsontime"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Batching of one transaction: pushes per m.presence EDU, EDUs per
// transaction (the spec allows 100).
const (
	pushesPerEDU = 100
	edusPerTxn   = 50
)

// ShowGhost makes the ghost of c.User show c.Presence to every server
// that shares a room with it. It never blocks: the latest presence per
// ghost is kept, and each destination's queue sends it when it can.
// Unknown presence leaves the ghost as it is.
func (g *Gateway) ShowGhost(_ context.Context, c bridge.GhostPresence) error {
	g.showGhost(c.User, c.Presence, c.ObservedAt)
	return nil
}

func (g *Gateway) showGhost(jid mapping.BareJID, p mapping.Presence, observedAt time.Time) {
	if p.State == mapping.StateUnknown || p.State == mapping.StateUnset {
		return
	}
	gm, err := g.ns.GhostMXID(jid)
	if err != nil {
		g.log.Warn("no ghost for user", "user", jid, "err", err)
		return
	}
	ghost := id.UserID(gm)
	g.out.set(ghost, p)
	g.out.push(ghost, g.rooms.destinations(ghost))
}

// restorePresence queues, after a start, the presence the core last
// recorded for every joined ghost (pb_presence), unless the person opted
// out: the outgoing queue is not persisted but rebuilt from the stores.
func (g *Gateway) restorePresence(ctx context.Context) {
	for _, ghost := range g.rooms.joinedGhosts() {
		jid, ok := g.ghostJID(ghost)
		if !ok {
			continue
		}
		key := bridge.PresenceKey(mapping.NetworkXMPP, string(jid))
		// An opted-out person's record holds their real presence: show
		// nothing when their choice cannot be read.
		if s, _, err := g.store.Settings.Get(ctx, key); (err == nil && s.OptOut) || (err != nil && !errors.Is(err, bridge.ErrNotFound)) {
			continue
		}
		rec, _, err := g.store.Presence.Get(ctx, key)
		if err != nil {
			continue
		}
		if g.out.setIfNone(ghost, rec.Presence) {
			g.out.push(ghost, g.rooms.destinations(ghost))
		}
	}
}

// outbox is the transaction queue mautrix's federation package lacks (it
// only sends one transaction when asked). It holds the latest wanted
// presence of each ghost and a queue per destination server: the ghosts whose presence it must be sent. Each
// destination has its own goroutine and back-off, so that one that is
// down holds up no other.
type outbox struct {
	g *Gateway

	mu     sync.Mutex
	cond   *sync.Cond // signalled when a batch is done (waitSent)
	ghosts map[id.UserID]mapping.Presence
	dests  map[string]*destination
	ctx    context.Context // set by run; nil before
	wg     sync.WaitGroup

	txnSeq   atomic.Uint64
	txnEpoch int64

	// later holds pushes to make again after a join (see pushAfterJoin).
	later []delayedPush

	// Counters for tests and benchmarks; pushesTo is guarded by mu.
	pushesTo                       map[string]int64
	sentTxns, sentEDUs, sentPushes atomic.Int64
}

// joinRepush is when a ghost's presence is pushed again after a join:
// Dendrite hands the join to its sync stream asynchronously, and a
// presence that arrives before the join got there is stored but never
// shown to a client whose /sync ran in between.
var joinRepush = []time.Duration{time.Second, 4 * time.Second}

type delayedPush struct {
	at      time.Time
	ghost   id.UserID
	servers []string
}

// pushAfterJoin pushes now and again after each of joinRepush.
func (o *outbox) pushAfterJoin(ghost id.UserID, servers []string) {
	o.push(ghost, servers)
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, d := range joinRepush {
		o.later = append(o.later, delayedPush{at: now.Add(d), ghost: ghost, servers: servers})
	}
}

// due takes the delayed pushes whose time has come.
func (o *outbox) due(now time.Time) []delayedPush {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []delayedPush
	keep := o.later[:0]
	for _, d := range o.later {
		if now.Before(d.at) {
			keep = append(keep, d)
		} else {
			out = append(out, d)
		}
	}
	o.later = keep
	return out
}

type destination struct {
	name     string
	pending  map[id.UserID]struct{}
	inflight map[id.UserID]struct{}
	wake     chan struct{}
}

func newOutbox(g *Gateway) *outbox {
	o := &outbox{g: g, ghosts: map[id.UserID]mapping.Presence{}, dests: map[string]*destination{}, pushesTo: map[string]int64{}, txnEpoch: time.Now().UnixNano()}
	o.cond = sync.NewCond(&o.mu)
	return o
}

func (o *outbox) set(ghost id.UserID, p mapping.Presence) {
	o.mu.Lock()
	o.ghosts[ghost] = p
	o.mu.Unlock()
}

func (o *outbox) setIfNone(ghost id.UserID, p mapping.Presence) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.ghosts[ghost]; ok {
		return false
	}
	o.ghosts[ghost] = p
	return true
}

// push queues the ghost's latest presence (if any) to the servers.
// Whether a server still shares a room with the ghost is checked again
// when the transaction is made.
func (o *outbox) push(ghost id.UserID, servers []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.ghosts[ghost]; !ok {
		return
	}
	for _, s := range servers {
		if s == o.g.cfg.ServerName {
			continue
		}
		d := o.dests[s]
		if d == nil {
			d = &destination{name: s, pending: map[id.UserID]struct{}{}, inflight: map[id.UserID]struct{}{}, wake: make(chan struct{}, 1)}
			o.dests[s] = d
			if o.ctx != nil {
				o.start(d)
			}
		}
		d.pending[ghost] = struct{}{}
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// start runs a destination's sender; o.mu is held.
func (o *outbox) start(d *destination) {
	ctx := o.ctx
	o.wg.Go(func() { o.sender(ctx, d) })
}

// run starts the senders and re-pushes every ghost shown online once per
// presence_refresh, until ctx ends.
func (o *outbox) run(ctx context.Context) {
	o.mu.Lock()
	o.ctx = ctx
	for _, d := range o.dests {
		o.start(d)
	}
	o.mu.Unlock()
	t := time.NewTicker(o.g.cfg.PresenceRefresh)
	defer t.Stop()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			o.mu.Lock()
			o.ctx = nil // no sender starts any more
			o.cond.Broadcast()
			o.mu.Unlock()
			o.wg.Wait()
			return
		case <-t.C:
			o.refresh()
		case now := <-tick.C:
			for _, d := range o.due(now) {
				o.push(d.ghost, d.servers)
			}
		}
	}
}

func (o *outbox) refresh() {
	o.mu.Lock()
	var online []id.UserID
	for g, p := range o.ghosts {
		if p.State.Online() {
			online = append(online, g)
		}
	}
	o.mu.Unlock()
	for _, g := range online {
		o.push(g, o.g.rooms.destinations(g))
	}
}

// sender sends a destination's queue: everything pending in as few
// transactions as the bounds allow; on failure the batch goes back to
// the queue (where a newer presence replaces it: only the latest is
// ever sent) and the sender backs off, doubling from retry_min to
// retry_max.
func (o *outbox) sender(ctx context.Context, d *destination) {
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		}
		for {
			batch := o.take(d)
			if len(batch) == 0 {
				break
			}
			err := o.send(ctx, d.name, batch)
			o.done(d, batch, err != nil)
			if err == nil {
				if backoff > 0 {
					o.g.log.Info("destination reachable again", "destination", d.name)
				}
				backoff = 0
				continue
			}
			if ctx.Err() != nil {
				return
			}
			if backoff == 0 {
				o.g.log.Warn("presence transaction failed; retrying with back-off", "destination", d.name, "err", err)
				backoff = o.g.cfg.RetryMin
			} else {
				backoff = min(2*backoff, o.g.cfg.RetryMax)
			}
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// take moves the destination's pending ghosts to in flight.
func (o *outbox) take(d *destination) []id.UserID {
	o.mu.Lock()
	defer o.mu.Unlock()
	batch := make([]id.UserID, 0, len(d.pending))
	for g := range d.pending {
		batch = append(batch, g)
		d.inflight[g] = struct{}{}
	}
	clear(d.pending)
	slices.Sort(batch)
	return batch
}

// done ends a batch; a failed one goes back to pending.
func (o *outbox) done(d *destination, batch []id.UserID, failed bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, g := range batch {
		delete(d.inflight, g)
		if failed {
			d.pending[g] = struct{}{}
		}
	}
	o.cond.Broadcast()
}

// waitSent waits until no destination has the ghost queued or in flight,
// or ctx ends.
func (o *outbox) waitSent(ctx context.Context, ghost id.UserID) {
	stop := context.AfterFunc(ctx, func() {
		o.mu.Lock()
		o.cond.Broadcast()
		o.mu.Unlock()
	})
	defer stop()
	o.mu.Lock()
	defer o.mu.Unlock()
	for ctx.Err() == nil && o.queued(ghost) {
		o.cond.Wait()
	}
}

func (o *outbox) queued(ghost id.UserID) bool {
	for _, d := range o.dests {
		_, p := d.pending[ghost]
		_, f := d.inflight[ghost]
		if p || f {
			return true
		}
	}
	return false
}

// pushed returns how many presence updates went to dest.
func (o *outbox) pushed(dest string) int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pushesTo[dest]
}

// pushEntry is one user's update in an m.presence EDU.
type pushEntry struct {
	UserID          id.UserID `json:"user_id"`
	Presence        string    `json:"presence"`
	StatusMsg       string    `json:"status_msg"`
	LastActiveAgo   int64     `json:"last_active_ago"`
	CurrentlyActive bool      `json:"currently_active"`
}

// send makes the transactions for a batch: the latest presence of each
// ghost that still shares a room with the destination, rendered now (so
// that last_active_ago is exact when it leaves).
func (o *outbox) send(ctx context.Context, dest string, batch []id.UserID) error {
	now := time.Now()
	var pushes []pushEntry
	for _, ghost := range batch {
		if !slices.Contains(o.g.rooms.destinations(ghost), dest) {
			continue // no room shared any more: never tell this server
		}
		o.mu.Lock()
		p, ok := o.ghosts[ghost]
		o.mu.Unlock()
		if ok {
			pushes = append(pushes, o.g.pushFor(ghost, p, now))
		}
	}
	for len(pushes) > 0 {
		var edus []federation.EDU
		pushed := 0
		for len(pushes) > 0 && len(edus) < edusPerTxn {
			n := min(len(pushes), pushesPerEDU)
			edu, err := stdjson.Marshal(map[string]any{"edu_type": "m.presence", "content": map[string]any{"push": pushes[:n]}})
			if err != nil {
				return err
			}
			edus = append(edus, edu)
			pushes = pushes[n:]
			pushed += n
		}
		txnID := fmt.Sprintf("pb%d.%d", o.txnEpoch, o.txnSeq.Add(1))
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := o.g.client.SendTransaction(sctx, &federation.ReqSendTransaction{
			Destination: dest, TxnID: txnID, Origin: o.g.cfg.ServerName,
			OriginServerTS: jsontime.UM(now), PDUs: []federation.PDU{}, EDUs: edus,
		})
		cancel()
		if err != nil {
			return err
		}
		o.g.log.Debug("presence transaction sent", "destination", dest, "txn", txnID, "edus", len(edus), "pushes", pushed)
		o.sentTxns.Add(1)
		o.sentEDUs.Add(int64(len(edus)))
		o.sentPushes.Add(int64(pushed))
		o.mu.Lock()
		o.pushesTo[dest] += int64(pushed)
		o.mu.Unlock()
	}
	return nil
}

// pushFor renders a ghost's presence for the EDU.
func (g *Gateway) pushFor(ghost id.UserID, p mapping.Presence, now time.Time) pushEntry {
	m := g.tr.ToMatrix(p, now)
	e := pushEntry{UserID: ghost, Presence: m.Presence.String(), StatusMsg: mapping.TruncateStatus(m.StatusMsg, g.cfg.MaxStatusLength), CurrentlyActive: m.CurrentlyActive}
	if m.Presence == mapping.MatrixBusy {
		e.Presence = "unavailable" // federation has no busy: the translator's fallback is off here
	}
	if m.HasLastActive {
		e.LastActiveAgo = m.LastActiveAgo.Milliseconds()
	}
	return e
}

// RequestPresence asks the server of a Matrix user for their presence
// with a poll in an m.presence EDU; the answer comes back as a /send
// and is reported like any other. Only for users who share a room with
// a ghost (bridge.ErrNoRoute otherwise). It blocks for one transaction.
func (g *Gateway) RequestPresence(ctx context.Context, r bridge.PresenceRequest) error {
	if r.Network != mapping.NetworkMatrix {
		return fmt.Errorf("%w: not a Matrix user: %q", ErrBadCommand, r.User)
	}
	u, err := mapping.NewUserID(r.User)
	if err != nil {
		return err
	}
	user := id.UserID(u)
	if !g.rooms.watchedBy(user) {
		return bridge.ErrNoRoute
	}
	edu, err := stdjson.Marshal(map[string]any{"edu_type": "m.presence", "content": map[string]any{"push": []any{}, "poll": []id.UserID{user}}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = g.client.SendTransaction(ctx, &federation.ReqSendTransaction{
		Destination: user.Homeserver(), TxnID: fmt.Sprintf("pb%d.%d", g.out.txnEpoch, g.out.txnSeq.Add(1)),
		Origin: g.cfg.ServerName, OriginServerTS: jsontime.UM(time.Now()), PDUs: []federation.PDU{}, EDUs: []federation.EDU{edu},
	})
	if err != nil {
		return fmt.Errorf("%w: %w", bridge.ErrDisconnected, err)
	}
	return nil
}
