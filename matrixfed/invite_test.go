package matrixfed

import (
	"encoding/json/jsontext"
	"encoding/json/v2"
	"fmt"
	"net/http"
	"testing"
	"time"

	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// invite sends an invite of ghost to a room of the forger's, from
// sender, signed with signer's key.
func (f *forger) invite(t *testing.T, ghost, sender id.UserID, room string, signer *federation.SigningKey) error {
	t.Helper()
	sk := string(ghost)
	p := &pdu.PDU{Type: "m.room.member", StateKey: &sk, Sender: sender, RoomID: id.RoomID(room),
		Content: jsontext.Value(`{"membership":"invite","is_direct":true}`), OriginServerTS: time.Now().UnixMilli(), Depth: 3,
		AuthEvents: []id.EventID{}, PrevEvents: []id.EventID{}}
	if err := p.Sign("10", f.name, signer.ID, signer.Priv); err != nil {
		t.Fatal(err)
	}
	evID, err := p.GetEventID("10")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.client.SendInvite(t.Context(), &federation.ReqSendInvite{RoomID: id.RoomID(room), UserID: ghost, EventID: evID,
		Event: raw, InviteRoomState: []federation.PDU{}, RoomVersion: "10"})
	if err == nil {
		signed, perr := parsePDU(resp.Event)
		if perr != nil || len(signed.Signatures[ghost.Homeserver()]) == 0 || len(signed.Signatures[f.name]) == 0 {
			t.Errorf("the invite came back without both signatures: %s", resp.Event)
		}
	}
	return err
}

// TestInvitesAreChecked: an invite of a ghost signed by its sender's
// server is signed back and reported; one whose sender is of another
// server, or whose signature is bad, is refused and changes nothing; and
// one server can keep only so many invites pending.
func TestInvitesAreChecked(t *testing.T) {
	cfg := gatewayConfig(t, t.TempDir())
	cfg.OriginBurst = 1000 // the budget of pending invites is what is tested
	obs := &recorder{}
	gw := startGateway(t, cfg, bridge.NewMemoryStore(), obs)
	f := newForger(t)
	ghost := id.UserID(gw.ghost(t, "bob@xmpp.test"))
	eve := id.UserID("@eve:" + f.name)

	if err := f.invite(t, ghost, eve, "!ok:"+f.name, f.key); err != nil {
		t.Fatalf("a valid invite: %v", err)
	}
	if _, ok := obs.findMembership(func(m bridge.MatrixMembership) bool {
		return m.Membership == bridge.MembershipInvite && m.User == mapping.UserID(eve) && m.Ghost == "bob@xmpp.test" && m.IsDirect
	}); !ok {
		t.Fatal("the valid invite was not reported")
	}
	if err := f.invite(t, ghost, "@mallory:elsewhere.test", "!other:"+f.name, f.key); status(err) != http.StatusForbidden {
		t.Errorf("an invite from another server's user: %v, want 403", err)
	}
	if err := f.invite(t, ghost, eve, "!badsig:"+f.name, federation.GenerateSigningKey()); status(err) != http.StatusForbidden {
		t.Errorf("an invite with a bad signature: %v, want 403", err)
	}
	for _, rid := range []string{"!other:" + f.name, "!badsig:" + f.name} {
		if _, ok := gw.rooms.get(id.RoomID(rid)); ok {
			t.Errorf("refused invite to %s recorded", rid)
		}
	}
	for i := 1; i < maxPendingInvites; i++ {
		if err := f.invite(t, ghost, eve, fmt.Sprintf("!r%d:%s", i, f.name), f.key); err != nil {
			t.Fatalf("invite %d: %v", i, err)
		}
	}
	if err := f.invite(t, ghost, eve, "!onetoomany:"+f.name, f.key); status(err) != http.StatusForbidden {
		t.Errorf("invite over the pending budget: %v, want 403", err)
	}
}

// TestStubsForGhosts: what peers ask of any server whose users are in
// their rooms is answered for the ghosts (display name = the JID, no
// devices, no keys) and 404 for anyone else.
func TestStubsForGhosts(t *testing.T) {
	cfg := gatewayConfig(t, t.TempDir())
	gw := startGateway(t, cfg, bridge.NewMemoryStore(), &recorder{})
	f := newForger(t)
	ghost := id.UserID(gw.ghost(t, "bob@xmpp.test"))
	prof, err := f.client.QueryProfile(t.Context(), cfg.ServerName, ghost)
	if err != nil || prof.DisplayName != "bob@xmpp.test" {
		t.Errorf("profile of the ghost: %+v, %v", prof, err)
	}
	if _, err := f.client.QueryProfile(t.Context(), cfg.ServerName, id.UserID("@nobody:elsewhere.test")); status(err) != http.StatusNotFound {
		t.Errorf("profile of a stranger: %v, want 404", err)
	}
	var devices struct {
		UserID  id.UserID `json:"user_id"`
		Devices []any     `json:"devices"`
	}
	err = f.client.MakeRequest(t.Context(), cfg.ServerName, true, http.MethodGet, federation.URLPath{"v1", "user", "devices", ghost}, nil, &devices)
	if err != nil || devices.UserID != ghost || devices.Devices == nil || len(devices.Devices) != 0 {
		t.Errorf("devices of the ghost: %+v, %v", devices, err)
	}
	var keys struct {
		DeviceKeys map[id.UserID]map[string]any `json:"device_keys"`
	}
	err = f.client.MakeRequest(t.Context(), cfg.ServerName, true, http.MethodPost, federation.URLPath{"v1", "user", "keys", "query"},
		map[string]any{"device_keys": map[id.UserID][]string{ghost: {}}}, &keys)
	if _, ok := keys.DeviceKeys[ghost]; err != nil || !ok {
		t.Errorf("keys of the ghost: %+v, %v", keys, err)
	}
}
