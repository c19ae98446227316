package matrixside

import (
	"context"
	"encoding/json"
	"log/slog"
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
// are skipped when its binaries are not built, and fail then in CI.

const wait = 30 * time.Second

type env struct {
	srv   *dendritetest.Server
	side  *Side
	store *bridge.Store
	cfg   Config
	obs   *fakeObserver // everything the side reports
	stop  func()        // stops the side (clean shutdown)
}

// startEnv starts Dendrite with the side's own registration (so every
// test also checks Dendrite accepts it unchanged), a store, and the side
// listening where the registration says, reporting to a fake observer.
func startEnv(t *testing.T, edit func(*Config), beforeRun func(*Side)) *env {
	t.Helper()
	return startEnvLog(t, testLogger(t), edit, beforeRun)
}

// startEnvLog is startEnv with the side logging to log.
func startEnvLog(t *testing.T, log *slog.Logger, edit func(*Config), beforeRun func(*Side)) *env {
	t.Helper()
	ln := freeListener(t)
	cfg := testConfig("http://placeholder")
	cfg.ASToken, cfg.HSToken = "", ""
	cfg.AppServiceURL = "http://" + ln.Addr().String()
	reg := Registration(cfg, testNS) // fresh tokens
	cfg.ASToken, cfg.HSToken = reg.AppToken, reg.ServerToken
	yaml, err := reg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	srv := dendritetest.Start(t, dendritetest.Options{ServerName: testDomain, AppServiceRegistration: yaml})
	cfg.HomeserverURL = srv.URL
	if edit != nil {
		edit(&cfg)
	}
	e := &env{srv: srv, store: openTestStore(t, ""), cfg: cfg, obs: &fakeObserver{}}
	busy, err := DetectBusy(t.Context(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, testNS, mapping.NewTranslator(mapping.DefaultTable(), busy), e.store, e.obs, log)
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

// setPresence is the core asking the ghost of jid to show p.
func (e *env) setPresence(t *testing.T, jid mapping.BareJID, p mapping.Presence) {
	t.Helper()
	if err := e.side.ShowGhost(t.Context(), bridge.GhostPresence{User: jid, Presence: p}); err != nil {
		t.Fatal(err)
	}
}

// membership is the core asking the ghost of jid to act towards peer; it
// fails the test unless the side carries it out.
func (e *env) membership(t *testing.T, c bridge.GhostMembership) {
	t.Helper()
	if err := e.side.ghostMembership(t.Context(), c); err != nil {
		t.Fatalf("%v %s→%s: %v", c.Membership, c.Ghost, c.Peer, err)
	}
}

// openDirect has the core ask the ghost of jid for a direct chat with
// user, who accepts. The ghost's invite is reported with the room.
func (e *env) openDirect(t *testing.T, jid mapping.BareJID, user *dendritetest.Client) string {
	t.Helper()
	e.membership(t, bridge.GhostMembership{Ghost: jid, Peer: mapping.UserID(user.UserID), Membership: bridge.MembershipInvite})
	roomID, inviter := user.WaitInvite(t, wait)
	if inviter != ghostOf(t, jid) {
		t.Fatalf("invite from %s, want the ghost of %s", inviter, jid)
	}
	e.obs.waitMembership(t, wait, "the ghost's invite reported with its room", membershipIs(user.UserID, jid, false, bridge.MembershipInvite, roomID))
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

func membershipIs(user string, ghost mapping.BareJID, ghostChanged bool, m bridge.Membership, roomID string) func(bridge.MatrixMembership) bool {
	return func(r bridge.MatrixMembership) bool {
		return r.User == mapping.UserID(user) && r.Ghost == ghost && r.GhostChanged == ghostChanged && r.Membership == m &&
			(roomID == "" || r.RoomID == roomID)
	}
}

func TestGhostPresenceSeenByMatrixUser(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	const alice = "alice@example.com"
	ghost := ghostOf(t, alice)
	roomID := e.openDirect(t, alice, bob)
	e.obs.waitMembership(t, wait, "bob's join", membershipIs(bob.UserID, alice, false, bridge.MembershipJoin, roomID))

	var name struct {
		DisplayName string `json:"displayname"`
	}
	if err := bob.Do(t.Context(), http.MethodGet, "/_matrix/client/v3/profile/"+url.PathEscape(ghost)+"/displayname", nil, &name); err != nil || name.DisplayName != alice {
		t.Errorf("ghost display name %q (%v), want %s", name.DisplayName, err, alice)
	}

	e.setPresence(t, alice, presenceIs(mapping.StateAvailable, "via XMPP"))
	bob.WaitPresence(t, wait, ghost, statusIs("online", "via XMPP"))
	e.setPresence(t, alice, presenceIs(mapping.StateAway, "lunch"))
	bob.WaitPresence(t, wait, ghost, statusIs("unavailable", "lunch"))
	e.setPresence(t, alice, presenceIs(mapping.StateAvailable, ""))
	bob.WaitPresence(t, wait, ghost, statusIs("online", ""))
	e.setPresence(t, alice, presenceIs(mapping.StateOffline, ""))
	bob.WaitPresence(t, wait, ghost, statusIs("offline", ""))

	// The ghost's presence never comes back in as a Matrix user's.
	if p := e.obs.presenceOfUser(mapping.UserID(ghost)); len(p) != 0 {
		t.Errorf("ghost presence reported: %+v", p)
	}
	// A second invite for the same pair finds the chat and changes nothing.
	e.membership(t, bridge.GhostMembership{Ghost: alice, Peer: mapping.UserID(bob.UserID), Membership: bridge.MembershipInvite})
	if n := e.obs.countMemberships(membershipIs(bob.UserID, alice, false, bridge.MembershipInvite, "")); n != 1 {
		t.Errorf("%d invites reported after asking twice, want 1", n)
	}
}

// shareRoomWithBot has user create a room with the bot, which the bot
// joins.
func shareRoomWithBot(t *testing.T, e *env, user *dendritetest.Client) string {
	t.Helper()
	bot := string(e.cfg.BotMXID())
	roomID, err := user.CreateRoom(t.Context(), []string{bot}, false)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, wait, "bot joined", func() bool { _, ok := joinedMembers(t, user, roomID)[bot]; return ok })
	return roomID
}

func TestMatrixPresenceViaSync(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.PresenceSource = SourceSync }, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	shareRoomWithBot(t, e, bob)
	if err := bob.SetPresence(t.Context(), "unavailable", "lunch"); err != nil {
		t.Fatal(err)
	}
	u := mapping.UserID(bob.UserID)
	e.obs.waitPresence(t, wait, "bob away", u, func(p mapping.Presence) bool { return p.State == mapping.StateAway && p.Status == "lunch" })
	if err := bob.SetPresence(t.Context(), "online", "back"); err != nil {
		t.Fatal(err)
	}
	e.obs.waitPresence(t, wait, "bob back", u, func(p mapping.Presence) bool { return p.State == mapping.StateAvailable && p.Status == "back" })
	if p := e.obs.presenceOfUser(mapping.UserID(e.cfg.BotMXID())); len(p) != 0 {
		t.Errorf("bot presence reported: %+v", p)
	}
}

func TestMatrixPresenceViaPoll(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.PresenceSource = SourcePoll; c.PollInterval = 200 * time.Millisecond }, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	// The core links bob with an XMPP user: the side polls linked users.
	if _, err := e.store.Links.Put(t.Context(), bridge.PairKey(bob.UserID, "alice@example.com"),
		bridge.Link{MatrixUser: mapping.UserID(bob.UserID), XMPPUser: "alice@example.com", State: bridge.LinkApproved}); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetPresence(t.Context(), "unavailable", "gone fishing"); err != nil {
		t.Fatal(err)
	}
	u := mapping.UserID(bob.UserID)
	e.obs.waitPresence(t, wait, "bob away", u, func(p mapping.Presence) bool { return p.State == mapping.StateAway && p.Status == "gone fishing" })
	if err := bob.SetPresence(t.Context(), "offline", ""); err != nil {
		t.Fatal(err)
	}
	e.obs.waitPresence(t, wait, "bob offline", u, func(p mapping.Presence) bool { return p.State == mapping.StateOffline })
	// Unchanged presence is not reported again, however often polled.
	n := len(e.obs.presenceOfUser(u))
	rounds := e.side.pollRounds.Load()
	waitFor(t, wait, "five more poll rounds", func() bool { return e.side.pollRounds.Load() >= rounds+5 })
	if m := len(e.obs.presenceOfUser(u)); m != n {
		t.Errorf("%d presence reports after idle polling, had %d", m, n)
	}
}

// inviteGhost has bob invite the ghost of jid to a new direct room and
// waits for the invite report.
func inviteGhost(t *testing.T, e *env, bob *dendritetest.Client, jid mapping.BareJID) string {
	t.Helper()
	roomID, err := bob.CreateRoom(t.Context(), []string{ghostOf(t, jid)}, true)
	if err != nil {
		t.Fatal(err)
	}
	r := e.obs.waitMembership(t, wait, "invite reported", membershipIs(bob.UserID, jid, true, bridge.MembershipInvite, roomID))
	if r.BySelf || !r.IsDirect {
		t.Errorf("invite %+v", r)
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
	peer := mapping.UserID(bob.UserID)

	accepted := inviteGhost(t, e, bob, alice)
	e.membership(t, bridge.GhostMembership{Ghost: alice, Peer: peer, Membership: bridge.MembershipJoin, RoomID: accepted})
	r := e.obs.waitMembership(t, wait, "ghost join reported", membershipIs(bob.UserID, alice, true, bridge.MembershipJoin, accepted))
	if !r.BySelf {
		t.Errorf("join %+v, want by the ghost itself", r)
	}
	if _, ok := joinedMembers(t, bob, accepted)[ghost]; !ok {
		t.Errorf("ghost not joined to %s", accepted)
	}

	rejected := inviteGhost(t, e, bob, alice)
	e.membership(t, bridge.GhostMembership{Ghost: alice, Peer: peer, Membership: bridge.MembershipReject, RoomID: rejected})
	r = e.obs.waitMembership(t, wait, "reject reported", membershipIs(bob.UserID, alice, true, bridge.MembershipReject, rejected))
	if !r.BySelf {
		t.Errorf("reject %+v, want by the ghost itself", r)
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
	peer := mapping.UserID(bob.UserID)

	left := inviteGhost(t, e, bob, alice)
	e.membership(t, bridge.GhostMembership{Ghost: alice, Peer: peer, Membership: bridge.MembershipJoin, RoomID: left})
	e.obs.waitMembership(t, wait, "ghost joined", membershipIs(bob.UserID, alice, true, bridge.MembershipJoin, left))
	if err := bob.Leave(t.Context(), left); err != nil {
		t.Fatal(err)
	}
	r := e.obs.waitMembership(t, wait, "bob's leave", membershipIs(bob.UserID, alice, false, bridge.MembershipLeave, left))
	if !r.BySelf {
		t.Errorf("leave %+v, want by bob himself", r)
	}

	kicked := inviteGhost(t, e, bob, alice)
	e.membership(t, bridge.GhostMembership{Ghost: alice, Peer: peer, Membership: bridge.MembershipJoin, RoomID: kicked})
	e.obs.waitMembership(t, wait, "ghost joined", membershipIs(bob.UserID, alice, true, bridge.MembershipJoin, kicked))
	if err := bob.Kick(t.Context(), kicked, ghost, "bye"); err != nil {
		t.Fatal(err)
	}
	r = e.obs.waitMembership(t, wait, "kick", membershipIs(bob.UserID, alice, true, bridge.MembershipLeave, kicked))
	if r.BySelf {
		t.Errorf("kick %+v, want by bob (not the ghost itself)", r)
	}
	// Leaving a room the ghost was kicked from is done already.
	e.membership(t, bridge.GhostMembership{Ghost: alice, Peer: peer, Membership: bridge.MembershipLeave, RoomID: kicked})
}

func TestWrongHSTokenRefused(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.PresenceSource = SourceEphemeral }, nil)
	base := e.cfg.AppServiceURL + "/_matrix/app/v1/transactions/"
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	send := func(path, header string) (int, string) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, path, strings.NewReader(`{"events":[]}`))
		if header != "" {
			req.Header.Set("Authorization", header)
		}
		resp, err := client.Do(req)
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

// TestHomeserverOutageLatestOnly: while the homeserver is down, ghost
// presence piles up one state per ghost, sent once each when it is back,
// without a retry storm in between.
func TestHomeserverOutageLatestOnly(t *testing.T) {
	t.Parallel()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	ct := &countingTransport{base: base, accepted: map[string][]string{}}
	e := startEnv(t, nil, func(s *Side) { s.setTransport(ct) })
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	jids := []mapping.BareJID{"alice@example.com", "carol@example.com", "dave@example.com"}
	for _, j := range jids {
		e.openDirect(t, j, bob)
		e.setPresence(t, j, presenceIs(mapping.StateAvailable, "before"))
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
			e.setPresence(t, j, presenceIs(st, "update "+string(rune('0'+i))))
		}
		if i == 1 {
			waitFor(t, wait, "a failed PUT", func() bool { ct.mu.Lock(); defer ct.mu.Unlock(); return ct.failures > 0 })
		}
	}
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
	e.setPresence(t, alice, presenceIs(mapping.StateAvailable, "here"))
	e.setPresence(t, carol, presenceIs(mapping.StateAway, "lunch"))
	bob.WaitPresence(t, wait, ghostOf(t, alice), statusIs("online", "here"))
	bob.WaitPresence(t, wait, ghostOf(t, carol), statusIs("unavailable", "lunch"))
	e.stop()
	bob.WaitPresence(t, wait, ghostOf(t, alice), statusIs("offline", "here"))
	bob.WaitPresence(t, wait, ghostOf(t, carol), statusIs("offline", "lunch"))
}

