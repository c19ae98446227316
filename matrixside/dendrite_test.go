package matrixside

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Tests in this file run against a real Dendrite (see dendritetest); they
// are skipped when its binaries are not built.

const wait = 30 * time.Second

type env struct {
	srv  *dendritetest.Server
	side *Side
	bus  *bridge.Bus
	cfg  Config
	in   *busRecorder // everything the side publishes
	stop func()       // stops the side (clean shutdown)
}

// startEnv starts Dendrite with the side's own registration (so every
// test also checks Dendrite accepts it unchanged), a bus, and the side
// listening where the registration says.
func startEnv(t *testing.T, edit func(*Config), beforeRun func(*Side)) *env {
	t.Helper()
	ln := freeListener(t)
	cfg := testConfig("http://placeholder")
	cfg.ASToken, cfg.HSToken = NewToken(), NewToken()
	cfg.AppServiceURL = "http://" + ln.Addr().String()
	reg, err := Registration(cfg, testNS).YAML()
	if err != nil {
		t.Fatal(err)
	}
	srv := dendritetest.Start(t, dendritetest.Options{ServerName: testDomain, AppServiceRegistration: string(reg)})
	cfg.HomeserverURL = srv.URL
	if edit != nil {
		edit(&cfg)
	}
	bus := openTestBus(t, "")
	e := &env{srv: srv, bus: bus, cfg: cfg, in: record(t, bus, bridge.SubjectFilter(bridge.In, mapping.NetworkMatrix, ""))}
	busy, err := DetectBusy(t.Context(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, testNS, mapping.NewTranslator(mapping.DefaultTable(), busy), bus, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if beforeRun != nil {
		beforeRun(s)
	}
	e.stop = runSide(t, s, ln)
	e.side = s
	return e
}

func (e *env) command(t *testing.T, kind bridge.Kind, ev *bridge.Event) {
	t.Helper()
	ev.Kind, ev.Origin = kind, mapping.NetworkXMPP
	if err := e.bus.Publish(t.Context(), bridge.Out, ev); err != nil {
		t.Fatal(err)
	}
}

func (e *env) setPresence(t *testing.T, jid string, p mapping.Presence) {
	t.Helper()
	e.command(t, bridge.KindPresence, &bridge.Event{User: jid, Presence: &p})
}

func (e *env) membership(t *testing.T, jid, peer, membership, roomID string) {
	t.Helper()
	e.command(t, bridge.KindMembership, &bridge.Event{User: jid, Peer: peer, Membership: &bridge.MembershipPayload{Membership: membership, RoomID: roomID}})
}

// openDirect has the core ask alice's ghost for a direct chat with user,
// who accepts.
func (e *env) openDirect(t *testing.T, jid string, user *dendritetest.Client) string {
	t.Helper()
	e.membership(t, jid, user.UserID, "invite", "")
	roomID, inviter := user.WaitInvite(t, wait)
	if inviter != ghostOf(t, jid) {
		t.Fatalf("invite from %s, want the ghost of %s", inviter, jid)
	}
	if err := user.Join(t.Context(), roomID); err != nil {
		t.Fatal(err)
	}
	return roomID
}

func statusIs(presence, status string) func(dendritetest.Presence) bool {
	return func(p dendritetest.Presence) bool {
		got := ""
		if p.StatusMsg != nil {
			got = *p.StatusMsg
		}
		return p.Presence == presence && got == status
	}
}

func membershipIs(user, peer, membership, member, roomID string) func(*bridge.Event) bool {
	return func(ev *bridge.Event) bool {
		return ev.Kind == bridge.KindMembership && ev.User == user && ev.Peer == peer &&
			ev.Membership.Membership == membership && ev.Membership.Member == member &&
			(roomID == "" || ev.Membership.RoomID == roomID)
	}
}

func TestGhostPresenceSeenByMatrixUser(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	const alice = "alice@example.com"
	ghost := ghostOf(t, alice)
	roomID := e.openDirect(t, alice, bob)

	waitFor(t, wait, "room in links", func() bool {
		l, _, err := e.bus.Store().Links.Get(t.Context(), bridge.PairKey(bob.UserID, alice))
		return err == nil && l.RoomID == roomID && l.State == bridge.LinkAsked
	})
	var name struct {
		DisplayName string `json:"displayname"`
	}
	if err := bob.Do(t.Context(), http.MethodGet, "/_matrix/client/v3/profile/"+url.PathEscape(ghost)+"/displayname", nil, &name); err != nil || name.DisplayName != alice {
		t.Errorf("ghost display name %q (%v), want %s", name.DisplayName, err, alice)
	}

	e.setPresence(t, alice, presenceOf(mapping.StateAvailable, "via XMPP"))
	bob.WaitPresence(t, wait, ghost, statusIs("online", "via XMPP"))
	e.setPresence(t, alice, presenceOf(mapping.StateAway, "lunch"))
	bob.WaitPresence(t, wait, ghost, statusIs("unavailable", "lunch"))
	e.setPresence(t, alice, presenceOf(mapping.StateAvailable, ""))
	bob.WaitPresence(t, wait, ghost, statusIs("online", ""))
	e.setPresence(t, alice, presenceOf(mapping.StateOffline, ""))
	bob.WaitPresence(t, wait, ghost, statusIs("offline", ""))

	// The ghost's presence never comes back in as a Matrix user's.
	_ = e.bus.Conn().Flush()
	if ev := e.in.find(func(ev *bridge.Event) bool { return ev.Kind == bridge.KindPresence && ev.User == ghost }); ev != nil {
		t.Errorf("ghost presence published: %+v", ev)
	}
}

func TestMatrixPresenceViaSync(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.PresenceSource = SourceSync }, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	// bob shares a room with the bot: the bot accepts the invite.
	roomID, err := bob.CreateRoom(t.Context(), []string{e.cfg.BotMXID()}, false)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, wait, "bot joined", func() bool {
		var m struct {
			Joined map[string]any `json:"joined"`
		}
		err := bob.Do(t.Context(), http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/joined_members", nil, &m)
		_, ok := m.Joined[e.cfg.BotMXID()]
		return err == nil && ok
	})
	if err := bob.SetPresence(t.Context(), "unavailable", "lunch"); err != nil {
		t.Fatal(err)
	}
	e.in.wait(t, wait, "bob away", func(ev *bridge.Event) bool {
		return ev.Kind == bridge.KindPresence && ev.User == bob.UserID && ev.Presence.State == mapping.StateAway && ev.Presence.Status == "lunch"
	})
	if err := bob.SetPresence(t.Context(), "online", "back"); err != nil {
		t.Fatal(err)
	}
	e.in.wait(t, wait, "bob back", func(ev *bridge.Event) bool {
		return ev.Kind == bridge.KindPresence && ev.User == bob.UserID && ev.Presence.State == mapping.StateAvailable && ev.Presence.Status == "back"
	})
	if ev := e.in.find(func(ev *bridge.Event) bool { return ev.Kind == bridge.KindPresence && ev.User == e.cfg.BotMXID() }); ev != nil {
		t.Errorf("bot presence published: %+v", ev)
	}
}

func TestMatrixPresenceViaPoll(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.PresenceSource = SourcePoll; c.PollInterval = 200 * time.Millisecond }, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	e.side.Watch(bob.UserID)
	if err := bob.SetPresence(t.Context(), "unavailable", "gone fishing"); err != nil {
		t.Fatal(err)
	}
	e.in.wait(t, wait, "bob away", func(ev *bridge.Event) bool {
		return ev.Kind == bridge.KindPresence && ev.User == bob.UserID && ev.Presence.State == mapping.StateAway && ev.Presence.Status == "gone fishing"
	})
	if err := bob.SetPresence(t.Context(), "offline", ""); err != nil {
		t.Fatal(err)
	}
	e.in.wait(t, wait, "bob offline", func(ev *bridge.Event) bool {
		return ev.Kind == bridge.KindPresence && ev.User == bob.UserID && ev.Presence.State == mapping.StateOffline
	})
	// Unchanged presence is not published again, however often polled.
	n := e.in.count(func(ev *bridge.Event) bool { return ev.User == bob.UserID })
	rounds := e.side.pollRounds.Load()
	waitFor(t, wait, "five more poll rounds", func() bool { return e.side.pollRounds.Load() >= rounds+5 })
	_ = e.bus.Conn().Flush()
	if m := e.in.count(func(ev *bridge.Event) bool { return ev.User == bob.UserID }); m != n {
		t.Errorf("%d presence events after idle polling, had %d", m, n)
	}
}

