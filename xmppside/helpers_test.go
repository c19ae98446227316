package xmppside

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestMain fails the package's tests if any goroutine outlives them.
func TestMain(m *testing.M) {
	if settings := os.Getenv(crashChildEnv); settings != "" {
		os.Exit(crashChild(settings))
	}
	goleak.VerifyTestMain(m)
}

const (
	bob       mapping.UserID = "@bob:example.org"
	carol     mapping.UserID = "@carol:example.org"
	waitLong                 = 15 * time.Second
	waitShort                = 5 * time.Second
)

func testNamespace(domain string) mapping.Namespace {
	return mapping.Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: "example.org", ComponentDomain: domain}
}

// openTestStore returns the KV store of an embedded bus that lives as long
// as the test.
func openTestStore(t testing.TB) *bridge.Store { return bustest.Open(t, "").Store() }

var waitFor = bustest.WaitFor

var testLogger = bustest.Logger

// fakeObserver is the core as the component sees it: it records every
// report, may refuse the durable ones, and may answer subscription requests
// at once (synchronously, from within the report, as a core wired in the
// same process may do).
type fakeObserver struct {
	mu        sync.Mutex
	presences []bridge.XMPPPresence
	reportAt  []time.Time // when each of presences was reported
	subs      []bridge.XMPPSubscription
	optouts   []bridge.OptOut[mapping.BareJID]

	// fail makes every report fail (after recording nothing).
	fail atomic.Bool
	// answer, if set, is called with every subscription report that was
	// recorded.
	answer func(context.Context, bridge.XMPPSubscription)
}

var errRefused = errors.New("fake observer: refused")

func (f *fakeObserver) XMPPPresence(_ context.Context, r bridge.XMPPPresence) error {
	if f.fail.Load() {
		return errRefused
	}
	f.mu.Lock()
	f.presences = append(f.presences, r)
	f.reportAt = append(f.reportAt, time.Now())
	f.mu.Unlock()
	return nil
}

func (f *fakeObserver) XMPPSubscription(ctx context.Context, r bridge.XMPPSubscription) error {
	if f.fail.Load() {
		return errRefused
	}
	f.mu.Lock()
	f.subs = append(f.subs, r)
	answer := f.answer
	f.mu.Unlock()
	if answer != nil {
		answer(ctx, r)
	}
	return nil
}

func (f *fakeObserver) XMPPOptOut(_ context.Context, r bridge.OptOut[mapping.BareJID]) error {
	if f.fail.Load() {
		return errRefused
	}
	f.mu.Lock()
	f.optouts = append(f.optouts, r)
	f.mu.Unlock()
	return nil
}

// presenceOf returns the presences reported for user, oldest first.
func (f *fakeObserver) presenceOf(user mapping.BareJID) []mapping.Presence {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []mapping.Presence
	for _, r := range f.presences {
		if r.User == user {
			out = append(out, r.Presence)
		}
	}
	return out
}

// presenceReports returns the presences reported for user with the time of
// each report, oldest first.
func (f *fakeObserver) presenceReports(user mapping.BareJID) ([]mapping.Presence, []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ps []mapping.Presence
	var at []time.Time
	for i, r := range f.presences {
		if r.User == user {
			ps, at = append(ps, r.Presence), append(at, f.reportAt[i])
		}
	}
	return ps, at
}

// lastPresence returns the last presence reported for user (zero if none).
func (f *fakeObserver) lastPresence(user mapping.BareJID) mapping.Presence {
	ps := f.presenceOf(user)
	if len(ps) == 0 {
		return mapping.Presence{}
	}
	return ps[len(ps)-1]
}

// subscriptions counts the subscription reports of contact to puppet of
// type typ.
func (f *fakeObserver) subscriptions(contact mapping.BareJID, puppet mapping.UserID, typ bridge.SubscriptionType) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.subs {
		if r.Contact == contact && r.Puppet == puppet && r.Type == typ {
			n++
		}
	}
	return n
}

// reports counts every report of any kind.
func (f *fakeObserver) reports() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.presences) + len(f.subs) + len(f.optouts)
}

// policyAnswer returns the core's answer to subscription requests under
// policy: accept approves and subscribes back, reject denies, ask waits for
// the Matrix user (the test sends the answer).
func policyAnswer(t testing.TB, comp func() *Component, policy Policy) func(context.Context, bridge.XMPPSubscription) {
	return func(ctx context.Context, r bridge.XMPPSubscription) {
		if r.Type != bridge.Subscribe {
			return
		}
		var answers []bridge.SubscriptionType
		switch policy {
		case PolicyAccept:
			answers = []bridge.SubscriptionType{bridge.Subscribed, bridge.Subscribe}
		case PolicyReject:
			answers = []bridge.SubscriptionType{bridge.Unsubscribed}
		}
		for _, a := range answers {
			if err := comp().SendSubscription(ctx, bridge.PuppetSubscription{Puppet: r.Puppet, Contact: r.Contact, Type: a}); err != nil {
				t.Errorf("answering %s with %s: %v", r.Type, a, err)
			}
		}
	}
}

