package core

import (
	"context"
	"log/slog"
	"sync"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// persister writes presence records behind the event path: events only
// mark a key dirty, one goroutine writes the latest record of each dirty
// key. A burst for one user costs one write, and no event waits for
// JetStream.
type persister struct {
	store *bridge.Store
	log   *slog.Logger

	mu    sync.Mutex
	dirty map[string]dirtyRecord
	kick  chan struct{}
}

type dirtyRecord struct {
	net  mapping.Network
	user string
	rec  bridge.PresenceRecord
}

func newPersister(store *bridge.Store, log *slog.Logger) *persister {
	return &persister{store: store, log: log, dirty: make(map[string]dirtyRecord), kick: make(chan struct{}, 1)}
}

func (p *persister) Put(key string, net mapping.Network, user string, rec bridge.PresenceRecord) {
	p.mu.Lock()
	if cur, ok := p.dirty[key]; !ok || cur.rec.Seq < rec.Seq {
		p.dirty[key] = dirtyRecord{net, user, rec}
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
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
	p.dirty = make(map[string]dirtyRecord, len(batch))
	p.mu.Unlock()
	for _, d := range batch {
		if _, err := p.store.PutPresenceIfNewer(ctx, d.net, d.user, d.rec); err != nil {
			p.log.Error("store presence failed", "network", d.net, "err", err)
		}
	}
}
