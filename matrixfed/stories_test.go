package matrixfed

import (
	"context"
	"fmt"
	"testing"
	"time"

	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/dendrite"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	"github.com/presence-bridge/presence-bridge/mapping"
)

func (j joined) show(t *testing.T, status string) {
	t.Helper()
	if err := j.gw.ShowGhost(t.Context(), bridge.GhostPresence{User: j.jid, Presence: mapping.Presence{State: mapping.StateAvailable, Status: status}}); err != nil {
		t.Fatal(err)
	}
}

func statusIs(s string) func(dendritetest.Presence) bool {
	return func(p dendritetest.Presence) bool { return p.StatusMsg != nil && *p.StatusMsg == s }
}

// TestStoryNoSharedRoomNothingSent is story 2: a Matrix user sharing no
// room with the ghost, on the same server or on another federating one,
// sees nothing, the other server is sent nothing, and their presence is
// never reported.
func TestStoryNoSharedRoomNothingSent(t *testing.T) {
	j := inviteAndJoin(t)
	other := dendritetest.Start(t, dendritetest.Options{Federation: true})
	carol := j.d.CreateUser(t, "carol", "carolpassword")
	dave := other.CreateUser(t, "dave", "davepassword")
	// Dave and carol share a room with each other, not with the ghost.
	room, err := carol.CreateRoom(t.Context(), []string{dave.UserID}, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := dave.Join(t.Context(), room); err != nil {
		t.Fatal(err)
	}
	j.show(t, "visible to alice only")
	alice2 := j.d.Login(t, "alice", "alicepassword")
	alice2.WaitPresence(t, wait, j.ghost, statusIs("visible to alice only"))
	if err := carol.SetPresence(t.Context(), "online", "carol here"); err != nil {
		t.Fatal(err)
	}
	if err := dave.SetPresence(t.Context(), "online", "dave here"); err != nil {
		t.Fatal(err)
	}
	// Carol's and dave's syncs run for a while and never show the ghost.
	for _, c := range []*dendritetest.Client{carol, dave} {
		sctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		resp, err := c.Sync(sctx, dendrite.SyncOptions{Timeout: time.Second})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range resp.Presence {
			if p.Sender == j.ghost {
				t.Errorf("%s saw the ghost's presence: %s", c.UserID, p.Raw)
			}
		}
	}
	if n := j.gw.out.pushed(other.ServerName); n != 0 {
		t.Errorf("%d presence updates sent to %s, which shares no room with the ghost", n, other.ServerName)
	}
	for _, u := range []string{carol.UserID, dave.UserID} {
		if _, ok := j.gw.obs.lastPresence(mapping.UserID(u)); ok {
			t.Errorf("presence of %s, who shares no room with the ghost, was reported", u)
		}
	}
}

// TestStoryLeaveEndsTheFlow is story 3: the Matrix user leaving ends the
// flow both ways (reported; nothing sent any more, nothing reported);
// and the ghost leaving on the core's command (the XMPP user
// unsubscribed) does the same, after showing offline.
func TestStoryLeaveEndsTheFlow(t *testing.T) {
	t.Run("matrix user leaves", func(t *testing.T) {
		j := inviteAndJoin(t)
		if err := j.alice.Leave(t.Context(), j.room); err != nil {
			t.Fatal(err)
		}
		bustest.WaitFor(t, wait, "leave reported", func() bool {
			_, ok := j.gw.obs.findMembership(func(m bridge.MatrixMembership) bool {
				return m.Membership == bridge.MembershipLeave && m.User == mapping.UserID(j.alice.UserID) && !m.GhostChanged && m.BySelf
			})
			return ok
		})
		if d := j.gw.rooms.destinations(j.ghost2()); len(d) != 0 {
			t.Fatalf("destinations after the leave: %v", d)
		}
		before := j.gw.out.pushed(j.d.ServerName)
		j.show(t, "after the leave")
		n := j.gw.obs.presenceCount()
		if err := j.alice.SetPresence(t.Context(), "unavailable", "gone"); err != nil {
			t.Fatal(err)
		}
		// Give both a chance to flow, then check that neither did.
		alice2 := j.d.Login(t, "alice", "alicepassword")
		sctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		resp, err := alice2.Sync(sctx, dendrite.SyncOptions{Timeout: 2 * time.Second})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range resp.Presence {
			if p.Sender == j.ghost && p.Content.StatusMsg != nil && *p.Content.StatusMsg == "after the leave" {
				t.Error("the ghost's presence reached alice after she left")
			}
		}
		if got := j.gw.out.pushed(j.d.ServerName); got != before {
			t.Errorf("%d presence updates sent after the leave", got-before)
		}
		if p, ok := j.gw.obs.lastPresence(mapping.UserID(j.alice.UserID)); ok && p.Status == "gone" {
			t.Errorf("alice's presence reported after she left (%d reports before)", n)
		}
	})
	t.Run("ghost leaves on command", func(t *testing.T) {
		j := inviteAndJoin(t)
		off := mapping.Presence{State: mapping.StateOffline}
		err := j.gw.GhostMembership(t.Context(), bridge.GhostMembership{Ghost: j.jid, Peer: mapping.UserID(j.alice.UserID),
			Membership: bridge.MembershipLeave, RoomID: j.room, Before: &off})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := j.gw.obs.findMembership(func(m bridge.MatrixMembership) bool {
			return m.Membership == bridge.MembershipLeave && m.GhostChanged && m.BySelf
		}); !ok {
			t.Fatal("the ghost's leave was not reported")
		}
		var members struct {
			Joined map[string]any `json:"joined"`
		}
		if err := j.alice.Do(t.Context(), "GET", "/_matrix/client/v3/rooms/"+j.room+"/joined_members", nil, &members); err != nil {
			t.Fatal(err)
		}
		if _, in := members.Joined[j.ghost]; in {
			t.Fatal("Dendrite still has the ghost in the room")
		}
		if _, ok := j.gw.rooms.get(id.RoomID(j.room)); ok {
			t.Error("the gateway still keeps a room it has no ghost in")
		}
	})
}

// TestStoryForgedTransactionsChangeNothing is story 4 with a real room:
// a transaction signed by another server pushing alice's presence, and
// one claiming Dendrite's name without its key, change nothing.
func TestStoryForgedTransactionsChangeNothing(t *testing.T) {
	j := inviteAndJoin(t)
	f := newForger(t)
	push := []byte(`{"edu_type":"m.presence","content":{"push":[{"user_id":"` + j.alice.UserID + `","presence":"offline","status_msg":"forged","last_active_ago":0}]}}`)
	send := func(c *federation.Client, origin string) error {
		_, err := c.SendTransaction(t.Context(), &federation.ReqSendTransaction{Destination: j.gw.cfg.ServerName,
			TxnID: "forged" + origin + time.Now().Format(".000000000"), Origin: origin, PDUs: []federation.PDU{}, EDUs: []federation.EDU{push}})
		return err
	}
	// Signed by the forger, for a user of Dendrite: accepted, ignored.
	if err := send(f.client, f.name); err != nil {
		t.Fatal(err)
	}
	// Claiming to be Dendrite, signed with a key Dendrite does not have.
	if err := send(testClient(j.d.ServerName, federation.GenerateSigningKey()), j.d.ServerName); status(err) != 401 {
		t.Errorf("impersonation: %v, want 401", err)
	}
	// A real change afterwards still arrives, and the forgery never did.
	if err := j.alice.SetPresence(t.Context(), "online", "real"); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, wait, "alice's real presence", func() bool {
		p, ok := j.gw.obs.lastPresence(mapping.UserID(j.alice.UserID))
		return ok && p.Status == "real"
	})
	j.gw.obs.mu.Lock()
	defer j.gw.obs.mu.Unlock()
	for _, p := range j.gw.obs.presence {
		if p.Presence.Status == "forged" {
			t.Errorf("forged presence reported: %+v", p)
		}
	}
}

