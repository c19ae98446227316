package matrixside

import (
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

func TestMembershipReports(t *testing.T) {
	s := newTestSide(t, testConfig("http://127.0.0.1:1"), nil, &fakeObserver{})
	alice := id.UserID(ghostOf(t, "alice@example.com"))
	const bob, carol, dave, room = "@bob:localhost", "@carol:localhost", "@dave:localhost", "!dm:localhost"
	type want struct {
		user         mapping.UserID
		ghostChanged bool
		membership   bridge.Membership
		bySelf       bool
	}
	steps := []struct {
		name             string
		sender, stateKey id.UserID
		membership       event.Membership
		want             []want
	}{
		{"outsiders ignored", carol, dave, event.MembershipJoin, nil},
		{"bob invites ghost", bob, alice, event.MembershipInvite, []want{{bob, true, bridge.MembershipInvite, false}}},
		{"ghost joins", alice, alice, event.MembershipJoin, []want{{bob, true, bridge.MembershipJoin, true}}},
		{"carol joins the room", carol, carol, event.MembershipJoin, []want{{carol, false, bridge.MembershipJoin, true}}},
		{"bot invited", bob, "@presencebot:localhost", event.MembershipInvite, nil},
		{"undecodable ghost", bob, "@_xmpp_UPPER:localhost", event.MembershipInvite, nil},
		{"upper case user", "@Bob:localhost", alice, event.MembershipInvite, nil},
		{"knock", dave, dave, event.MembershipKnock, nil},
		{"ghost invites dave", alice, dave, event.MembershipInvite, []want{{dave, false, bridge.MembershipInvite, false}}},
		{"dave rejects", dave, dave, event.MembershipLeave, []want{{dave, false, bridge.MembershipReject, true}}},
		{"bob leaves", bob, bob, event.MembershipLeave, []want{{bob, false, bridge.MembershipLeave, true}}},
		{"carol kicks ghost", carol, alice, event.MembershipLeave, []want{{carol, true, bridge.MembershipLeave, false}}},
		{"nobody left to tell", carol, carol, event.MembershipLeave, nil},
	}
	for i, st := range steps {
		rs := s.membershipReports(memberEvent{ID: id.EventID("$" + st.name), RoomID: room, Sender: st.sender, Target: st.stateKey, Membership: st.membership})
		var got []want
		for _, r := range rs {
			got = append(got, want{r.User, r.GhostChanged, r.Membership, r.BySelf})
			if r.Ghost != "alice@example.com" || r.RoomID != room || r.ID == "" {
				t.Errorf("%s: report %+v", st.name, r)
			}
		}
		if len(got) != len(st.want) || (len(got) > 0 && got[0] != st.want[0]) {
			t.Errorf("step %d %s: got %+v, want %+v", i, st.name, got, st.want)
		}
	}
}