// TestRevokedGhostOfflineBeforeLeaving: the core revokes a link with a
// leave that carries the presence to show first; the Matrix user's own
// /sync, long-polling as a client does, shows the ghost offline (with its
// status), and the ghost is gone. Were the leave first, the user would
// never see the offline: homeservers send presence only to users sharing
// a room when their /sync answers.
func TestRevokedGhostOfflineBeforeLeaving(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	const alice = "alice@example.com"
	ghost := ghostOf(t, alice)
	roomID := e.openDirect(t, alice, bob)
	e.setPresence(t, alice, presenceIs(mapping.StateAvailable, "here"))
	bob.WaitPresence(t, wait, ghost, statusIs("online", "here"))

	seen := bobSyncs(t, bob, ghost)
	offline := presenceIs(mapping.StateOffline, "here")
	// No room given: the side finds the one it opened.
	e.membership(t, bridge.GhostMembership{Ghost: alice, Peer: mapping.UserID(bob.UserID), Membership: bridge.MembershipLeave, Before: &offline})
	if _, ok := joinedMembers(t, bob, roomID)[ghost]; ok {
		t.Errorf("ghost still in %s", roomID)
	}
	waitFor(t, wait, "bob's /sync showing the ghost offline", func() bool {
		for _, p := range seen() {
			if statusIs("offline", "here")(p) {
				return true
			}
		}
		return false
	})
}

