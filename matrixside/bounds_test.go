package matrixside

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// countingObserver is a core that only counts, so that memory tests
// measure the side alone.
type countingObserver struct{ presence, memberships atomic.Int64 }

func (o *countingObserver) MatrixPresence(context.Context, bridge.MatrixPresence) error {
	o.presence.Add(1)
	return nil
}

func (o *countingObserver) MatrixMembership(context.Context, bridge.MatrixMembership) error {
	o.memberships.Add(1)
	return nil
}

func (o *countingObserver) MatrixOptOut(context.Context, bridge.OptOut[mapping.UserID]) error {
	return nil
}

// remoteInput feeds the side what a busy or hostile federation would:
// presence to show for n ghosts (the core's commands), presence of n
// Matrix users, and n rooms in which a Matrix user invites a ghost, each
// name new, numbered from first.
func remoteInput(t testing.TB, s *Side, first, n int) {
	t.Helper()
	now := time.Now()
	for i := first; i < first+n; i++ {
		s.showGhost(mapping.BareJID(fmt.Sprintf("u%d@example.com", i)), presenceIs(mapping.StateAvailable, "x"), time.Time{}, now)
	}
	const batch = 500
	for b := first; b < first+n; b += batch {
		var events, ephemeral []string
		for i := b; i < min(b+batch, first+n); i++ {
			ghost := ghostOf(t, mapping.BareJID(fmt.Sprintf("g%d@example.com", i)))
			events = append(events, fmt.Sprintf(`{"type":"m.room.member","event_id":"$e%d","room_id":"!r%d:remote.example","sender":"@m%d:remote.example","state_key":"%s","content":{"membership":"invite","is_direct":true}}`, i, i, i, ghost))
			ephemeral = append(ephemeral, presenceJSON(fmt.Sprintf("@p%d:remote.example", i), "online", "hi", 0))
		}
		txn := `{"events":[` + strings.Join(events, ",") + `],"ephemeral":[` + strings.Join(ephemeral, ",") + `]}`
		if status, body := doAS(t, s.Handler(), "PUT", fmt.Sprintf("/_matrix/app/v1/transactions/t%d", b), testHS, txn); status != 200 {
			t.Fatalf("transaction: %d %v", status, body)
		}
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestStateBounded: every table the side keys by what the homeserver or
// remote users send is bounded by matrix.max_tracked: ghosts' outgoing
// presence, Matrix users' last presence, the room index (and the members
// of one room by maxRoomMembers); past the bound the least recently used
// entry is forgotten and counted. So the side's memory stays flat however
// many names arrive.
func TestStateBounded(t *testing.T) {
	hs := newFakeHS(t)
	cfg := testConfig(hs.URL)
	cfg.PresenceSource = SourceEphemeral
	cfg.MaxTracked = 64
	obs := &countingObserver{}
	s := newTestSide(t, cfg, nil, obs)

	remoteInput(t, s, 0, 2000)
	for table, n := range trackedSizes(s) {
		if n > cfg.MaxTracked {
			t.Errorf("%s: %d entries, bound %d", table, n, cfg.MaxTracked)
		}
	}
	if got := obs.presence.Load(); got != 2000 {
		t.Errorf("%d presence reports, want every one of the 2000 users", got)
	}
	if got := obs.memberships.Load(); got != 2000 {
		t.Errorf("%d membership reports, want every one of the 2000 invites", got)
	}
	c := s.Counts()
	if c.EvictedGhosts < 2000-64 || c.EvictedMatrixUsers < 2000-64 || c.EvictedRooms < 2000-64 {
		t.Errorf("Counts %+v, want the evictions counted", c)
	}

	// Memory: 20,000 more of each costs nothing that stays.
	before := heapInUse()
	remoteInput(t, s, 2000, 20000)
	after := heapInUse()
	runtime.KeepAlive(s) // measured alive
	grew := int64(after) - int64(before)
	t.Logf("heap %d KB before, %d KB after 20,000 more ghosts, users and rooms (%+d KB)", before>>10, after>>10, grew>>10)
	if grew > 4<<20 {
		t.Errorf("heap grew by %d KB for 20,000 names past the bound", grew>>10)
	}
}

// TestRoomMembersBounded: in a big room with a ghost, the room index keeps
// at most maxRoomMembers Matrix users; their own joins are still reported.
func TestRoomMembersBounded(t *testing.T) {
	hs := newFakeHS(t)
	cfg := testConfig(hs.URL)
	cfg.PresenceSource = SourceEphemeral
	obs := &countingObserver{}
	s := newTestSide(t, cfg, nil, obs)
	ghost := ghostOf(t, "alice@example.com")
	s.rooms.add("!big:remote.example", id.UserID(ghost), "")
	const members = 3000
	var events []string
	for i := range members {
		events = append(events, fmt.Sprintf(`{"type":"m.room.member","event_id":"$j%d","room_id":"!big:remote.example","sender":"@m%d:remote.example","state_key":"@m%d:remote.example","content":{"membership":"join"}}`, i, i, i))
	}
	if status, _ := doAS(t, s.Handler(), "PUT", "/_matrix/app/v1/transactions/big", testHS, `{"events":[`+strings.Join(events, ",")+`]}`); status != 200 {
		t.Fatal(status)
	}
	if n := len(s.rooms.usersIn("!big:remote.example")); n != maxRoomMembers {
		t.Errorf("room index keeps %d members of one room, want the bound %d", n, maxRoomMembers)
	}
	if got := obs.memberships.Load(); got != members {
		t.Errorf("%d membership reports, want %d", got, members)
	}
}

// TestGhostRegistrationCacheBounded: the ghosts known to be registered are
// remembered up to max_tracked; a forgotten one is registered again on its
// next use (the homeserver says M_USER_IN_USE, which is fine).
func TestGhostRegistrationCacheBounded(t *testing.T) {
	hs := newFakeHS(t)
	cfg := testConfig(hs.URL)
	cfg.MaxTracked = 64
	s := newTestSide(t, cfg, nil, &fakeObserver{})
	for i := range 200 {
		jid := mapping.BareJID(fmt.Sprintf("r%d@example.com", i))
		if _, err := s.ghosts.ensure(t.Context(), id.UserID(ghostOf(t, jid)), jid); err != nil {
			t.Fatal(err)
		}
	}
	if n := trackedSizes(s)["registered ghosts"]; n > cfg.MaxTracked {
		t.Errorf("registration cache keeps %d ghosts, bound %d", n, cfg.MaxTracked)
	}
	if n := s.Counts().EvictedGhosts; n != 200-64 {
		t.Errorf("Counts().EvictedGhosts = %d, want %d", n, 200-64)
	}
	if _, err := s.ghosts.ensure(t.Context(), id.UserID(ghostOf(t, "r0@example.com")), "r0@example.com"); err != nil {
		t.Errorf("a forgotten ghost used again: %v", err)
	}
}