// rig is a real Prosody, a KV store, a fake core and a running component.
type rig struct {
	t      testing.TB
	srv    *prosodytest.Server
	store  *bridge.Store
	comp   *Component
	ns     mapping.Namespace
	obs    *fakeObserver
	logs   *logRecorder
	cancel context.CancelFunc
	done   chan error
}

// rigConfig returns a component configuration for srv.
func rigConfig(t testing.TB, srv *prosodytest.Server) Config {
	host, port, err := net.SplitHostPort(srv.ComponentAddr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	cfg.Host = host
	cfg.Port, _ = strconv.Atoi(port)
	cfg.ComponentDomain = srv.ComponentDomain
	cfg.Secret = srv.ComponentSecret
	cfg.ReconnectMin, cfg.ReconnectMax = 50*time.Millisecond, time.Second
	cfg.ShutdownTimeout = 5 * time.Second
	return cfg
}

// startRig starts Prosody and a component whose fake core answers
// subscription requests under policy.
func startRig(t *testing.T, policy Policy, mutate ...func(*Config)) *rig {
	t.Helper()
	return startRigWith(t, prosodytest.Options{}, policy, mutate...)
}

// The hostile server of the tests: a second component on the test Prosody,
// which may send from any JID on its domain, as a hostile XMPP server may
// for its own users.
const (
	evilDomain = "evil.localhost"
	evilSecret = "evil-secret"
)

// startHostileRig is startRig with a hostile server on the same Prosody;
// it returns the hostile server's connection too.
func startHostileRig(t testing.TB, policy Policy, mutate ...func(*Config)) (*rig, *prosodytest.Client) {
	t.Helper()
	r := startRigWith(t, prosodytest.Options{ExtraComponents: []prosodytest.Component{{Domain: evilDomain, Secret: evilSecret}}}, policy, mutate...)
	return r, r.srv.DialComponent(t, evilDomain, evilSecret)
}

// startRigWith is startRig on a Prosody started with opts (its component
// domain and secret are the rig's).
func startRigWith(t testing.TB, opts prosodytest.Options, policy Policy, mutate ...func(*Config)) *rig {
	t.Helper()
	return startRigSetup(t, opts, policy, nil, mutate...)
}

// startRigSetup is startRigWith calling setup, if not nil, on the
// component before it runs.
func startRigSetup(t testing.TB, opts prosodytest.Options, policy Policy, setup func(*Component), mutate ...func(*Config)) *rig {
	t.Helper()
	opts.ComponentDomain, opts.ComponentSecret = "matrix.localhost", "test-secret"
	srv := prosodytest.Start(t, opts)
	cfg := rigConfig(t, srv)
	for _, m := range mutate {
		m(&cfg)
	}
	r := &rig{t: t, srv: srv, store: openTestStore(t), ns: testNamespace(srv.ComponentDomain), obs: &fakeObserver{}, logs: newLogRecorder(t), done: make(chan error, 1)}
	r.obs.answer = policyAnswer(t, func() *Component { return r.comp }, policy)
	comp, err := New(cfg, r.ns, mapping.NewTranslator(mapping.DefaultTable(), false), r.store, r.obs, slog.New(r.logs))
	if err != nil {
		t.Fatal(err)
	}
	r.comp = comp
	if setup != nil {
		setup(comp)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- comp.Run(ctx) }()
	t.Cleanup(r.stop)
	waitFor(t, waitLong, "component connected", func() bool { return comp.connects.Load() >= 1 && comp.connected() })
	return r
}

// stop shuts the component down and waits for Run to return.
func (r *rig) stop() {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("Run: %v", err)
		}
		if os.Getenv("XMPPSIDE_PROSODY_LOG") != "" {
			r.t.Log(r.srv.Log())
		}
		r.done <- err // keep it for a second stop
	case <-time.After(30 * time.Second):
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		r.t.Fatalf("Run did not return after cancel; goroutines:\n%s", b.String())
	}
}

func (r *rig) puppet(id mapping.UserID) string {
	j, err := r.ns.PuppetJID(id)
	if err != nil {
		r.t.Fatal(err)
	}
	return string(j)
}

func (r *rig) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	r.t.Cleanup(cancel)
	return ctx
}

// login registers user@localhost, logs in, fetches the roster and sends
// initial presence.
func (r *rig) login(user, resource string, prio int, show, status string) *prosodytest.Client {
	r.t.Helper()
	r.srv.Register(r.t, user, user+"-pw")
	c := r.srv.Login(r.t, user, user+"-pw", resource)
	// Like a real client, fetch the roster first: Prosody delivers
	// subscription stanzas only to "interested" resources (RFC 6121 §2.1.6).
	if _, err := c.Roster(r.ctx()); err != nil {
		r.t.Fatal(err)
	}
	if err := c.SendPresence(r.ctx(), "", "", show, status, prio); err != nil {
		r.t.Fatal(err)
	}
	return c
}

// sub returns the stored subscription of (id, contact).
func (r *rig) sub(id mapping.UserID, contact mapping.BareJID) bridge.Subscription {
	s, _, err := r.store.Subscriptions.Get(r.ctx(), pairKey(id, contact))
	if err != nil && !errors.Is(err, bridge.ErrNotFound) {
		r.t.Fatal(err)
	}
	return s
}

