package matrixside

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// sideState is what the side keeps in KV so that a restart, or another
// instance taking over after this one died (kill -9), loses nothing and
// repeats nothing: what the homeserver shows of each ghost (the
// GhostPresence bucket) and the bot's /sync position (MatrixSync). The
// side is the only writer of both.
//
// A ghost's record is read once per process, by the first worker that
// has a state to send for it; a state equal to a record that is not
// pending is not sent. The record is kept true around each PUT: before a
// PUT, a record that claims a state is first marked pending ("not
// known"), by the worker, so that after kill -9 at any point the record
// is either what the homeserver shows or pending, and a pending record
// makes the next wanted state go out whatever it is. After the PUT the
// accepted state is written behind: once the ghost has been quiet for
// confirmAfter, by the flush that runHealth calls (and at shutdown). So a
// ghost changing often costs one KV write when it starts and one when it
// settles, not two per PUT; the request path (ShowGhost) never touches
// KV; memory holds one record per ghost in the outbox. Kill -9 loses only
// the confirmations not yet written: those ghosts' next wanted state is
// sent once more, even if unchanged.
//
// The /sync position is written after the events of a response were
// handled (reported to the core), so kill -9 can make the next instance
// handle the last response again (presence is state, reported only when
// it differs from what this process reported), never skip one.
type sideState struct {
	ghosts *bridge.Bucket[bridge.GhostShown]
	sync   *bridge.Bucket[bridge.SyncPosition]
	log    *sampledLog // KV failures, at a bounded rate

	mu  sync.Mutex
	due map[*ghostRecord]struct{} // accepted states not yet written
}

func newSideState(store *bridge.Store, log *slog.Logger) *sideState {
	return &sideState{
		ghosts: store.GhostPresence,
		sync:   store.MatrixSync,
		log:    newSampledLog(log, slog.LevelWarn, "matrix side state not read or written; a restart may send or read more than needed"),
		due:    make(map[*ghostRecord]struct{}),
	}
}

// stateTimeout bounds one KV operation of the side's state.
const stateTimeout = 5 * time.Second

// confirmAfter is how long a ghost must have been quiet (no PUT) for its
// accepted state to be written.
const confirmAfter = time.Second

// recordKind is what the GhostPresence bucket says of a ghost.
type recordKind uint8

const (
	recordNone    recordKind = iota // nothing: the homeserver's state is unknown
	recordShown                     // the homeserver shows state
	recordPending                   // not known (a PUT may have been applied)
)

// ghostRecord is a ghost's record, as far as this process knows it. mu
// serializes the ghost's worker with the flush: a confirmation is never
// written while a PUT of a newer state is under way.
type ghostRecord struct {
	ghost id.UserID

	mu     sync.Mutex
	loaded bool
	kind   recordKind // in the bucket
	state  wireState  // shown, if kind is recordShown
	puts   uint64     // PUTs started
	// accepted is the state of the last PUT accepted, at acceptedAt, to
	// be written once the ghost is quiet, if confirm.
	accepted   wireState
	acceptedAt time.Time
	confirm    bool
}

func ghostKey(ghost id.UserID) string { return bridge.EncodeToken(string(ghost)) }

// loadLocked reads the record once; an unreadable one counts as none.
func (st *sideState) loadLocked(ctx context.Context, rec *ghostRecord) {
	if rec.loaded {
		return
	}
	rec.loaded = true
	ctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	v, _, err := st.ghosts.Get(ctx, ghostKey(rec.ghost))
	switch {
	case errors.Is(err, bridge.ErrNotFound):
	case err != nil:
		st.log.note(time.Now(), "ghost", rec.ghost, "err", err)
	case v.Pending:
		rec.kind = recordPending
	default:
		rec.kind, rec.state = recordShown, wireState{Presence: event.Presence(v.Presence), Status: v.Status}
	}
}

