package matrixside

import (
	"context"
	"errors"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// stateSide is a side with only what putShown needs, on store.
func stateSide(t *testing.T, store *bridge.Store) *Side {
	return &Side{state: newSideState(store, testLogger(t))}
}

func recordOf(t *testing.T, store *bridge.Store, g *ghostOut) (bridge.GhostShown, bool) {
	t.Helper()
	v, _, err := store.GhostPresence.Get(context.Background(), ghostKey(g.ghost))
	if errors.Is(err, bridge.ErrNotFound) {
		return v, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return v, true
}

// TestGhostRecordNeverClaimsAStateInDoubt: whenever a PUT is under way
// the bucket does not claim the state before it, whatever happens next;
// an accepted state is written once the ghost is quiet; a state the
// record claims is not sent again unless forced.
func TestGhostRecordNeverClaimsAStateInDoubt(t *testing.T) {
	ctx := context.Background()
	store := bridge.NewMemoryStore()
	s := stateSide(t, store)
	g := &ghostOut{ghost: "@_xmpp_alice=40example.com:localhost"}
	online := wireState{Presence: event.PresenceOnline, Status: "here"}
	away := wireState{Presence: event.PresenceUnavailable, Status: "lunch"}
	puts := 0
	put := func() error { puts++; return nil }

	if err := s.putShown(ctx, g, online, false, put); err != nil || puts != 1 {
		t.Fatalf("first PUT: %v, %d puts", err, puts)
	}
	if n := s.state.flush(ctx, time.Now()); n != 0 {
		t.Errorf("%d records written before the ghost was quiet", n)
	}
	if n := s.state.flush(ctx, time.Now().Add(confirmAfter)); n != 1 {
		t.Errorf("%d records written once quiet, want 1", n)
	}
	if v, ok := recordOf(t, store, g); !ok || v.Pending || v.Presence != "online" || v.Status != "here" {
		t.Fatalf("record after the flush: %+v %v", v, ok)
	}
	if err := s.putShown(ctx, g, online, false, put); !errors.Is(err, errAlreadyShown) || puts != 1 {
		t.Errorf("the shown state again: %v, %d puts", err, puts)
	}
	if err := s.putShown(ctx, g, online, true, put); err != nil || puts != 2 {
		t.Errorf("forced: %v, %d puts", err, puts)
	}
	if v, _ := recordOf(t, store, g); v.Pending {
		t.Error("a forced re-send of the shown state made the record pending")
	}

	// A PUT of another state: the record is pending while it is under
	// way, and stays so if the process dies before the flush.
	err := s.putShown(ctx, g, away, false, func() error {
		if v, _ := recordOf(t, store, g); !v.Pending {
			t.Errorf("record during the PUT of another state: %+v", v)
		}
		return errors.New("homeserver gone")
	})
	if err == nil {
		t.Fatal("the failed PUT succeeded")
	}
	next := stateSide(t, store)
	g2 := &ghostOut{ghost: g.ghost}
	if err := next.putShown(ctx, g2, online, false, put); err != nil || puts != 3 {
		t.Errorf("after a PUT in doubt, the state before was not sent again: %v, %d puts", err, puts)
	}
	// Shutdown writes everything accepted, quiet or not.
	if n := next.state.flush(ctx, time.Time{}); n != 1 {
		t.Errorf("shutdown flush wrote %d records, want 1", n)
	}
	if v, _ := recordOf(t, store, g); v.Pending || v.Presence != "online" {
		t.Errorf("record after the shutdown flush: %+v", v)
	}
}

// TestSyncPositionWrittenOnceHandled: the /sync position mautrix saves
// before handing a response over is stored only once its events were
// handled, and read back by the next process.
func TestSyncPositionWrittenOnceHandled(t *testing.T) {
	ctx := context.Background()
	store := bridge.NewMemoryStore()
	st := newSideState(store, testLogger(t))
	const bot = "@presencebot:localhost"
	y := newSyncStore(st, bot)
	if tok, _ := y.LoadNextBatch(ctx, bot); tok != "" {
		t.Fatalf("fresh store: %q", tok)
	}
	_ = y.SaveNextBatch(ctx, bot, "s1")
	if y2 := newSyncStore(st, bot); must(y2.LoadNextBatch(ctx, bot)) != "" {
		t.Error("a position stored before its response was handled")
	}
	y.commit(ctx, "s1")
	if y2 := newSyncStore(st, bot); must(y2.LoadNextBatch(ctx, bot)) != "s1" {
		t.Error("the handled position was not stored")
	}
	y.commit(ctx, "s2") // never saved by mautrix: not a position of this sync
	if y2 := newSyncStore(st, bot); must(y2.LoadNextBatch(ctx, bot)) != "s1" {
		t.Error("a position mautrix did not save was stored")
	}
	y.reset(ctx)
	if y2 := newSyncStore(st, bot); must(y2.LoadNextBatch(ctx, bot)) != "" {
		t.Error("the position survived a reset")
	}
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}