// inviteGhost has bob invite alice's ghost to a new direct room and waits
// for the invite on the bus.
func inviteGhost(t *testing.T, e *env, bob *dendritetest.Client, jid string) string {
	t.Helper()
	roomID, err := bob.CreateRoom(t.Context(), []string{ghostOf(t, jid)}, true)
	if err != nil {
		t.Fatal(err)
	}
	ev := e.in.wait(t, wait, "invite on the bus", membershipIs(bob.UserID, jid, "invite", jid, roomID))
	if ev.Membership.Sender != bob.UserID || !ev.Membership.IsDirect {
		t.Errorf("invite %+v", ev.Membership)
	}
	return roomID
}

func joinedMembers(t *testing.T, c *dendritetest.Client, roomID string) map[string]any {
	var m struct {
		Joined map[string]any `json:"joined"`
	}
	if err := c.Do(t.Context(), http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/joined_members", nil, &m); err != nil {
		t.Fatal(err)
	}
	return m.Joined
}

func TestInviteGhostAcceptReject(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.PresenceSource = SourceEphemeral }, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	const alice = "alice@example.com"
	ghost := ghostOf(t, alice)

	accepted := inviteGhost(t, e, bob, alice)
	e.membership(t, alice, bob.UserID, "join", accepted)
	e.in.wait(t, wait, "ghost join on the bus", membershipIs(bob.UserID, alice, "join", alice, accepted))
	if _, ok := joinedMembers(t, bob, accepted)[ghost]; !ok {
		t.Errorf("ghost not joined to %s", accepted)
	}

	rejected := inviteGhost(t, e, bob, alice)
	e.membership(t, alice, bob.UserID, "reject", rejected)
	ev := e.in.wait(t, wait, "reject on the bus", membershipIs(bob.UserID, alice, "reject", alice, rejected))
	if ev.Membership.Sender != alice {
		t.Errorf("reject sender %q, want %s", ev.Membership.Sender, alice)
	}
	if _, ok := joinedMembers(t, bob, rejected)[ghost]; ok {
		t.Errorf("ghost joined %s after rejecting", rejected)
	}
}