// TestStoryRestartKeepsEverything is story 5 at the package level: a new
// gateway on the same data dir and store has the same key and rooms, and
// pushes the presence the core recorded without anyone acting.
func TestStoryRestartKeepsEverything(t *testing.T) {
	j := inviteAndJoin(t)
	key := j.gw.KeyID()
	// What the core recorded last for bob (it writes pb_presence).
	if _, err := j.gw.store.Presence.Put(t.Context(), bridge.PresenceKey(mapping.NetworkXMPP, string(j.jid)),
		bridge.PresenceRecord{Presence: mapping.Presence{State: mapping.StateAvailable, Status: "after restart"}}); err != nil {
		t.Fatal(err)
	}
	j.gw.stop()
	gw2 := startGateway(t, j.gw.cfg, j.gw.store, &recorder{})
	if gw2.KeyID() != key {
		t.Fatalf("key changed: %s then %s", key, gw2.KeyID())
	}
	if d := gw2.rooms.destinations(j.ghost2()); len(d) != 1 || d[0] != j.d.ServerName {
		t.Fatalf("destinations after restart: %v", d)
	}
	alice2 := j.d.Login(t, "alice", "alicepassword")
	alice2.WaitPresence(t, wait, j.ghost, statusIs("after restart"))
	if err := j.alice.SetPresence(t.Context(), "online", "hello again"); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, wait, "alice's presence after the restart", func() bool {
		p, ok := gw2.obs.lastPresence(mapping.UserID(j.alice.UserID))
		return ok && p.Status == "hello again"
	})
}

