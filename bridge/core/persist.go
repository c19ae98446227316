package core

import (
	"context"
	"log/slog"
	"sync"

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
	queued  uint64        // writes queued so far
	written uint64        // of them, recorded (or superseded) so far
	flushed chan struct{} // closed after each flush, then replaced
}

// write is a record to put, or a deletion.
type write struct {
	rec    bridge.PresenceRecord
	delete bool
}

func newPersister(store *bridge.Store, log *slog.Logger) *persister {
	return &persister{store: store, log: log, dirty: make(map[string]write), kick: make(chan struct{}, 1), flushed: make(chan struct{})}
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

// Drop forgets what is queued for the keys keep rejects: their state
// has another writer now.
func (p *persister) Drop(drop func(key string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.dirty {
		if drop(k) {
			delete(p.dirty, k)
		}
	}
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

// Run writes until ctx ends, then writes what is left.
func (p *persister) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			p.flush(context.WithoutCancel(ctx))
			return
		case <-p.kick:
			p.flush(ctx)
		}
	}
}

// flushWorkers write a batch in parallel: each write is a round trip to
// JetStream, and a batch holds one write per user changed meanwhile.
const flushWorkers = 8

func (p *persister) flush(ctx context.Context) {
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
					err = p.store.Presence.Delete(ctx, key)
				} else {
					_, err = p.store.Presence.Put(ctx, key, w.rec)
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
}
