package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BucketPartitions holds the leases of the core's partitions (key
// p.<index>) and the heartbeats of the core instances (key m.<instance>).
// Writers: the core instances' transports, each key with compare-and-set.
const BucketPartitions = "pb_core_partitions"

// DefaultLeaseTTL is how long a partition lease lasts unless renewed: a
// core instance that dies mid-event has its partitions taken over within
// about this time.
const DefaultLeaseTTL = 6 * time.Second

// PartitionHandler is what [Bus.ServePartitions] delivers a partition's
// events to.
type PartitionHandler struct {
	// Acquire is called when this instance takes partition p, before its
	// first event: it rebuilds what it keeps in memory of p's users from
	// the state in KV. An error gives the partition up for now.
	Acquire func(ctx context.Context, p Partition) error
	// Release is called once no more events of p are handled here.
	// handOver: the partition goes to another instance in good order (a
	// rebalance or a shutdown): what is pending may still be sent and
	// recorded; else the lease was lost and nothing of p may be done any
	// more (another instance may already own it).
	Release func(ctx context.Context, p Partition, handOver bool)
	// Handle handles one event, as a [DurableHandler]. For presence an
	// error is logged and the event acknowledged (it is state: the next
	// value repairs it).
	Handle DurableHandler
	// Sync returns once everything Handle did so far is recorded in KV:
	// an event is acknowledged only after it, so that a crash before
	// loses nothing. Nil: Handle records before it returns.
	Sync func(ctx context.Context) error
}

// PartitionOptions tune [Bus.ServePartitions].
type PartitionOptions struct {
	// Instance names this core instance in the leases: unique among the
	// instances running, as a lease held in its name and not by this
	// run is taken back at once (a previous run, dead). Default random,
	// or "embedded" on the embedded server.
	Instance string
	// LeaseTTL: default [DefaultLeaseTTL].
	LeaseTTL time.Duration
}

type lease struct {
	Owner   string    `json:"owner,omitempty"`
	Expires time.Time `json:"expires"`
}

// ServePartitions shares the partitions of [InStream] with the other core
// instances and delivers the events of those it holds to h, until ctx
// ends. Each instance takes about partitions/instances of them, as a
// lease in [BucketPartitions], renewed with compare-and-set every
// LeaseTTL/6; instances joining or leaving rebalance: an instance over
// its share hands partitions over in good order (it stops, records and
// acknowledges what it handled, then frees the lease), one under its share
// takes free or expired leases.
//
// One instance at a time per partition: a new owner deletes the
// partition's consumer and makes it afresh, so the old owner (alive but
// cut off) can no longer receive or acknowledge anything, and the new one
// is delivered every unacknowledged event of the partition, in stream
// order. An owner that could not renew its lease for LeaseTTL minus a
// margin stops handling events before the lease can expire for others
// (the fence).
func (b *Bus) ServePartitions(ctx context.Context, opts PartitionOptions, h PartitionHandler, ready func()) error {
	if b.wantPartitions != 0 {
		if err := b.CheckPartitions(b.wantPartitions); err != nil {
			return err
		}
	}
	if opts.Instance == "" {
		opts.Instance = NewID()
		if b.srv != nil {
			// Only one process runs the embedded server of a data dir:
			// leases of this name are its own previous run's, dead, and
			// taken back at once (a restart after a crash does not wait
			// for them to expire).
			opts.Instance = "embedded"
		}
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultLeaseTTL
	}
	if err := b.migrateLegacyReports(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: BucketPartitions, History: 1, Storage: jetstream.FileStorage, Replicas: b.replicas,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("bridge: bucket %s: %w", BucketPartitions, err)
	}
	stream, err := b.js.Stream(ctx, InStream)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("bridge: stream %s: %w", InStream, err)
	}
	n := b.partitions
	if b.unpartitioned && b.wantPartitions > 0 {
		// Users are still placed by the configured count: a core
		// keeps its state per partition of that count.
		n = 1
	}
	l := &leaser{bus: b, kv: kv, stream: stream, opts: opts, h: h, n: n,
		log:     b.log.With("instance", opts.Instance),
		workers: make(map[int]*partitionWorker)}
	return l.run(ctx, ready)
}

