package core

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// persister writes presence records behind the event path: events only
// mark a key dirty, one goroutine writes the latest record of each dirty
// key. A burst for one user costs one write, and no event waits for
// JetStream. The core is the presence bucket's only writer and checks
// order in memory, so a write is a plain put; a deletion (the person's
// last link ended) is queued the same way, so it is ordered with the
// puts before it.
type persister struct {
	store *bridge.Store
	log   *slog.Logger

	mu      sync.Mutex
	dirty   map[string]write
	writing map[string]write // the batch being written
	kick    chan struct{}
	revs    map[string]uint64 // revision of each key this owner last read or wrote (0: absent)
	queued  uint64            // writes queued so far
	written uint64            // of them, recorded (or superseded) so far
	flushed chan struct{}     // closed after each flush, then replaced
}

// write is a record to put, or a deletion.
type write struct {
	rec    bridge.PresenceRecord
	delete bool
}

func newPersister(store *bridge.Store, log *slog.Logger) *persister {
	return &persister{store: store, log: log, dirty: make(map[string]write), revs: make(map[string]uint64), kick: make(chan struct{}, 1), flushed: make(chan struct{})}
}

// Put marks rec as the latest record of key.
func (p *persister) Put(key string, rec bridge.PresenceRecord) { p.queue(key, write{rec: rec}) }

// Delete marks key for deletion.
func (p *persister) Delete(key string) { p.queue(key, write{delete: true}) }

func (p *persister) queue(key string, w write) {
	p.mu.Lock()
	p.dirty[key] = w
	p.queued++
	p.mu.Unlock()
	p.poke()
}

func (p *persister) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Sync returns once every write queued before it is recorded, or ctx
// ends.
func (p *persister) Sync(ctx context.Context) error {
	p.mu.Lock()
	target := p.queued
	for p.written < target {
		ch := p.flushed
		p.mu.Unlock()
		p.poke()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		p.mu.Lock()
	}
	p.mu.Unlock()
	return nil
}

// Drop forgets what is queued for the keys drop selects, and their
// revisions: their state has another writer now.
func (p *persister) Drop(drop func(key string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.dirty {
		if drop(k) {
			delete(p.dirty, k)
		}
	}
	for k := range p.revs {
		if drop(k) {
			delete(p.revs, k)
		}
	}
}

// Own records the revision of key as read by a new owner (0: absent):
// from then on its writes are compare-and-set, so that a write of an
// owner that lost the key in the meantime fails instead of overwriting.
func (p *persister) Own(key string, rev uint64) {
	p.mu.Lock()
	p.revs[key] = rev
	p.mu.Unlock()
}

// put writes rec at key: compare-and-set at the known revision, else a
// plain put (one instance, or a key not read yet). A conflict means
// another instance wrote the key: the record with the newer sequence
// stays.
func (p *persister) put(ctx context.Context, key string, rec bridge.PresenceRecord) error {
	p.mu.Lock()
	rev, known := p.revs[key]
	p.mu.Unlock()
	var nrev uint64
	var err error
	if !known {
		nrev, err = p.store.Presence.Put(ctx, key, rec)
	} else if nrev, err = p.store.Presence.PutAt(ctx, key, rec, rev); errors.Is(err, bridge.ErrConflict) {
		cur, crev, gerr := p.store.Presence.Get(ctx, key)
		if gerr != nil && !errors.Is(gerr, bridge.ErrNotFound) {
			return gerr
		}
		if gerr == nil && cur.Seq > rec.Seq {
			p.log.Warn("presence record written by another core instance with a newer sequence; kept")
			nrev, err = crev, nil
		} else {
			nrev, err = p.store.Presence.PutAt(ctx, key, rec, crev)
		}
	}
	if err != nil {
		return err
	}
	p.mu.Lock()
	if _, still := p.revs[key]; still || !known {
		p.revs[key] = nrev
	}
	p.mu.Unlock()
	return nil
}

// pending returns the record of key not yet written, if any, or whether
// its deletion is not yet done.
func (p *persister) pending(key string) (rec bridge.PresenceRecord, ok, deleted bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.dirty[key]
	if !ok {
		w, ok = p.writing[key]
	}
	if !ok {
		return rec, false, false
	}
	return w.rec, !w.delete, w.delete
}

// Run writes until ctx ends, then writes what is left. Writes that failed
// (a cluster electing a leader answers nothing for seconds) are tried
// again after a back-off, not only when the next change comes: the
// reports they hold are acknowledged only once written.
func (p *persister) Run(ctx context.Context) {
	var retry <-chan time.Time
	backoff := retryMin
	for {
		select {
		case <-ctx.Done():
			p.flush(context.WithoutCancel(ctx))
			return
		case <-p.kick:
		case <-retry:
		}
		if p.flush(ctx) {
			retry, backoff = nil, retryMin
			continue
		}
		retry = time.After(backoff)
		backoff = min(2*backoff, retryMax)
	}
}

// The back-off of failed writes.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
)

// flushWorkers write a batch in parallel: each write is a round trip to
// JetStream, and a batch holds one write per user changed meanwhile.
const flushWorkers = 8

// flush writes what is dirty, and reports whether every write succeeded.
func (p *persister) flush(ctx context.Context) bool {
	p.mu.Lock()
	batch := p.dirty
	target := p.queued
	p.dirty = make(map[string]write, len(batch))
	p.writing = batch
	p.mu.Unlock()
	keys := make(chan string)
	var failed sync.Map
	var wg sync.WaitGroup
	for range min(flushWorkers, max(1, len(batch)/16)) {
		wg.Go(func() {
			for key := range keys {
				w := batch[key]
				var err error
				if w.delete {
					if err = p.store.Presence.Delete(ctx, key); err == nil {
						p.mu.Lock()
						delete(p.revs, key) // the person is forgotten
						p.mu.Unlock()
					}
				} else {
					err = p.put(ctx, key, w.rec)
				}
				if err != nil {
					failed.Store(key, w)
					p.log.Error("store presence failed", "delete", w.delete, "err", err)
				}
			}
		})
	}
	for key := range batch {
		keys <- key
	}
	close(keys)
	wg.Wait()
	p.mu.Lock()
	p.writing = nil
	ok := true
	failed.Range(func(k, w any) bool {
		ok = false
		if _, newer := p.dirty[k.(string)]; !newer && ctx.Err() == nil {
			p.dirty[k.(string)] = w.(write) // tried again at the next flush
		}
		return true
	})
	if ok {
		p.written = max(p.written, target)
	}
	close(p.flushed)
	p.flushed = make(chan struct{})
	p.mu.Unlock()
	return ok
}