// TestStoryDestinationDownLatestOnly is story 6 with a shorter outage
// (10 s; the behaviour does not depend on the length: the destination's
// queue backs off up to retry_max and keeps only the latest presence):
// the changes made while Dendrite is down arrive, latest only, once it is
// back.
func TestStoryDestinationDownLatestOnly(t *testing.T) {
	j := inviteAndJoin(t)
	j.show(t, "before")
	alice2 := j.d.Login(t, "alice", "alicepassword")
	alice2.WaitPresence(t, wait, j.ghost, statusIs("before"))
	j.d.Stop()
	for _, s := range []string{"one", "two", "three"} {
		j.show(t, s)
	}
	bustest.WaitFor(t, wait, "a failed attempt", func() bool {
		j.gw.out.mu.Lock()
		defer j.gw.out.mu.Unlock()
		d := j.gw.out.dests[j.d.ServerName]
		return d != nil && len(d.pending) == 1
	})
	outage := time.NewTimer(10 * time.Second)
	<-outage.C
	j.d.Start(t)
	p := alice2.WaitPresence(t, 30*time.Second, j.ghost, func(p dendritetest.Presence) bool {
		return p.StatusMsg != nil && *p.StatusMsg != "before"
	})
	if *p.StatusMsg != "three" {
		t.Errorf("first presence after the outage: %q, want the latest, three", *p.StatusMsg)
	}
}

// TestDownDestinationHoldsUpNoOther: the ghost shares rooms with users of
// two servers; while one is down, the other still gets every change at
// once, and the one that was down gets the latest when it is back.
func TestDownDestinationHoldsUpNoOther(t *testing.T) {
	j := inviteAndJoin(t)
	other := dendritetest.Start(t, dendritetest.Options{Federation: true})
	carol := other.CreateUser(t, "carol", "carolpassword")
	room, err := carol.CreateRoom(t.Context(), []string{j.ghost}, true)
	if err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, wait, "carol's invite", func() bool {
		_, ok := j.gw.obs.findMembership(func(m bridge.MatrixMembership) bool {
			return m.Membership == bridge.MembershipInvite && m.User == mapping.UserID(carol.UserID)
		})
		return ok
	})
	if err := j.gw.GhostMembership(t.Context(), bridge.GhostMembership{Ghost: j.jid, Peer: mapping.UserID(carol.UserID), Membership: bridge.MembershipJoin, RoomID: room}); err != nil {
		t.Fatal(err)
	}
	if d := j.gw.rooms.destinations(j.ghost2()); len(d) != 2 {
		t.Fatalf("destinations: %v, want both servers", d)
	}
	carol2 := other.Login(t, "carol", "carolpassword")
	alice2 := j.d.Login(t, "alice", "alicepassword")
	j.show(t, "both up")
	carol2.WaitPresence(t, wait, j.ghost, statusIs("both up"))
	alice2.WaitPresence(t, wait, j.ghost, statusIs("both up"))

	j.d.Stop()
	for i := range 3 {
		status := fmt.Sprintf("alice's server down %d", i)
		start := time.Now()
		j.show(t, status)
		carol2.WaitPresence(t, wait, j.ghost, statusIs(status))
		if took := time.Since(start); took > time.Second {
			t.Errorf("with the other server down, a change took %v to reach carol", took)
		}
	}
	j.d.Start(t)
	alice2.WaitPresence(t, 30*time.Second, j.ghost, statusIs("alice's server down 2"))
}