type leaser struct {
	bus    *Bus
	kv     jetstream.KeyValue
	stream jetstream.Stream
	opts   PartitionOptions
	h      PartitionHandler
	n      int
	log    *slog.Logger

	workers map[int]*partitionWorker // the partitions held; only run's goroutine
	held    int                      // len(workers) when last logged
}

func (l *leaser) margin() time.Duration { return l.opts.LeaseTTL / 6 }

func (l *leaser) run(ctx context.Context, ready func()) error {
	tick := time.NewTicker(l.opts.LeaseTTL / 6)
	defer tick.Stop()
	readied := false
	for {
		l.tick(ctx)
		if !readied {
			readied = true
			if ready != nil {
				ready()
			}
		}
		select {
		case <-ctx.Done():
			l.shutdown()
			return nil
		case <-tick.C:
		}
	}
}

func leaseKey(i int) string      { return "p." + strconv.Itoa(i) }
func memberKey(id string) string { return "m." + id }

func (l *leaser) get(ctx context.Context, key string) (lease, uint64, error) {
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return lease{}, 0, nil
	}
	if err != nil {
		return lease{}, 0, err
	}
	var v lease
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return lease{}, e.Revision(), nil // unreadable: treat as free
	}
	return v, e.Revision(), nil
}

// cas writes v at key if its revision is still rev (0: if it is absent).
func (l *leaser) cas(ctx context.Context, key string, v lease, rev uint64) (uint64, error) {
	data, _ := json.Marshal(v)
	if rev == 0 {
		return l.kv.Create(ctx, key, data)
	}
	return l.kv.Update(ctx, key, data, rev)
}

// members counts the instances whose heartbeat has not expired, this one
// included.
func (l *leaser) members(ctx context.Context, now time.Time) int {
	n := 1
	lister, err := l.kv.ListKeysFiltered(ctx, "m.*")
	if err != nil {
		return n
	}
	for k := range lister.Keys() {
		if k == memberKey(l.opts.Instance) {
			continue
		}
		if v, _, err := l.get(ctx, k); err == nil && now.Before(v.Expires) {
			n++
		} else if err == nil && now.After(v.Expires.Add(l.opts.LeaseTTL)) {
			_ = l.kv.Delete(ctx, k) // long dead: tidy up
		}
	}
	return n
}

func (l *leaser) tick(ctx context.Context) {
	tctx, cancel := context.WithTimeout(ctx, l.opts.LeaseTTL/2)
	defer cancel()
	now := time.Now()
	expires := now.Add(l.opts.LeaseTTL)
	data, _ := json.Marshal(lease{Owner: l.opts.Instance, Expires: expires})
	if _, err := l.kv.Put(tctx, memberKey(l.opts.Instance), data); err != nil {
		l.log.Warn("core partition heartbeat failed", "err", err)
	}
	members := l.members(tctx, now)
	target := (l.n + members - 1) / members
	free := []int{}
	freeRev := map[int]uint64{}
	for i := range l.n {
		cur, rev, err := l.get(tctx, leaseKey(i))
		w := l.workers[i]
		if err != nil {
			continue // NATS trouble: a worker fences itself by time
		}
		if w != nil {
			if w.fenced.Load() || cur.Owner != l.opts.Instance || rev != w.rev {
				l.log.Warn("core partition lost", "partition", i)
				l.stop(i, false)
				continue
			}
			nrev, err := l.cas(tctx, leaseKey(i), lease{Owner: l.opts.Instance, Expires: expires}, rev)
			switch {
			case err == nil:
				w.rev = nrev
				w.validUntil.Store(expires.Add(-l.margin()).UnixNano())
			case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch):
				l.log.Warn("core partition lost", "partition", i)
				l.stop(i, false)
			}
			continue
		}
		if cur.Owner == "" || cur.Owner == l.opts.Instance || now.After(cur.Expires) {
			free = append(free, i)
			freeRev[i] = rev
		}
	}
	for len(l.workers) > target {
		l.handOver(ctx, l.highest())
	}
	// Start at a place of our own, so that joining instances do not all
	// race for partition 0.
	off := PartitionOf(len(free)+1, l.opts.Instance)
	for k := range free {
		if len(l.workers) >= target || ctx.Err() != nil {
			break
		}
		i := free[(off+k)%len(free)]
		rev, err := l.cas(tctx, leaseKey(i), lease{Owner: l.opts.Instance, Expires: expires}, freeRev[i])
		if err != nil {
			continue // another instance was faster
		}
		w, err := l.start(ctx, i, rev, expires.Add(-l.margin()))
		if err != nil {
			if ctx.Err() == nil {
				l.log.Error("taking a core partition failed", "partition", i, "err", err)
			}
			_, _ = l.cas(context.WithoutCancel(tctx), leaseKey(i), lease{}, rev)
			continue
		}
		l.workers[i] = w
		l.log.Debug("core partition taken", "partition", i, "held", len(l.workers), "share", target)
	}
	if len(l.workers) != l.held {
		l.held = len(l.workers)
		l.log.Info("core partitions held", "held", l.held, "of", l.n, "instances", members)
	}
}