// bobSyncs long-polls user's /sync in the background, as a Matrix client
// does, until the test ends, and returns what it saw of who's presence.
func bobSyncs(t *testing.T, user *dendritetest.Client, who string) func() []dendritetest.Presence {
	t.Helper()
	var resp struct {
		NextBatch string `json:"next_batch"`
		Presence  struct {
			Events []struct {
				Sender  string                `json:"sender"`
				Content dendritetest.Presence `json:"content"`
			} `json:"events"`
		} `json:"presence"`
	}
	filter := url.QueryEscape(`{"presence":{"limit":1000},"room":{"timeline":{"limit":1}}}`)
	if err := user.Do(t.Context(), http.MethodGet, "/_matrix/client/v3/sync?timeout=0&filter="+filter, nil, &resp); err != nil {
		t.Fatal(err)
	}
	since := resp.NextBatch
	var mu sync.Mutex
	var seen []dendritetest.Presence
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			resp.NextBatch, resp.Presence.Events = "", nil
			if err := user.Do(ctx, http.MethodGet, "/_matrix/client/v3/sync?timeout=1000&filter="+filter+"&since="+url.QueryEscape(since), nil, &resp); err != nil {
				if !sleepCtx(ctx, 100*time.Millisecond) {
					return
				}
				continue
			}
			mu.Lock()
			for _, ev := range resp.Presence.Events {
				if ev.Sender == who {
					seen = append(seen, ev.Content)
				}
			}
			mu.Unlock()
			since = resp.NextBatch
		}
	}()
	return func() []dendritetest.Presence {
		mu.Lock()
		defer mu.Unlock()
		return append([]dendritetest.Presence(nil), seen...)
	}
}

