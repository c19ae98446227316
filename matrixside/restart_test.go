package matrixside

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Tests in this file restart the side, or let another instance take
// over, against a real Dendrite: what the side keeps in KV (see
// sideState) must spare the homeserver what did not change while it was
// gone, and must not miss what did.

// restartRig is one Dendrite and a state store whose data outlives the
// side's process; instances of the side come and go on it.
type restartRig struct {
	t       *testing.T
	srv     *dendritetest.Server
	cfg     Config
	dataDir string
	addr    string // where the registration sends transactions
}

func newRestartRig(t *testing.T, edit func(*Config)) *restartRig {
	t.Helper()
	ln := freeListener(t)
	addr := ln.Addr().String()
	ln.Close()
	cfg := testConfig("http://placeholder")
	cfg.ASToken, cfg.HSToken = "", ""
	cfg.AppServiceURL = "http://" + addr
	reg := Registration(cfg, testNS)
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
	return &restartRig{t: t, srv: srv, cfg: cfg, dataDir: t.TempDir(), addr: addr}
}

// instance is one run of the side on the rig's store.
type instance struct {
	*env
	closeStore func() error // the store's bus, as the process's death closes it
	rt         *recordingTransport
}

// start runs a new instance of the side on the rig's store.
func (r *restartRig) start() *instance {
	t := r.t
	t.Helper()
	nc := bridge.Default()
	nc.Embedded.DataDir = r.dataDir
	bus, err := bridge.Open(context.Background(), nc, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	in := &instance{closeStore: bus.Close, rt: &recordingTransport{base: base, puts: map[string][]string{}}}
	in.env = &env{srv: r.srv, store: bus.Store(), cfg: r.cfg, obs: &fakeObserver{}}
	s, err := New(r.cfg, testNS, mapping.NewTranslator(mapping.DefaultTable(), false), in.store, in.obs, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	s.setTransport(in.rt)
	var ln net.Listener
	waitFor(t, wait, "the appservice address free again", func() bool {
		ln, err = net.Listen("tcp", r.addr)
		return err == nil
	})
	in.side = s
	in.stop = runSide(t, s, ln)
	return in
}

// kill ends the instance as kill -9 would: from this instant nothing it
// does reaches the homeserver or the store (its shutdown, which would
// show the ghosts offline, has no effect).
func (in *instance) kill() {
	in.rt.kill()
	_ = in.closeStore()
	in.stop()
}

// recordingTransport records the presence PUTs the homeserver accepted
// and the since token of every /sync, and fails every request once
// killed.
type recordingTransport struct {
	base   http.RoundTripper
	mu     sync.Mutex
	dead   bool
	puts   map[string][]string // ghost → accepted presence/status, in order
	syncs  []string            // since of each /sync ("" for an initial one)
	failed int
}

func (c *recordingTransport) kill() {
	c.mu.Lock()
	c.dead = true
	c.mu.Unlock()
}

func (c *recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	dead := c.dead
	if !dead && strings.HasSuffix(r.URL.Path, "/sync") {
		c.syncs = append(c.syncs, r.URL.Query().Get("since"))
	}
	c.mu.Unlock()
	if dead {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, errors.New("killed")
	}
	isPresence := r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/presence/")
	var body string
	if isPresence && r.GetBody != nil {
		if b, err := r.GetBody(); err == nil {
			data, _ := io.ReadAll(b)
			body = string(data)
		}
	}
	resp, err := c.base.RoundTrip(r)
	if isPresence {
		c.mu.Lock()
		if err == nil && resp.StatusCode == 200 {
			ghost := r.URL.Query().Get("user_id")
			c.puts[ghost] = append(c.puts[ghost], body)
		} else {
			c.failed++
		}
		c.mu.Unlock()
	}
	return resp, err
}

// waitRecorded waits until the store says the homeserver shows p for
// the ghost of jid (the side writes it behind, once the ghost is quiet).
func waitRecorded(t *testing.T, store *bridge.Store, jid mapping.BareJID, presence, status string) {
	t.Helper()
	key := bridge.EncodeToken(ghostOf(t, jid))
	waitFor(t, wait, "the ghost presence of "+string(jid)+" recorded", func() bool {
		v, _, err := store.GhostPresence.Get(t.Context(), key)
		return err == nil && !v.Pending && v.Presence == presence && v.Status == status
	})
}

func (c *recordingTransport) putsOf(ghost string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.puts[ghost]...)
}

func (c *recordingTransport) sinceTokens() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.syncs...)
}