// waitSub waits until the bucket holds want for the pair, and checks that
// the index agrees.
func (r *rig) waitSub(id mapping.UserID, contact mapping.BareJID, want bridge.Subscription) {
	r.t.Helper()
	// The bucket is written first, then the in-memory index from the
	// stored result: wait for both.
	waitFor(r.t, waitLong, "subscription "+StateName(want)+" for "+string(contact)+" in the bucket and the index", func() bool {
		return SameState(r.sub(id, contact), want) && SameState(r.comp.subs.get(id, contact), want)
	})
}

// roster returns the contact's view of the puppet in its roster ("" if absent).
func (r *rig) roster(c *prosodytest.Client, puppet string) string {
	ros, err := c.Roster(r.ctx())
	if err != nil {
		r.t.Fatal(err)
	}
	return ros[puppet]
}

// show asks the puppet of id to show p, as the core does.
func (r *rig) show(id mapping.UserID, p mapping.Presence) {
	r.t.Helper()
	if err := r.comp.ShowPuppet(r.ctx(), bridge.PuppetPresence{User: id, Presence: p}); err != nil {
		r.t.Fatal(err)
	}
}

// command asks the puppet of id to send a subscription stanza to contact,
// as the core does.
func (r *rig) command(id mapping.UserID, contact mapping.BareJID, typ bridge.SubscriptionType) {
	r.t.Helper()
	if err := r.comp.SendSubscription(r.ctx(), bridge.PuppetSubscription{Puppet: id, Contact: contact, Type: typ}); err != nil {
		r.t.Fatal(err)
	}
}

// from matches stanzas from a JID (bare or full) with a name and type.
func from(name, typ, jid string) func(prosodytest.Stanza) bool {
	return func(s prosodytest.Stanza) bool {
		f := s.From
		if i := strings.IndexByte(f, '/'); i >= 0 && !strings.Contains(jid, "/") {
			f = f[:i]
		}
		return s.Name == name && s.Type == typ && f == jid
	}
}

// bareOf returns the bare JID of a logged-in client.
func bareOf(c *prosodytest.Client) mapping.BareJID { return mapping.BareJID(c.JID.Bare().String()) }

// befriend makes (id, contact) Both under the accept policy: the contact
// subscribes, the core approves and subscribes back, the contact approves.
func (r *rig) befriend(c *prosodytest.Client, id mapping.UserID) {
	r.t.Helper()
	puppet := r.puppet(id)
	if err := c.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
		r.t.Fatal(err)
	}
	c.Wait(r.t, waitLong, "subscribed from "+puppet, from("presence", "subscribed", puppet))
	c.Wait(r.t, waitLong, "subscribe from "+puppet, from("presence", "subscribe", puppet))
	if err := c.SendPresence(r.ctx(), "subscribed", puppet, "", "", 0); err != nil {
		r.t.Fatal(err)
	}
	r.waitSub(id, bareOf(c), sBoth)
}

// ping sends an XEP-0199 ping from c to jid and waits for the result.
func (r *rig) ping(c *prosodytest.Client, jid string) {
	r.t.Helper()
	id := "ping-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := c.Send(r.ctx(), `<iq type='get' id='`+id+`' to='`+jid+`'><ping xmlns='urn:xmpp:ping'/></iq>`); err != nil {
		r.t.Fatal(err)
	}
	res := c.Wait(r.t, waitLong, "ping result from "+jid, func(s prosodytest.Stanza) bool { return s.Name == "iq" && s.ID == id })
	if res.Type != "result" || res.From != jid {
		r.t.Fatalf("ping %s: %s", jid, res.Raw)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// logRecorder is a slog handler that keeps every record (level and
// message, then the attributes as text) and passes it on to next.
type logRecorder struct {
	next  slog.Handler
	mu    *sync.Mutex
	lines *[]loggedLine
	attrs []slog.Attr
}

type loggedLine struct {
	level slog.Level
	msg   string
	text  string // the attributes, key=value
}

func newLogRecorder(t testing.TB) *logRecorder {
	return &logRecorder{next: testLogger(t).Handler(), mu: &sync.Mutex{}, lines: new([]loggedLine)}
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	add := func(a slog.Attr) bool { b.WriteString(a.String() + " "); return true }
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	h.mu.Lock()
	*h.lines = append(*h.lines, loggedLine{level: r.Level, msg: r.Message, text: b.String()})
	h.mu.Unlock()
	return h.next.Handle(ctx, r)
}

func (h *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	c.next = h.next.WithAttrs(as)
	return &c
}

func (h *logRecorder) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}

// matching returns the records at level whose message contains msg.
func (h *logRecorder) matching(level slog.Level, msg string) []loggedLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []loggedLine
	for _, l := range *h.lines {
		if l.level == level && strings.Contains(l.msg, msg) {
			out = append(out, l)
		}
	}
	return out
}

// all returns every record as one text.
func (h *logRecorder) all() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, l := range *h.lines {
		b.WriteString(l.level.String() + " " + l.msg + " " + l.text + "\n")
	}
	return b.String()
}