func TestLeaveAndKickObserved(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.PresenceSource = SourceEphemeral }, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	const alice = "alice@example.com"
	ghost := ghostOf(t, alice)

	left := inviteGhost(t, e, bob, alice)
	e.membership(t, alice, bob.UserID, "join", left)
	e.in.wait(t, wait, "ghost joined", membershipIs(bob.UserID, alice, "join", alice, left))
	if err := bob.Leave(t.Context(), left); err != nil {
		t.Fatal(err)
	}
	ev := e.in.wait(t, wait, "bob's leave", membershipIs(bob.UserID, alice, "leave", bob.UserID, left))
	if ev.Membership.Sender != bob.UserID {
		t.Errorf("leave sender %q", ev.Membership.Sender)
	}

	kicked := inviteGhost(t, e, bob, alice)
	e.membership(t, alice, bob.UserID, "join", kicked)
	e.in.wait(t, wait, "ghost joined", membershipIs(bob.UserID, alice, "join", alice, kicked))
	if err := bob.Kick(t.Context(), kicked, ghost, "bye"); err != nil {
		t.Fatal(err)
	}
	ev = e.in.wait(t, wait, "kick", membershipIs(bob.UserID, alice, "leave", alice, kicked))
	if ev.Membership.Sender != bob.UserID {
		t.Errorf("kick sender %q, want %s", ev.Membership.Sender, bob.UserID)
	}
}