// TestRestartSendsOnlyChangedGhostPresence: after the side was killed and
// started again (or another instance took over), the core's presence
// commands for ghosts whose presence did not change while it was gone
// cost the homeserver nothing; a ghost whose presence changed is set.
func TestRestartSendsOnlyChangedGhostPresence(t *testing.T) {
	t.Parallel()
	r := newRestartRig(t, func(c *Config) {
		c.PresenceSource, c.PollInterval = SourcePoll, time.Hour
		c.OfflineGrace = 2 * time.Second // a health check, and so a flush of the ghost records, every 500 ms
	})
	first := r.start()
	bob := r.srv.CreateUser(t, "bob", "bob-password")
	const alice, carol, dave = "alice@example.com", "carol@example.com", "dave@example.com"
	before := map[mapping.BareJID]mapping.Presence{
		alice: presenceIs(mapping.StateAvailable, "here"),
		carol: presenceIs(mapping.StateAway, "lunch"),
		dave:  presenceIs(mapping.StateOffline, "gone home"),
	}
	for _, j := range []mapping.BareJID{alice, carol, dave} {
		first.openDirect(t, j, bob)
		first.setPresence(t, j, before[j])
	}
	bob.WaitPresence(t, wait, ghostOf(t, alice), statusIs("online", "here"))
	bob.WaitPresence(t, wait, ghostOf(t, carol), statusIs("unavailable", "lunch"))
	bob.WaitPresence(t, wait, ghostOf(t, dave), statusIs("offline", "gone home"))
	waitFor(t, wait, "first instance's outbox idle", first.side.out.idle)
	waitRecorded(t, first.store, alice, "online", "here")
	waitRecorded(t, first.store, carol, "unavailable", "lunch")
	waitRecorded(t, first.store, dave, "offline", "gone home")
	first.kill()

	second := r.start()
	// The core tells the new instance everyone's presence again: alice
	// and dave as before, carol changed while the side was gone.
	second.setPresence(t, alice, before[alice])
	second.setPresence(t, dave, before[dave])
	second.setPresence(t, carol, presenceIs(mapping.StateAvailable, "back"))
	bob.WaitPresence(t, wait, ghostOf(t, carol), statusIs("online", "back"))
	waitFor(t, wait, "second instance's outbox idle", second.side.out.idle)
	for _, j := range []mapping.BareJID{alice, dave} {
		if got := second.rt.putsOf(ghostOf(t, j)); len(got) != 0 {
			t.Errorf("%s's ghost, unchanged, set again after the restart: %q", j, got)
		}
	}
	if got := second.rt.putsOf(ghostOf(t, carol)); len(got) != 1 {
		t.Errorf("carol's ghost, changed, set %d times after the restart (%q), want once", len(got), got)
	}
	// A real change of an unchanged ghost still goes out.
	second.setPresence(t, alice, presenceIs(mapping.StateAway, "coffee"))
	bob.WaitPresence(t, wait, ghostOf(t, alice), statusIs("unavailable", "coffee"))
}

// TestKillDuringPutSendsAgain: a PUT the homeserver may or may not have
// applied when the side died leaves the ghost's state unknown to the
// next instance, which sets it whatever the core asks, even the state
// the ghost showed before that PUT.
func TestKillDuringPutSendsAgain(t *testing.T) {
	t.Parallel()
	r := newRestartRig(t, func(c *Config) {
		c.PresenceSource, c.PollInterval = SourcePoll, time.Hour
		c.OfflineGrace = 2 * time.Second // a health check, and so a flush of the ghost records, every 500 ms
	})
	first := r.start()
	bob := r.srv.CreateUser(t, "bob", "bob-password")
	const alice = "alice@example.com"
	first.openDirect(t, alice, bob)
	first.setPresence(t, alice, presenceIs(mapping.StateOffline, ""))
	bob.WaitPresence(t, wait, ghostOf(t, alice), statusIs("offline", ""))
	waitFor(t, wait, "outbox idle", first.side.out.idle)
	waitRecorded(t, first.store, alice, "offline", "")
	// The homeserver applies alice's next presence, and the side dies
	// before it hears the answer.
	r.srv.Stop()
	first.setPresence(t, alice, presenceIs(mapping.StateAvailable, "in flight"))
	waitFor(t, wait, "a failed PUT", func() bool { first.rt.mu.Lock(); defer first.rt.mu.Unlock(); return first.rt.failed > 0 })
	first.kill()
	r.srv.Restart(t)
	ghost := ghostOf(t, alice)
	as := r.srv.AppServiceClient(r.cfg.ASToken, ghost)
	if err := as.SetPresence(t.Context(), "online", "in flight"); err != nil {
		t.Fatal(err)
	}
	bob.WaitPresence(t, wait, ghost, statusIs("online", "in flight"))

	second := r.start()
	second.setPresence(t, alice, presenceIs(mapping.StateOffline, ""))
	bob.WaitPresence(t, wait, ghost, statusIs("offline", ""))
}

