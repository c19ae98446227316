package matrixside

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// txnLog makes transactions idempotent: a transaction id is processed
// once, also across restarts. A gap of mautrix: its TransactionIDCache is
// in memory only.
//
// The request path touches only memory: the ids of recent transactions
// are kept in a set, and the newest one is written to the txns bucket
// behind, by a goroutine the side owns (run). This relies on what
// homeservers do (Synapse and Dendrite alike): they send an appservice one
// transaction at a time and send the next only after a 200 for the
// previous one. So after a restart only the transaction that was in
// flight can come again, and it comes first: the bucket is consulted on a
// memory miss only until the first transaction it does not know either;
// and of a batch of ids waiting to be written only the newest matters
// (the older ones were answered, or the homeserver would not have sent
// the newer one). A crash between processing a transaction and writing
// its id makes it processed twice; what it reports is state (presence) or
// carries ids derived from the Matrix events (memberships), which the
// transport can use to drop the copies.
type txnLog struct {
	bucket *bridge.Bucket[time.Time] // nil: memory only
	log    *slog.Logger

	mu      sync.Mutex
	recent  map[string]struct{}
	ring    []string // keys of recent, oldest first once full
	next    int      // ring slot of the next key
	check   bool     // consult the bucket on a miss
	pending string   // newest key not yet written ("" none)
	wake    chan struct{}
}

// recentTxns is how many transaction ids are kept in memory.
const recentTxns = 4096

func newTxnLog(bucket *bridge.Bucket[time.Time], log *slog.Logger) *txnLog {
	return &txnLog{
		bucket: bucket,
		log:    log,
		recent: make(map[string]struct{}, recentTxns),
		ring:   make([]string, recentTxns),
		check:  bucket != nil,
		wake:   make(chan struct{}, 1),
	}
}

// txnKey turns a transaction id into a KV key.
func txnKey(id string) string {
	if len(id) > 128 {
		sum := sha256.Sum256([]byte(id))
		return "h." + hex.EncodeToString(sum[:])
	}
	return "t." + bridge.EncodeToken(id)
}

// seen reports whether the transaction id was processed already. An error
// means the bucket could not be asked; the transaction should be refused
// so that the homeserver sends it again.
func (l *txnLog) seen(ctx context.Context, id string) (bool, error) {
	key := txnKey(id)
	l.mu.Lock()
	_, ok := l.recent[key]
	check := l.check
	l.mu.Unlock()
	if ok || !check {
		return ok, nil
	}
	_, _, err := l.bucket.Get(ctx, key)
	switch {
	case err == nil:
		l.remember(key)
		return true, nil
	case errors.Is(err, bridge.ErrNotFound):
		l.mu.Lock()
		l.check = false // caught up with what came before the restart
		l.mu.Unlock()
		return false, nil
	}
	return false, err
}

// done records that the transaction id was processed.
func (l *txnLog) done(id string) {
	key := txnKey(id)
	l.remember(key)
	if l.bucket == nil {
		return
	}
	l.mu.Lock()
	l.pending = key
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *txnLog) remember(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.recent[key]; ok {
		return
	}
	if old := l.ring[l.next]; old != "" {
		delete(l.recent, old)
	}
	l.ring[l.next] = key
	l.next = (l.next + 1) % len(l.ring)
	l.recent[key] = struct{}{}
}

// txnFlushTimeout bounds the last write when the side stops.
const txnFlushTimeout = 2 * time.Second

// run writes the newest processed id to the bucket whenever there is one,
// until ctx ends; then it writes what is left and returns.
func (l *txnLog) run(ctx context.Context) {
	for {
		select {
		case <-l.wake:
			l.flush(ctx)
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), txnFlushTimeout)
			l.flush(fctx)
			cancel()
			return
		}
	}
}

func (l *txnLog) flush(ctx context.Context) {
	l.mu.Lock()
	key := l.pending
	l.pending = ""
	l.mu.Unlock()
	if key == "" {
		return
	}
	if _, err := l.bucket.Put(ctx, key, time.Now().UTC()); err != nil {
		// Processed already: a failed write only weakens de-duplication
		// after a restart.
		l.log.Warn("transaction id not stored", "err", err)
	}
}