func TestWrongHSTokenRefused(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.PresenceSource = SourceEphemeral }, nil)
	base := e.cfg.AppServiceURL + "/_matrix/app/v1/transactions/"
	send := func(path, header string) (int, string) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, path, strings.NewReader(`{"events":[]}`))
		if header != "" {
			req.Header.Set("Authorization", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			ErrCode string `json:"errcode"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.ErrCode
	}
	for _, tt := range []struct{ name, path, header string }{
		{"missing", base + "1", ""},
		{"wrong bearer", base + "2", "Bearer wrong"},
		{"as token instead", base + "3", "Bearer " + e.cfg.ASToken},
		{"not bearer", base + "4", "Basic " + e.cfg.HSToken},
		{"wrong query", base + "5?access_token=wrong", ""},
	} {
		if status, code := send(tt.path, tt.header); status != 403 || code != "M_FORBIDDEN" {
			t.Errorf("%s: %d %s, want 403 M_FORBIDDEN", tt.name, status, code)
		}
	}
	if status, _ := send(base+"6?access_token="+url.QueryEscape(e.cfg.HSToken), ""); status != 200 {
		t.Errorf("legacy query token: %d", status)
	}
	if status, _ := send(base+"7", "Bearer "+e.cfg.HSToken); status != 200 {
		t.Errorf("bearer token: %d", status)
	}
	// Dendrite, which has the right token, still gets through.
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	inviteGhost(t, e, bob, "alice@example.com")
}

// countingTransport records the presence PUTs the homeserver accepted.
type countingTransport struct {
	base     http.RoundTripper
	mu       sync.Mutex
	on       bool
	accepted map[string][]string // ghost → status messages, in order
	failures int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	isPresence := r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/presence/")
	var status string
	if isPresence && r.GetBody != nil {
		if b, err := r.GetBody(); err == nil {
			var pb presenceBody
			_ = json.NewDecoder(b).Decode(&pb)
			status = pb.StatusMsg
		}
	}
	resp, err := c.base.RoundTrip(r)
	if isPresence {
		c.mu.Lock()
		if c.on {
			if err == nil && resp.StatusCode == 200 {
				ghost := r.URL.Query().Get("user_id")
				c.accepted[ghost] = append(c.accepted[ghost], status)
			} else {
				c.failures++
			}
		}
		c.mu.Unlock()
	}
	return resp, err
}

func TestHomeserverRestartCoalesces(t *testing.T) {
	t.Parallel()
	ct := &countingTransport{base: http.DefaultTransport.(*http.Transport).Clone(), accepted: map[string][]string{}}
	e := startEnv(t, nil, func(s *Side) { s.setTransport(ct) })
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	jids := []string{"alice@example.com", "carol@example.com", "dave@example.com"}
	for _, j := range jids {
		e.openDirect(t, j, bob)
		e.setPresence(t, j, presenceOf(mapping.StateAvailable, "before"))
	}
	for _, j := range jids {
		bob.WaitPresence(t, wait, ghostOf(t, j), statusIs("online", "before"))
	}
	waitFor(t, wait, "outbox idle", e.side.out.idle)

	e.srv.Stop()
	ct.mu.Lock()
	ct.on = true
	ct.mu.Unlock()
	const updates = 6
	for i := 1; i <= updates; i++ {
		for _, j := range jids {
			st := mapping.StateAway
			if i%2 == 0 {
				st = mapping.StateAvailable
			}
			e.setPresence(t, j, presenceOf(st, "update "+string(rune('0'+i))))
		}
		if i == 1 {
			waitFor(t, wait, "a failed PUT", func() bool { ct.mu.Lock(); defer ct.mu.Unlock(); return ct.failures > 0 })
		}
	}
	_ = e.bus.Conn().Flush()
	e.srv.Restart(t)

	final := "update " + string(rune('0'+updates))
	for _, j := range jids {
		bob.WaitPresence(t, wait, ghostOf(t, j), statusIs("online", final))
	}
	waitFor(t, wait, "outbox idle", e.side.out.idle)
	ct.mu.Lock()
	defer ct.mu.Unlock()
	for _, j := range jids {
		got := ct.accepted[ghostOf(t, j)]
		if len(got) != 1 || got[0] != final {
			t.Errorf("%s: accepted PUTs after the outage %q, want only %q", j, got, final)
		}
	}
	t.Logf("%d failed PUT attempts while the homeserver was down", ct.failures)
	if ct.failures > 40 {
		t.Errorf("%d failed attempts during the outage: a retry storm", ct.failures)
	}
}

// TestCleanShutdownGhostsOffline: when the bridge stops, Matrix users see
// the ghosts go offline (with their last status), not stuck online.
func TestCleanShutdownGhostsOffline(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	const alice, carol = "alice@example.com", "carol@example.com"
	e.openDirect(t, alice, bob)
	e.openDirect(t, carol, bob)
	e.setPresence(t, alice, presenceOf(mapping.StateAvailable, "here"))
	e.setPresence(t, carol, presenceOf(mapping.StateAway, "lunch"))
	bob.WaitPresence(t, wait, ghostOf(t, alice), statusIs("online", "here"))
	bob.WaitPresence(t, wait, ghostOf(t, carol), statusIs("unavailable", "lunch"))
	e.stop()
	bob.WaitPresence(t, wait, ghostOf(t, alice), statusIs("offline", "here"))
	bob.WaitPresence(t, wait, ghostOf(t, carol), statusIs("offline", "lunch"))
}
