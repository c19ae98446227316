package xmppside

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// storeTimeout bounds one bucket operation.
const storeTimeout = 5 * time.Second

// presenceWriter writes presence records to the presence bucket off the hot
// path: a burst of changes for one user becomes one write of the latest.
// The records carry sequence numbers and are written with
// PutPresenceIfNewer, so a late write never replaces a newer value.
type presenceWriter struct {
	store *bridge.Store
	log   *slog.Logger

	mu      sync.Mutex
	pending map[presenceKey]bridge.PresenceRecord
	wake    chan struct{}
}

type presenceKey struct {
	net  mapping.Network
	user string
}

func newPresenceWriter(store *bridge.Store, log *slog.Logger) *presenceWriter {
	return &presenceWriter{store: store, log: log, pending: make(map[presenceKey]bridge.PresenceRecord), wake: make(chan struct{}, 1)}
}

// put queues rec; it never blocks.
func (w *presenceWriter) put(net mapping.Network, user string, rec bridge.PresenceRecord) {
	k := presenceKey{net, user}
	w.mu.Lock()
	if cur, ok := w.pending[k]; !ok || cur.Seq < rec.Seq {
		w.pending[k] = rec
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run writes queued records until ctx ends, then writes what is left
// and returns. Each write is bounded by storeTimeout, not by ctx, so that
// the last presences are kept.
func (w *presenceWriter) run(ctx context.Context) {
	for {
		select {
		case <-w.wake:
			w.flush(context.WithoutCancel(ctx))
		case <-ctx.Done():
			w.flush(context.WithoutCancel(ctx))
			return
		}
	}
}

func (w *presenceWriter) flush(ctx context.Context) {
	w.mu.Lock()
	batch := w.pending
	w.pending = make(map[presenceKey]bridge.PresenceRecord, len(batch))
	w.mu.Unlock()
	for k, rec := range batch {
		octx, cancel := context.WithTimeout(ctx, storeTimeout)
		if _, err := w.store.PutPresenceIfNewer(octx, k.net, k.user, rec); err != nil {
			w.log.Error("storing presence failed", "network", k.net.String(), "user", k.user, "err", err)
		}
		cancel()
	}
}
