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
// order in memory, so a write is a plain put.
type persister struct {
	store *bridge.Store
	log   *slog.Logger

	mu      sync.Mutex
	dirty   map[string]bridge.PresenceRecord
	writing map[string]bridge.PresenceRecord // the batch being written
	kick    chan struct{}
}

func newPersister(store *bridge.Store, log *slog.Logger) *persister {
	return &persister{store: store, log: log, dirty: make(map[string]bridge.PresenceRecord), kick: make(chan struct{}, 1)}
}

// Put marks rec as the latest record of key.
func (p *persister) Put(key string, rec bridge.PresenceRecord) {
	p.mu.Lock()
	p.dirty[key] = rec
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// pending returns the record of key not yet written, if any.
func (p *persister) pending(key string) (bridge.PresenceRecord, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if rec, ok := p.dirty[key]; ok {
		return rec, true
	}
	rec, ok := p.writing[key]
	return rec, ok
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
	p.dirty = make(map[string]bridge.PresenceRecord, len(batch))
	p.writing = batch
	p.mu.Unlock()
	for key, rec := range batch {
		if _, err := p.store.Presence.Put(ctx, key, rec); err != nil {
			p.log.Error("store presence failed", "err", err)
		}
	}
	p.mu.Lock()
	p.writing = nil
	p.mu.Unlock()
}
