package matrixfed

import (
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	"github.com/presence-bridge/presence-bridge/mapping"
)

const wait = 15 * time.Second

// joined is a Dendrite user in a direct chat with the ghost of bob, which
// the gateway joined after the invite reached it.
type joined struct {
	d     *dendritetest.Server
	gw    *testGateway
	alice *dendritetest.Client
	ghost string
	jid   mapping.BareJID
	room  string
}

// inviteAndJoin: a Dendrite user opens a direct chat with bob's ghost;
// the invite reaches the gateway and is reported; the core's Join
// (played by the test) makes the ghost join over federation.
func inviteAndJoin(t *testing.T) joined {
	t.Helper()
	d := dendritetest.Start(t, dendritetest.Options{Federation: true})
	gw := startGateway(t, gatewayConfig(t, t.TempDir()), bridge.NewMemoryStore(), &recorder{})
	j := joined{d: d, gw: gw, alice: d.CreateUser(t, "alice", "alicepassword"), jid: "bob@xmpp.test"}
	j.ghost = gw.ghost(t, j.jid)
	if err := j.alice.SetPresence(t.Context(), "online", "here before the join"); err != nil {
		t.Fatal(err)
	}
	room, err := j.alice.CreateRoom(t.Context(), []string{j.ghost}, true)
	if err != nil {
		t.Fatal(err)
	}
	j.room = room
	// Alice's client is syncing before the ghost joins, as a real one
	// would be. (Dendrite v0.15.2 loses a member joined while a client's
	// first /sync reloads the room's members: their presence would then
	// never reach that client.)
	j.alice.WaitPresence(t, wait, j.alice.UserID, func(dendritetest.Presence) bool { return true })
	var invite bridge.MatrixMembership
	bustest.WaitFor(t, wait, "invite reported", func() bool {
		var ok bool
		invite, ok = gw.obs.findMembership(func(m bridge.MatrixMembership) bool { return m.Membership == bridge.MembershipInvite })
		return ok
	})
	if invite.User != mapping.UserID(j.alice.UserID) || invite.Ghost != j.jid || invite.RoomID != room || !invite.GhostChanged || !invite.IsDirect {
		t.Fatalf("invite report = %+v", invite)
	}
	if dests := gw.rooms.destinations(j.ghost2()); len(dests) != 0 {
		t.Fatalf("before the join the ghost's presence may go nowhere, got %v", dests)
	}
	err = gw.GhostMembership(t.Context(), bridge.GhostMembership{Ghost: j.jid, Peer: mapping.UserID(j.alice.UserID), Membership: bridge.MembershipJoin, RoomID: room})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := gw.obs.findMembership(func(m bridge.MatrixMembership) bool {
		return m.Membership == bridge.MembershipJoin && m.GhostChanged && m.User == mapping.UserID(j.alice.UserID)
	}); !ok {
		t.Fatal("the ghost's join was not reported")
	}
	return j
}

func (j joined) ghost2() id.UserID { return id.UserID(j.ghost) }

// TestStoryInviteJoinPresenceBothWays is story 1 without XMPP: after the
// join each side sees the other's presence and status, and the XMPP
// user's idle time arrives as last_active_ago.
func TestStoryInviteJoinPresenceBothWays(t *testing.T) {
	j := inviteAndJoin(t)
	// Dendrite pushes its users' presence to a server that joins: the
	// gateway takes it even if it arrives before send_join answered.
	bustest.WaitFor(t, wait, "alice's presence from before the join", func() bool {
		p, ok := j.gw.obs.lastPresence(mapping.UserID(j.alice.UserID))
		return ok && p.Status == "here before the join"
	})

	// Under 5 minutes: Dendrite v0.15.2's incremental /sync leaves out
	// presence whose last activity is older.
	idle := 3 * time.Minute
	start := time.Now()
	if err := j.gw.ShowGhost(t.Context(), bridge.GhostPresence{User: j.jid, Presence: mapping.Presence{
		State: mapping.StateAway, Status: "at lunch", LastActive: time.Now().Add(-idle)}}); err != nil {
		t.Fatal(err)
	}
	// Seen from a client that starts syncing after the join: Dendrite
	// v0.15.2's sync notifier sometimes misses a federated member's join
	// for a device that was already syncing (the presence is stored but
	// that device is never sent it); a new /sync session loads the room's
	// members afresh.
	alice2 := j.d.Login(t, "alice", "alicepassword")
	p := alice2.WaitPresence(t, wait, j.ghost, func(p dendritetest.Presence) bool {
		return p.Presence == "unavailable" && p.StatusMsg != nil && *p.StatusMsg == "at lunch"
	})
	t.Logf("ghost presence reached the Dendrite user's /sync in %v", time.Since(start))
	if ago := time.Duration(p.LastActiveAgo) * time.Millisecond; ago < idle || ago > idle+time.Minute {
		t.Errorf("last_active_ago = %v, want about %v", ago, idle)
	}

	start = time.Now()
	if err := j.alice.SetPresence(t.Context(), "online", "reading"); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, wait, "alice's presence reported", func() bool {
		p, ok := j.gw.obs.lastPresence(mapping.UserID(j.alice.UserID))
		return ok && p.State == mapping.StateAvailable && p.Status == "reading"
	})
	t.Logf("Dendrite user's presence reached the gateway in %v", time.Since(start))

	// The periodic refresh (presence_refresh) pushes the ghost again to
	// every server it shares a room with.
	before := j.gw.out.pushed(j.d.ServerName)
	j.gw.out.refresh()
	bustest.WaitFor(t, wait, "refresh pushed", func() bool { return j.gw.out.pushed(j.d.ServerName) > before })
}