func (l *leaser) highest() int {
	hi := -1
	for i := range l.workers {
		hi = max(hi, i)
	}
	return hi
}

// stop ends the worker of partition i; handOver as in PartitionHandler.Release.
func (l *leaser) stop(i int, handOver bool) {
	w := l.workers[i]
	delete(l.workers, i)
	w.stop(handOver)
}

// handOver stops partition i in good order and frees its lease.
func (l *leaser) handOver(ctx context.Context, i int) {
	w := l.workers[i]
	l.stop(i, true)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.opts.LeaseTTL/2)
	defer cancel()
	if _, err := l.cas(cctx, leaseKey(i), lease{}, w.rev); err != nil {
		l.log.Warn("freeing a core partition lease failed; it expires", "partition", i, "err", err)
	}
	l.log.Debug("core partition handed over", "partition", i)
}

func (l *leaser) shutdown() {
	for i := range l.workers {
		l.handOver(context.Background(), i)
	}
	cctx, cancel := context.WithTimeout(context.Background(), l.opts.LeaseTTL/2)
	defer cancel()
	_ = l.kv.Delete(cctx, memberKey(l.opts.Instance))
}

// partitionWorker consumes one partition while this instance holds it.
type partitionWorker struct {
	l          *leaser
	p          Partition
	rev        uint64       // of our lease
	validUntil atomic.Int64 // unix ns: no event is handled after it
	fenced     atomic.Bool

	ctx    context.Context
	cancel context.CancelFunc
	cc     jetstream.ConsumeContext
	health *consumerHealth

	mu      sync.Mutex
	pending []jetstream.Msg // handled, acknowledged after the next Sync
	kick    chan struct{}
	ackDone chan struct{}
}

// pendingMax is how many handled events wait for Sync before the worker
// syncs at once; maxAckPending bounds what the server hands a partition
// before acknowledgements.
const (
	pendingMax    = 2000
	ackEvery      = 20 * time.Millisecond
	maxAckPending = 20000
)

func (l *leaser) start(ctx context.Context, i int, rev uint64, validUntil time.Time) (*partitionWorker, error) {
	p := Partition{Index: i, Count: l.n}
	wctx, cancel := context.WithCancel(ctx)
	w := &partitionWorker{l: l, p: p, rev: rev, ctx: wctx, cancel: cancel, kick: make(chan struct{}, 1), ackDone: make(chan struct{}),
		health: &consumerHealth{name: PartitionConsumer(i), log: l.log}}
	w.validUntil.Store(validUntil.UnixNano())
	fail := func(err error) (*partitionWorker, error) { cancel(); return nil, err }
	if l.h.Acquire != nil {
		if err := l.h.Acquire(wctx, p); err != nil {
			return fail(err)
		}
	}
	// The fence at the server: the previous owner's consumer goes, with
	// what it was delivered and had not acknowledged, which the new
	// consumer delivers again, in stream order.
	if err := l.stream.DeleteConsumer(wctx, PartitionConsumer(i)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fail(fmt.Errorf("bridge: delete consumer %s: %w", PartitionConsumer(i), err))
	}
	cons, err := l.stream.CreateConsumer(wctx, jetstream.ConsumerConfig{
		Durable:       PartitionConsumer(i),
		FilterSubject: l.bus.partitionFilter(i),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
		MaxAckPending: maxAckPending,
	})
	if err != nil {
		return fail(fmt.Errorf("bridge: consumer %s: %w", PartitionConsumer(i), err))
	}
	l.bus.awaitConsumerLeader(wctx, cons)
	go w.acker()
	if w.cc, err = cons.Consume(w.deliver, jetstream.PullMaxMessages(1000), jetstream.PullExpiry(pullExpiry)); err != nil {
		cancel()
		<-w.ackDone
		return nil, fmt.Errorf("bridge: consume %s: %w", PartitionConsumer(i), err)
	}
	return w, nil
}