// TestHomeserverUnreachableReportsOffline: when the homeserver cannot be
// reached for longer than the grace period, the Matrix users the side
// believed online are reported offline, keeping their status; when it is
// back, their real presence is reported again.
func TestHomeserverUnreachableReportsOffline(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.PresenceSource = SourceSync; c.OfflineGrace = time.Second }, nil)
	bob := e.srv.CreateUser(t, "bob", "bob-password")
	carol := e.srv.CreateUser(t, "carol", "carol-password")
	shareRoomWithBot(t, e, bob)
	shareRoomWithBot(t, e, carol)
	if err := bob.SetPresence(t.Context(), "online", "here"); err != nil {
		t.Fatal(err)
	}
	if err := carol.SetPresence(t.Context(), "offline", "gone"); err != nil {
		t.Fatal(err)
	}
	b, c := mapping.UserID(bob.UserID), mapping.UserID(carol.UserID)
	e.obs.waitPresence(t, wait, "bob online", b, func(p mapping.Presence) bool { return p.State == mapping.StateAvailable && p.Status == "here" })
	e.obs.waitPresence(t, wait, "carol offline", c, func(p mapping.Presence) bool { return p.State == mapping.StateOffline })
	before, carolBefore := len(e.obs.presenceOfUser(b)), len(e.obs.presenceOfUser(c))

	down := time.Now()
	e.srv.Stop()
	got := e.obs.waitPresence(t, wait, "bob reported offline", b, func(p mapping.Presence) bool { return p.State == mapping.StateOffline })
	if got.Status != "here" {
		t.Errorf("bob offline with status %q, want his last one kept", got.Status)
	}
	if d := time.Since(down); d < time.Second {
		t.Errorf("reported offline %v after the homeserver went away, before the 1s grace", d)
	}
	if n := len(e.obs.presenceOfUser(c)); n != carolBefore {
		t.Errorf("carol, offline already, reported again: %d reports, had %d", n, carolBefore)
	}

	e.srv.Restart(t)
	waitFor(t, wait, "bob's real presence again", func() bool { return len(e.obs.presenceOfUser(b)) > before+1 })
	reports := e.obs.presenceOfUser(b)
	if last := reports[len(reports)-1]; len(reports) != before+2 || last.State != mapping.StateAvailable || last.Status != "here" {
		t.Errorf("bob's reports %+v, want offline once, then available \"here\" once", reports)
	}
}
