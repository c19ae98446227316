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
}

// write is a record to put, or a deletion.
type write struct {
	rec    bridge.PresenceRecord
	delete bool
}

func newPersister(store *bridge.Store, log *slog.Logger) *persister {
	return &persister{store: store, log: log, dirty: make(map[string]write), kick: make(chan struct{}, 1)}
}

// Put marks rec as the latest record of key.
func (p *persister) Put(key string, rec bridge.PresenceRecord) { p.queue(key, write{rec: rec}) }

// Delete marks key for deletion.
func (p *persister) Delete(key string) { p.queue(key, write{delete: true}) }

func (p *persister) queue(key string, w write) {
	p.mu.Lock()
	p.dirty[key] = w
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
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

func (p *persister) flush(ctx context.Context) {
	p.mu.Lock()
	batch := p.dirty
	p.dirty = make(map[string]write, len(batch))
	p.writing = batch
	p.mu.Unlock()
	for key, w := range batch {
		var err error
		if w.delete {
			err = p.store.Presence.Delete(ctx, key)
		} else {
			_, err = p.store.Presence.Put(ctx, key, w.rec)
		}
		if err != nil {
			p.log.Error("store presence failed", "delete", w.delete, "err", err)
		}
	}
	p.mu.Lock()
	p.writing = nil
	p.mu.Unlock()
}
