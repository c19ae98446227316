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
)

// sideState is what the side keeps in KV so that a restart, or another
// instance taking over after this one died (kill -9), loses nothing and
// repeats nothing: what the homeserver shows of each ghost (the
// GhostPresence bucket) and the bot's /sync position (MatrixSync). The
// side is the only writer of both.
//
// Ghost presence is written around each PUT, by the worker making it (the
// request path, ShowGhost, never touches KV): before the PUT a pending
// record ("this state, maybe"), after the homeserver accepted it the state
// itself. A record is read once per ghost per process, by the first
// worker that has a state to send for it; a state equal to the record's
// is not sent. So after kill -9 at any point the record is either what
// the homeserver shows or pending, which makes the next wanted state go
// out whatever it is: nothing is skipped that the homeserver does not
// show. The price is two KV writes per PUT, made by the PUT's worker.
//
// The /sync position is written after the events of a response were
// handled (reported to the core), so kill -9 can make the next instance
// handle the last response again (presence is state, reported only when
// it differs from what this process reported), never skip one.
type sideState struct {
	ghosts *bridge.Bucket[bridge.GhostShown]
	sync   *bridge.Bucket[bridge.SyncPosition]
	log    *sampledLog // KV failures, at a bounded rate
}

func newSideState(store *bridge.Store, log *slog.Logger) *sideState {
	return &sideState{
		ghosts: store.GhostPresence,
		sync:   store.MatrixSync,
		log:    newSampledLog(log, slog.LevelWarn, "matrix side state not read or written; a restart may send or read more than needed"),
	}
}

// stateTimeout bounds one KV operation of the side's state.
const stateTimeout = 5 * time.Second

// recordKind is what the GhostPresence bucket says of a ghost.
type recordKind uint8

const (
	recordNone    recordKind = iota // nothing: the homeserver's state is unknown
	recordShown                     // the homeserver shows record
	recordPending                   // the homeserver shows record or what it showed before
)

// ghostRecord is a ghost's record as its worker knows it (ghostOut.rec).
type ghostRecord struct {
	loaded bool
	kind   recordKind
	state  wireState
}

func ghostKey(ghost id.UserID) string { return bridge.EncodeToken(string(ghost)) }

// load reads the ghost's record; an unreadable one counts as none.
func (st *sideState) load(ctx context.Context, ghost id.UserID) ghostRecord {
	ctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	rec := ghostRecord{loaded: true}
	v, _, err := st.ghosts.Get(ctx, ghostKey(ghost))
	switch {
	case errors.Is(err, bridge.ErrNotFound):
	case err != nil:
		st.log.note(time.Now(), "ghost", ghost, "err", err)
	default:
		rec.kind, rec.state = recordShown, wireState{Presence: event.Presence(v.Presence), Status: v.Status}
		if v.Pending {
			rec.kind = recordPending
		}
	}
	return rec
}

// write stores w as the ghost's record, pending or shown, and updates
// rec. A failed write leaves rec saying nothing (recordNone), so that the
// next PUT writes its pending record again.
func (st *sideState) write(ctx context.Context, ghost id.UserID, rec *ghostRecord, w wireState, pending bool) {
	ctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	_, err := st.ghosts.Put(ctx, ghostKey(ghost), bridge.GhostShown{
		Presence: string(w.Presence), Status: w.Status, Pending: pending, UpdatedAt: time.Now().UTC(),
	})
	if err != nil {
		st.log.note(time.Now(), "ghost", ghost, "err", err)
		rec.kind = recordNone
		return
	}
	rec.kind, rec.state = recordShown, w
	if pending {
		rec.kind = recordPending
	}
}

// errAlreadyShown is what the outbox's send returns for a state the
// homeserver shows already by the ghost's record: nothing was sent, and
// no delivery is reported.
var errAlreadyShown = errors.New("matrixside: ghost presence already shown")

// putShown sets the ghost's presence to w with the record written around
// the PUT (see sideState). Unless force, a state the record says is
// shown already is not sent (errAlreadyShown). rec is the ghost's record
// as its caller keeps it.
func (s *Side) putShown(ctx context.Context, ghost id.UserID, rec *ghostRecord, w wireState, force bool, put func() error) error {
	if !rec.loaded {
		*rec = s.state.load(ctx, ghost)
	}
	if !force && rec.kind == recordShown && rec.state == w {
		return errAlreadyShown
	}
	if rec.kind != recordPending || rec.state != w {
		// Before the PUT: were the process killed after the homeserver
		// accepted it, a record of the state before would make the next
		// instance skip that state if it were wanted again. Written
		// whether or not the PUT follows: without the bucket presence
		// still flows (the failure is logged).
		s.state.write(ctx, ghost, rec, w, true)
	}
	if err := put(); err != nil {
		return err
	}
	s.state.write(ctx, ghost, rec, w, false)
	return nil
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