// writeLocked stores the record: pending, or w shown. A failed write
// leaves the record pending in memory when it was to say pending (so the
// next PUT tries again, and the risk is logged), and as it was otherwise.
func (st *sideState) writeLocked(ctx context.Context, rec *ghostRecord, w wireState, pending bool) bool {
	ctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	_, err := st.ghosts.Put(ctx, ghostKey(rec.ghost), bridge.GhostShown{
		Presence: string(w.Presence), Status: w.Status, Pending: pending, UpdatedAt: time.Now().UTC(),
	})
	if err != nil {
		st.log.note(time.Now(), "ghost", rec.ghost, "err", err)
		return false
	}
	if pending {
		rec.kind = recordPending
	} else {
		rec.kind, rec.state = recordShown, w
	}
	return true
}

// errAlreadyShown is what the outbox's send returns for a state the
// homeserver shows already by the ghost's record: nothing was sent, and
// no delivery is reported.
var errAlreadyShown = errors.New("matrixside: ghost presence already shown")

// putShown sets the ghost's presence to w by put, keeping g's record true
// (see sideState). Unless force, a state the record says is shown
// already is not sent (errAlreadyShown). Only g's worker calls it (or the
// shutdown, after the workers).
func (s *Side) putShown(ctx context.Context, g *ghostOut, w wireState, force bool, put func() error) error {
	if g.rec == nil {
		g.rec = &ghostRecord{ghost: g.ghost}
	}
	rec, st := g.rec, s.state
	rec.mu.Lock()
	st.loadLocked(ctx, rec)
	if !force && rec.kind == recordShown && rec.state == w {
		rec.mu.Unlock()
		return errAlreadyShown
	}
	rec.puts++
	rec.confirm = false
	if rec.kind == recordShown && rec.state != w {
		// Were the process killed after the homeserver accepted this PUT,
		// a record of the state before would make the next instance skip
		// that state if it were wanted again. A failed write is logged;
		// presence still flows.
		st.writeLocked(ctx, rec, w, true)
	}
	n := rec.puts
	rec.mu.Unlock()
	if err := put(); err != nil {
		return err
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.puts == n {
		rec.accepted, rec.acceptedAt, rec.confirm = w, time.Now(), true
		st.mu.Lock() // under rec.mu, as in flush
		st.due[rec] = struct{}{}
		st.mu.Unlock()
	}
	return nil
}

// flush writes the accepted states of the ghosts quiet since before
// now-confirmAfter (all of them if now is zero: at shutdown).
func (st *sideState) flush(ctx context.Context, now time.Time) int {
	st.mu.Lock()
	recs := make([]*ghostRecord, 0, len(st.due))
	for rec := range st.due {
		recs = append(recs, rec)
	}
	st.mu.Unlock()
	n := 0
	for _, rec := range recs {
		if ctx.Err() != nil {
			return n
		}
		rec.mu.Lock()
		if rec.confirm && (now.IsZero() || now.Sub(rec.acceptedAt) >= confirmAfter) {
			if rec.kind == recordShown && rec.state == rec.accepted || st.writeLocked(ctx, rec, rec.accepted, false) {
				rec.confirm = false
				n++
			}
		}
		if !rec.confirm {
			st.mu.Lock() // under rec.mu: a PUT accepted later adds it again
			delete(st.due, rec)
			st.mu.Unlock()
		}
		rec.mu.Unlock()
	}
	return n
}

// syncStore is the bot's mautrix.SyncStore: the filter id lives in
// memory (a process makes its own), the next_batch token in the
// MatrixSync bucket. mautrix saves the token before it hands the
// response's events to the syncer (client.go, SyncWithContext), so
// SaveNextBatch only notes it, and commit, called by the syncer once the
// events were handled, writes it.
type syncStore struct {
	st  *sideState
	key string

	mu       sync.Mutex
	filterID string
	loaded   bool
	next     string // the token mautrix syncs from
	noted    string // saved by mautrix, not yet committed
	written  string // in the bucket
}

func newSyncStore(st *sideState, bot id.UserID) *syncStore {
	return &syncStore{st: st, key: bridge.EncodeToken(string(bot))}
}

// SaveFilterID implements mautrix.SyncStore.
func (y *syncStore) SaveFilterID(_ context.Context, _ id.UserID, filterID string) error {
	y.mu.Lock()
	y.filterID = filterID
	y.mu.Unlock()
	return nil
}

// LoadFilterID implements mautrix.SyncStore.
func (y *syncStore) LoadFilterID(context.Context, id.UserID) (string, error) {
	y.mu.Lock()
	defer y.mu.Unlock()
	return y.filterID, nil
}

// SaveNextBatch implements mautrix.SyncStore: the token is noted, and
// written by commit once its response was handled.
func (y *syncStore) SaveNextBatch(_ context.Context, _ id.UserID, token string) error {
	y.mu.Lock()
	y.noted = token
	y.mu.Unlock()
	return nil
}

// LoadNextBatch implements mautrix.SyncStore: the stored position the
// first time, then the last token committed in this process. A position
// that cannot be read means an initial sync (logged).
func (y *syncStore) LoadNextBatch(ctx context.Context, _ id.UserID) (string, error) {
	y.mu.Lock()
	defer y.mu.Unlock()
	if !y.loaded {
		gctx, cancel := context.WithTimeout(ctx, stateTimeout)
		pos, _, err := y.st.sync.Get(gctx, y.key)
		cancel()
		switch {
		case err == nil:
			y.next, y.written = pos.NextBatch, pos.NextBatch
		case !errors.Is(err, bridge.ErrNotFound):
			y.st.log.note(time.Now(), "what", "sync position", "err", err)
		}
		y.loaded = true
	}
	return y.next, nil
}

// commit writes token, the next_batch of a response whose events were all
// handled.
func (y *syncStore) commit(ctx context.Context, token string) {
	y.mu.Lock()
	defer y.mu.Unlock()
	if token == "" || token != y.noted {
		return
	}
	y.next = token
	if token == y.written {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	if _, err := y.st.sync.Put(wctx, y.key, bridge.SyncPosition{NextBatch: token, UpdatedAt: time.Now().UTC()}); err != nil {
		y.st.log.note(time.Now(), "what", "sync position", "err", err)
		return
	}
	y.written = token
}

// hasPosition reports whether the sync resumes from a position.
func (y *syncStore) hasPosition() bool {
	y.mu.Lock()
	defer y.mu.Unlock()
	return y.next != ""
}

// reset forgets the position, after the homeserver refused it: the next
// sync is an initial one.
func (y *syncStore) reset(ctx context.Context) {
	y.mu.Lock()
	defer y.mu.Unlock()
	y.next, y.noted, y.written = "", "", ""
	dctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	if err := y.st.sync.Delete(dctx, y.key); err != nil {
		y.st.log.note(time.Now(), "what", "sync position", "err", err)
	}
}

// loadReported fills the table of what was reported of Matrix users
// (inbound) from the core's presence bucket, read and never written: a
// restarted or taking-over process resumes /sync where the last one
// stopped and so hears only of changes; without this it would not know
// whom the core believes online, and an unreachable homeserver (health)
// would leave them shown online on XMPP for good. At most max_tracked are
// read; a bucket that cannot be read is logged, and the side starts
// without them.
func (s *Side) loadReported(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	prefix := mapping.NetworkMatrix.String() + "." // of bridge.PresenceKey
	keys, err := s.store.Presence.KeysMatching(lctx, prefix+"*")
	if err != nil {
		s.log.Warn("reading Matrix users' last presence failed; starting without it", "err", err)
		return
	}
	n := 0
	for _, key := range keys {
		if ctx.Err() != nil || n >= s.cfg.MaxTracked {
			break
		}
		raw, err := bridge.DecodeToken(key[len(prefix):])
		if err != nil {
			continue
		}
		u, err := mapping.NewUserID(raw)
		if err != nil {
			continue
		}
		if kind, _ := s.classify(id.UserID(u)); kind != kindMatrix {
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, stateTimeout)
		rec, _, err := s.store.Presence.Get(gctx, key)
		cancel()
		if err != nil {
			continue
		}
		if s.in.seed(u, rec.Presence) {
			n++
		}
	}
	s.log.Debug("Matrix users' last reported presence loaded", "users", n)
}