// settledSyncPosition waits until the stored sync position is set and
// stays the same for a moment (the bot is long-polling with it), and
// returns it.
func settledSyncPosition(t *testing.T, store *bridge.Store, bot string) string {
	t.Helper()
	var last string
	var since time.Time
	waitFor(t, wait, "a settled sync position", func() bool {
		pos, _, err := store.MatrixSync.Get(t.Context(), bridge.EncodeToken(bot))
		if err != nil || pos.NextBatch != last {
			last, since = pos.NextBatch, time.Now()
			return false
		}
		return last != "" && time.Since(since) > 500*time.Millisecond
	})
	return last
}

// TestRestartResumesSync: a restarted bot resumes /sync where the last
// instance stopped: a presence change made while the side was gone is
// reported once, and the presence of people who did not change is not
// read again (no initial sync).
func TestRestartResumesSync(t *testing.T) {
	t.Parallel()
	r := newRestartRig(t, func(c *Config) { c.PresenceSource = SourceSync })
	first := r.start()
	bob := r.srv.CreateUser(t, "bob", "bob-password")
	carol := r.srv.CreateUser(t, "carol", "carol-password")
	shareRoomWithBot(t, first.env, bob)
	shareRoomWithBot(t, first.env, carol)
	if err := bob.SetPresence(t.Context(), "unavailable", "lunch"); err != nil {
		t.Fatal(err)
	}
	if err := carol.SetPresence(t.Context(), "online", "here"); err != nil {
		t.Fatal(err)
	}
	b, c := mapping.UserID(bob.UserID), mapping.UserID(carol.UserID)
	first.obs.waitPresence(t, wait, "bob away", b, func(p mapping.Presence) bool { return p.Status == "lunch" })
	first.obs.waitPresence(t, wait, "carol here", c, func(p mapping.Presence) bool { return p.Status == "here" })
	bot := string(r.cfg.BotMXID())
	pos := settledSyncPosition(t, first.store, bot)
	first.kill()

	if err := bob.SetPresence(t.Context(), "online", "back"); err != nil {
		t.Fatal(err)
	}
	second := r.start()
	second.obs.waitPresence(t, wait, "bob back", b, func(p mapping.Presence) bool { return p.Status == "back" })
	waitFor(t, wait, "the batch with bob's change handled", func() bool {
		p, _, err := second.store.MatrixSync.Get(t.Context(), bridge.EncodeToken(bot))
		return err == nil && p.NextBatch != pos
	})
	if since := second.rt.sinceTokens(); len(since) == 0 || since[0] != pos {
		t.Errorf("the new instance's first /sync since %q, want the stored position %q", since, pos)
	}
	if got := second.obs.presenceOfUser(c); len(got) != 0 {
		t.Errorf("carol, unchanged, reported again after the restart: %+v", got)
	}
	got := second.obs.presenceOfUser(b)
	if len(got) != 1 || got[0].Status != "back" {
		t.Errorf("bob reported %+v after the restart, want his change once", got)
	}
}

// TestTakeoverWithoutHomeserverReportsOffline: a new instance that cannot
// reach the homeserver still reports offline, after the offline grace,
// the Matrix users the core was told are online: it learns them from the
// core's presence bucket, not from the memory of the instance that died
// (and its resumed /sync would tell it only of changes). Without that,
// their puppets would show them online on XMPP for good.
func TestTakeoverWithoutHomeserverReportsOffline(t *testing.T) {
	t.Parallel()
	r := newRestartRig(t, func(c *Config) { c.PresenceSource = SourceSync; c.OfflineGrace = time.Second })
	first := r.start()
	bob := r.srv.CreateUser(t, "bob", "bob-password")
	shareRoomWithBot(t, first.env, bob)
	if err := bob.SetPresence(t.Context(), "online", "here"); err != nil {
		t.Fatal(err)
	}
	u := mapping.UserID(bob.UserID)
	p := first.obs.waitPresence(t, wait, "bob here", u, func(p mapping.Presence) bool { return p.Status == "here" })
	// The core records what it was told.
	if _, err := first.store.Presence.Put(t.Context(), bridge.PresenceKey(mapping.NetworkMatrix, string(u)), bridge.PresenceRecord{Presence: p, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	first.kill()
	r.srv.Stop()

	second := r.start()
	started := time.Now()
	got := second.obs.waitPresence(t, wait, "bob reported offline by the new instance", u, func(p mapping.Presence) bool { return p.State == mapping.StateOffline })
	if d := time.Since(started); d < r.cfg.OfflineGrace {
		t.Errorf("bob reported offline %v after the start, before the grace of %v", d, r.cfg.OfflineGrace)
	}
	if got.Status != "here" {
		t.Errorf("bob offline with status %q, want his last one", got.Status)
	}
}
