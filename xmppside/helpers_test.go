package xmppside

import (
	"context"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	"net"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
	"github.com/presence-bridge/presence-bridge/mapping"
)

const (
	bob       = "@bob:example.org"
	carol     = "@carol:example.org"
	waitLong  = 15 * time.Second
	waitShort = 5 * time.Second
)

func testNamespace(domain string) mapping.Namespace {
	return mapping.Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: "example.org", ComponentDomain: domain}
}

func openTestBus(t testing.TB) *bridge.Bus { return bustest.Open(t, "") }

var waitFor = bustest.WaitFor

var testLogger = bustest.Logger

// recorder keeps every event the component publishes on bridge.In.
type recorder struct {
	mu     sync.Mutex
	events []*bridge.Event
}

func (r *recorder) add(_ context.Context, ev *bridge.Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

// matching returns the recorded events for which pred holds.
func (r *recorder) matching(pred func(*bridge.Event) bool) []*bridge.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*bridge.Event
	for _, ev := range r.events {
		if pred(ev) {
			out = append(out, ev)
		}
	}
	return out
}

func presenceOf(user string) func(*bridge.Event) bool {
	return func(ev *bridge.Event) bool { return ev.Kind == bridge.KindPresence && ev.User == user }
}

func subscriptionOf(user, peer string, typ bridge.SubscriptionType) func(*bridge.Event) bool {
	return func(ev *bridge.Event) bool {
		return ev.Kind == bridge.KindSubscription && ev.User == user && ev.Peer == peer && ev.Subscription.Type == typ
	}
}

// rig is a real Prosody, an embedded bus and a running component.
type rig struct {
	t      *testing.T
	srv    *prosodytest.Server
	bus    *bridge.Bus
	comp   *Component
	ns     mapping.Namespace
	in     *recorder
	cancel context.CancelFunc
	done   chan error
}

func startRig(t *testing.T, policy Policy, mutate ...func(*Config)) *rig {
	t.Helper()
	srv := prosodytest.Start(t, prosodytest.Options{ComponentDomain: "matrix.localhost", ComponentSecret: "test-secret"})
	bus := openTestBus(t)
	host, port, err := net.SplitHostPort(srv.ComponentAddr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	cfg.Host = host
	cfg.Port, _ = strconv.Atoi(port)
	cfg.ComponentDomain = srv.ComponentDomain
	cfg.Secret = srv.ComponentSecret
	cfg.SubscriptionPolicy = policy
	cfg.ReconnectMin, cfg.ReconnectMax = 50*time.Millisecond, time.Second
	cfg.ShutdownTimeout = 5 * time.Second
	for _, m := range mutate {
		m(&cfg)
	}
	ns := testNamespace(srv.ComponentDomain)
	comp, err := New(cfg, ns, mapping.NewTranslator(mapping.DefaultTable(), false), bus, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, srv: srv, bus: bus, comp: comp, ns: ns, in: &recorder{}, done: make(chan error, 1)}
	sub, err := bus.Subscribe(context.Background(), bridge.SubjectFilter(bridge.In, mapping.NetworkXMPP, ""), r.in.add)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- comp.Run(ctx) }()
	t.Cleanup(r.stop)
	waitFor(t, waitLong, "component connected", func() bool { return comp.connects.Load() >= 1 && comp.session() != nil })
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

func (r *rig) puppet(mxid string) string {
	jTyped, err := r.ns.PuppetJID(mapping.UserID(mxid))
	j := string(jTyped)
	if err != nil {
		r.t.Fatal(err)
	}
	return j
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

// sub returns the stored subscription of (mxid, contact).
func (r *rig) sub(mxid, contact string) bridge.Subscription {
	s, _, err := r.bus.Store().Subscriptions.Get(r.ctx(), bridge.PairKey(mxid, contact))
	if err != nil && err != bridge.ErrNotFound {
		r.t.Fatal(err)
	}
	return s
}

func (r *rig) waitSub(mxid, contact string, want bridge.Subscription) {
	r.t.Helper()
	waitFor(r.t, waitLong, "subscription "+StateName(want)+" for "+contact, func() bool { return SameState(r.sub(mxid, contact), want) })
	if got := r.comp.subs.get(mxid, contact); !SameState(got, want) {
		r.t.Fatalf("in-memory state %s, stored %s", StateName(got), StateName(want))
	}
}

// roster returns the contact's view of the puppet in its roster ("" if absent).
func (r *rig) roster(c *prosodytest.Client, puppet string) string {
	ros, err := c.Roster(r.ctx())
	if err != nil {
		r.t.Fatal(err)
	}
	return ros[puppet]
}

// presenceOut asks the puppet of mxid to show p.
func (r *rig) presenceOut(mxid string, p mapping.Presence, peer string) {
	r.t.Helper()
	if err := r.bus.Publish(r.ctx(), bridge.Out, &bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkMatrix, User: mxid, Peer: peer, Presence: &p}); err != nil {
		r.t.Fatal(err)
	}
}

// command asks the puppet of mxid to send a subscription stanza to contact.
func (r *rig) command(mxid, contact string, typ bridge.SubscriptionType) {
	r.t.Helper()
	if err := r.bus.Publish(r.ctx(), bridge.Out, &bridge.Event{Kind: bridge.KindSubscription, Origin: mapping.NetworkMatrix, User: mxid, Peer: contact, Subscription: &bridge.SubscriptionPayload{Type: typ}}); err != nil {
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

// befriend makes (mxid, contact) Both under the accept policy: the contact
// subscribes, the component approves and subscribes back, the contact
// approves.
func (r *rig) befriend(c *prosodytest.Client, mxid string) {
	r.t.Helper()
	puppet := r.puppet(mxid)
	contact := c.JID.Bare().String()
	if err := c.SendPresence(r.ctx(), "subscribe", puppet, "", "", 0); err != nil {
		r.t.Fatal(err)
	}
	c.Wait(r.t, waitLong, "subscribed from "+puppet, from("presence", "subscribed", puppet))
	c.Wait(r.t, waitLong, "subscribe from "+puppet, from("presence", "subscribe", puppet))
	if err := c.SendPresence(r.ctx(), "subscribed", puppet, "", "", 0); err != nil {
		r.t.Fatal(err)
	}
	r.waitSub(mxid, contact, sBoth)
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