func (w *partitionWorker) valid() bool {
	if time.Now().UnixNano() < w.validUntil.Load() {
		return true
	}
	if !w.fenced.Swap(true) {
		w.l.log.Warn("core partition lease not renewed in time; handling stopped", "partition", w.p.Index)
	}
	return false
}

func (w *partitionWorker) deliver(m jetstream.Msg) {
	if w.fenced.Load() || w.ctx.Err() != nil || !w.valid() {
		return // left unacknowledged: the next owner's consumer delivers it
	}
	ev, err := DecodeEvent(m.Data())
	if err != nil {
		w.l.log.Warn("dropping malformed report", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	err = w.l.h.Handle(w.ctx, ev)
	if ev.Kind.Durable() {
		w.l.bus.settle(w.ctx, PartitionConsumer(w.p.Index), originalSubject(m.Subject()), m, ev, err, w.health)
		return
	}
	if err != nil {
		w.l.log.Warn("presence not handled", "network", ev.Origin, "err", err)
	}
	if w.l.h.Sync == nil {
		_ = m.Ack()
		return
	}
	w.mu.Lock()
	w.pending = append(w.pending, m)
	n := len(w.pending)
	w.mu.Unlock()
	if n >= pendingMax {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// acker acknowledges handled presence once it is recorded.
func (w *partitionWorker) acker() {
	defer close(w.ackDone)
	t := time.NewTicker(ackEvery)
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		case <-w.kick:
		}
		w.ackRecorded(w.ctx)
	}
}

func (w *partitionWorker) ackRecorded(ctx context.Context) { w.ack(ctx, false) }

// ack acknowledges the handled presence once it is recorded. confirm
// waits for the server to have processed the acknowledgements (they are
// processed in order): before a partition is handed over, so that the
// next owner is not delivered them again.
func (w *partitionWorker) ack(ctx context.Context, confirm bool) {
	w.mu.Lock()
	batch := w.pending
	w.pending = nil
	w.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	if err := w.l.h.Sync(ctx); err != nil {
		return // not acknowledged: delivered again to whoever holds the partition next
	}
	if !w.valid() {
		return
	}
	for _, m := range batch[:len(batch)-1] {
		_ = m.Ack()
	}
	if confirm {
		_ = batch[len(batch)-1].DoubleAck(ctx)
	} else {
		_ = batch[len(batch)-1].Ack()
	}
}

// stop ends consumption; handOver as in PartitionHandler.Release.
func (w *partitionWorker) stop(handOver bool) {
	w.cc.Stop()
	<-w.cc.Closed()
	w.cancel()
	<-w.ackDone
	ctx, cancel := context.WithTimeout(context.Background(), w.l.opts.LeaseTTL/2)
	defer cancel()
	handOver = handOver && w.valid()
	if w.l.h.Release != nil {
		w.l.h.Release(ctx, w.p, handOver)
	}
	if handOver {
		w.ack(ctx, true)
	}
}

// settle acknowledges, drops, retries or dead-letters a durable event
// after its handler returned err.
func (b *Bus) settle(ctx context.Context, consumer, subject string, m jetstream.Msg, ev *Event, err error, health *consumerHealth) {
	switch {
	case err == nil:
		health.succeeded()
		_ = m.Ack()
	case errors.Is(err, ErrDrop):
		_ = m.Term()
	case ctx.Err() != nil:
		// Stopping: the handler was cut short, which says nothing
		// about the event. It comes again after the restart.
		_ = m.Nak()
	default:
		var n uint64 = 1
		if md, merr := m.Metadata(); merr == nil {
			n = md.NumDelivered
		}
		if n >= uint64(b.maxDeliver) {
			b.deadLetter(ctx, consumer, subject, m, ev, n, err)
			return
		}
		delay := retryDelay(n, b.retryBase)
		health.failed(subject, ev.ID, n, delay, err)
		_ = m.NakWithDelay(delay)
	}
}
