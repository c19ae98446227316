package core

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	"github.com/presence-bridge/presence-bridge/mapping"
)

var ns = mapping.Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: "example.org", ComponentDomain: "matrix.example.org"}

const (
	alice = "alice@xmpp.example"
	bob   = "@bob:example.org"
)

type harness struct {
	t     *testing.T
	core  *Core
	store *bridge.Store
	rec   *recorder
}

// recorder is an in-memory fake of both sides: it records every command
// the core gives, rendered by describe.
type recorder struct {
	mu       sync.Mutex
	out      []string
	observed map[string]time.Time // description → ObservedAt of its last command
}

var (
	_ bridge.XMPPActor   = (*recorder)(nil)
	_ bridge.MatrixActor = (*recorder)(nil)
)

func (r *recorder) add(s string) { r.mu.Lock(); r.out = append(r.out, s); r.mu.Unlock() }

func (r *recorder) ShowPuppet(_ context.Context, c bridge.PuppetPresence) error {
	r.addObserved(describePresence(mapping.NetworkMatrix, string(c.User), c.Presence), c.ObservedAt)
	return nil
}

func (r *recorder) ShowGhost(_ context.Context, c bridge.GhostPresence) error {
	r.addObserved(describePresence(mapping.NetworkXMPP, string(c.User), c.Presence), c.ObservedAt)
	return nil
}

func (r *recorder) addObserved(s string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out = append(r.out, s)
	if r.observed == nil {
		r.observed = make(map[string]time.Time)
	}
	r.observed[s] = at
}

// observedAt returns the ObservedAt of the last command described by s.
func (r *recorder) observedAt(s string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.observed[s]
}

func (r *recorder) SendSubscription(_ context.Context, c bridge.PuppetSubscription) error {
	r.add(fmt.Sprintf("xmpp %s→%s %s", c.Puppet, c.Contact, c.Type))
	return nil
}

func (r *recorder) GhostMembership(_ context.Context, c bridge.GhostMembership) error {
	if c.Before != nil {
		r.add(describePresence(mapping.NetworkXMPP, string(c.Ghost), *c.Before))
	}
	r.add(fmt.Sprintf("matrix %s→%s %s %s", c.Ghost, c.Peer, c.Membership, c.RoomID))
	return nil
}

func (r *recorder) RequestPresence(_ context.Context, q bridge.PresenceRequest) error {
	r.add(fmt.Sprintf("request %s %s", q.Network, q.User))
	return nil
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.out...)
}

func (r *recorder) reset() { r.mu.Lock(); r.out = nil; r.mu.Unlock() }

// The settle marker: a linked pair whose presence the harness sends to
// know that everything sent before it went through.
const (
	settleJID  = "settle@settle.example"
	settleMXID = "@settle:example.org"
)

// seedLinks writes approved links into store, as a previous run of the
// core would have: the core loads them at start.
func seedLinks(t *testing.T, store *bridge.Store, pairs ...[2]string) {
	t.Helper()
	for _, p := range pairs {
		jid, mxid := p[0], p[1]
		if _, err := store.Links.Put(context.Background(), bridge.PairKey(mxid, jid), bridge.Link{
			MatrixUser: mapping.UserID(mxid), XMPPUser: mapping.BareJID(jid), State: bridge.LinkApproved,
			Initiator: mapping.NetworkXMPP, RoomID: "!seed:example.org", UpdatedAt: time.Now().UTC(),
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// start runs a core on store (a new in-memory one if nil) with the
// recorder as both sides: no NATS. The pairs are linked (approved) before
// it starts.
func start(t *testing.T, cfg Config, store *bridge.Store, linked ...[2]string) *harness {
	t.Helper()
	if store == nil {
		store = bridge.NewMemoryStore()
	}
	seedLinks(t, store, append(linked, [2]string{settleJID, settleMXID})...)
	rec := &recorder{}
	c, err := New(cfg, ns, store, rec, rec, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("core stopped: %v", err)
	}
	h := &harness{t: t, core: c, store: store, rec: rec}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("core Run: %v", err)
		}
	})
	return h
}

func (h *harness) check(err error) {
	h.t.Helper()
	if err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) presence(net mapping.Network, user string, p mapping.Presence) {
	h.presenceSeq(net, user, p, 0)
}

func (h *harness) presenceSeq(net mapping.Network, user string, p mapping.Presence, seq uint64) {
	h.t.Helper()
	st := bridge.Stamp{Seq: seq}
	if net == mapping.NetworkXMPP {
		h.check(h.core.XMPPPresence(context.Background(), bridge.XMPPPresence{Stamp: st, User: mapping.BareJID(user), Presence: p}))
	} else {
		h.check(h.core.MatrixPresence(context.Background(), bridge.MatrixPresence{Stamp: st, User: mapping.UserID(user), Presence: p}))
	}
}

func (h *harness) subscription(jid, mxid string, typ bridge.SubscriptionType) {
	h.t.Helper()
	h.check(h.core.XMPPSubscription(context.Background(), bridge.XMPPSubscription{Contact: mapping.BareJID(jid), Puppet: mapping.UserID(mxid), Type: typ}))
}

// membership reports a membership change: member is whose membership
// changed (the ghost's JID or the Matrix user), sender who changed it.
func (h *harness) membership(mxid, jid, membership, member, sender, room string) {
	h.t.Helper()
	m, err := bridge.ParseMembership(membership)
	h.check(err)
	h.check(h.core.MatrixMembership(context.Background(), bridge.MatrixMembership{User: mapping.UserID(mxid), Ghost: mapping.BareJID(jid),
		GhostChanged: member == jid, BySelf: sender == member, Membership: m, RoomID: room}))
}

func (h *harness) optOut(jid string, enabled bool) {
	h.t.Helper()
	h.check(h.core.XMPPOptOut(context.Background(), bridge.OptOut[mapping.BareJID]{User: mapping.BareJID(jid), Enabled: enabled}))
}

func describePresence(net mapping.Network, user string, p mapping.Presence) string {
	return fmt.Sprintf("presence %s→%s %s %q", net, net.Other(), user, p.Status+"/"+p.State.String())
}

// waitOut waits until every wanted description has been published.
func (h *harness) waitOut(want ...string) {
	h.t.Helper()
	for _, w := range want {
		bustest.WaitFor(h.t, 5*time.Second, fmt.Sprintf("%q published", w), func() bool {
			return slices.Contains(h.rec.all(), w)
		})
	}
}

// settle waits until a marker presence went through the core, so that
// everything published before it was handled too.
func (h *harness) settle() {
	h.t.Helper()
	marker := fmt.Sprintf("m%d", time.Now().UnixNano())
	h.presence(mapping.NetworkXMPP, settleJID, mapping.Presence{State: mapping.StateAway, Status: marker})
	h.waitOut(fmt.Sprintf("presence xmpp→matrix %s %q", settleJID, marker+"/away"))
}

// aliceBob is the pair most tests link.
var aliceBob = [2]string{alice, bob}

func (h *harness) count(desc string) int {
	n := 0
	for _, d := range h.rec.all() {
		if d == desc {
			n++
		}
	}
	return n
}

func TestPresenceFlowsBothWays(t *testing.T) {
	h := start(t, Default(), nil, aliceBob)
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateBusy, Status: "call"})
	h.presence(mapping.NetworkMatrix, bob, mapping.Presence{State: mapping.StateAway, Status: "lunch"})
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "call/busy"`, `presence matrix→xmpp @bob:example.org "lunch/away"`)
}

// TestObservedAtPassedOn: a presence command carries the ObservedAt of
// the report it shows (for the end-to-end metric, measured at delivery);
// a presence the core makes up itself (an opt-out's offline) carries none.
func TestObservedAtPassedOn(t *testing.T) {
	h := start(t, Default(), nil, aliceBob)
	t1 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	t2 := t1.Add(time.Second)
	h.check(h.core.XMPPPresence(context.Background(), bridge.XMPPPresence{Stamp: bridge.Stamp{ObservedAt: t1}, User: alice, Presence: mapping.Presence{State: mapping.StateAway, Status: "x"}}))
	h.check(h.core.MatrixPresence(context.Background(), bridge.MatrixPresence{Stamp: bridge.Stamp{ObservedAt: t2}, User: bob, Presence: mapping.Presence{State: mapping.StateBusy, Status: "m"}}))
	ghost, puppet := `presence xmpp→matrix alice@xmpp.example "x/away"`, `presence matrix→xmpp @bob:example.org "m/busy"`
	h.waitOut(ghost, puppet)
	if got := h.rec.observedAt(ghost); !got.Equal(t1) {
		t.Errorf("ghost presence observed at %v, want %v", got, t1)
	}
	if got := h.rec.observedAt(puppet); !got.Equal(t2) {
		t.Errorf("puppet presence observed at %v, want %v", got, t2)
	}
	h.optOut(alice, true)
	offline := `presence xmpp→matrix alice@xmpp.example "/offline"`
	h.waitOut(offline)
	if got := h.rec.observedAt(offline); !got.IsZero() {
		t.Errorf("the opt-out's offline observed at %v, want none", got)
	}
}

func TestOwnPuppetsAndGhostsNeverBridgedBack(t *testing.T) {
	h := start(t, Default(), nil)
	ghostTyped, _ := ns.GhostMXID(mapping.BareJID(alice))
	ghost := string(ghostTyped)
	puppetTyped, _ := ns.PuppetJID(mapping.UserID(bob))
	puppet := string(puppetTyped)
	h.presence(mapping.NetworkMatrix, ghost, mapping.Presence{State: mapping.StateAway})
	h.presence(mapping.NetworkXMPP, puppet, mapping.Presence{State: mapping.StateAway})
	h.settle()
	for _, d := range h.rec.all() {
		if strings.Contains(d, ghost) || strings.Contains(d, puppet) {
			t.Fatalf("bridged its own echo: %s", d)
		}
	}
}

func TestOptOut(t *testing.T) {
	h := start(t, Default(), nil, aliceBob)
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAvailable, Status: "before"})
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "before/available"`)
	h.optOut(alice, true)
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "/offline"`)
	h.rec.reset()
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: "secret"})
	h.settle()
	if n := h.count(`presence xmpp→matrix alice@xmpp.example "secret/away"`); n != 0 {
		t.Fatal("an opted-out user's presence was exported")
	}
	h.optOut(alice, false)
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "secret/away"`)
}

func TestAccessLists(t *testing.T) {
	cfg := Default()
	cfg.DenyXMPPDomains = []string{"spam.example"}
	cfg.AllowMatrixServers = []string{"example.org"}
	h := start(t, cfg, nil)
	h.presence(mapping.NetworkXMPP, "eve@spam.example", mapping.Presence{State: mapping.StateAway})
	h.presence(mapping.NetworkMatrix, "@mallory:other.org", mapping.Presence{State: mapping.StateAway})
	h.subscription("eve@spam.example", bob, bridge.Subscribe)
	h.waitOut(`xmpp @bob:example.org→eve@spam.example unsubscribed`)
	h.settle()
	for _, d := range h.rec.all() {
		if strings.HasPrefix(d, "presence") && (strings.Contains(d, "eve@spam.example") || strings.Contains(d, "@mallory:other.org")) {
			t.Fatalf("denied user bridged: %s", d)
		}
		if strings.HasPrefix(d, "matrix") {
			t.Fatalf("denied user caused an invite: %s", d)
		}
	}
}

func TestOlderSequenceNeverOverridesNewer(t *testing.T) {
	cfg := Default()
	cfg.CoalesceWindow = 0
	h := start(t, cfg, nil, aliceBob)
	p1, p2 := mapping.Presence{State: mapping.StateAway, Status: "new"}, mapping.Presence{State: mapping.StateAvailable, Status: "old"}
	h.presenceSeq(mapping.NetworkXMPP, alice, p1, 200)
	h.presenceSeq(mapping.NetworkXMPP, alice, p2, 100)
	h.settle()
	if h.count(`presence xmpp→matrix alice@xmpp.example "old/available"`) != 0 {
		t.Fatal("older event overrode a newer one")
	}
	// The store is written behind the event path: poll for it.
	if rec := h.storedPresence(bridge.PresenceKey(mapping.NetworkXMPP, alice), true); rec.Presence.Status != "new" {
		t.Fatalf("stored %+v; want the newer record", rec)
	}
}

func TestCoalescingBurst(t *testing.T) {
	cfg := Default()
	cfg.CoalesceWindow = 300 * time.Millisecond
	h := start(t, cfg, nil, aliceBob)
	for i := 0; i < 50; i++ {
		h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: fmt.Sprint(i)})
	}
	h.waitOut(`presence xmpp→matrix alice@xmpp.example "49/away"`)
	n := 0
	for _, d := range h.rec.all() {
		if strings.Contains(d, alice) {
			n++
		}
	}
	// The first goes at once, the rest of the burst collapses into the last.
	if n > 3 {
		t.Fatalf("a burst of 50 produced %d updates; want at most one per window", n)
	}
}

// TestConsentAskApprovedByJoin: alice asks, bob is invited once, and his
// join approves. The presence alice showed since she asked is the last
// known one: bob sees it at once.
func TestConsentAskApprovedByJoin(t *testing.T) {
	h := start(t, Default(), nil)
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: "hello"})
	// Prosody re-sends the request at every login: never a second prompt.
	h.subscription(alice, bob, bridge.Subscribe)
	h.settle()
	if n := h.count(`matrix alice@xmpp.example→@bob:example.org invite `); n != 1 {
		t.Fatalf("Matrix user prompted %d times", n)
	}
	h.rec.reset()
	h.membership(bob, alice, "join", bob, bob, "!dm:example.org")
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`, `xmpp @bob:example.org→alice@xmpp.example subscribe`,
		`presence xmpp→matrix alice@xmpp.example "hello/away"`)
	l, _, _ := h.store.Links.Get(context.Background(), bridge.PairKey(bob, alice))
	if l.State != bridge.LinkApproved || l.RoomID != "!dm:example.org" {
		t.Fatalf("link %+v", l)
	}
}

func TestConsentAskDeniedByReject(t *testing.T) {
	h := start(t, Default(), nil)
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
	h.membership(bob, alice, "leave", bob, bob, "!dm:example.org")
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example unsubscribed`, `matrix alice@xmpp.example→@bob:example.org leave !dm:example.org`)
	// The refusal was told to both sides: the link is gone, not kept.
	if l, _, err := h.store.Links.Get(context.Background(), bridge.PairKey(bob, alice)); err == nil {
		t.Fatalf("denied link kept: %+v", l)
	}
	// alice may ask again, as on both networks; bob is asked again.
	h.rec.reset()
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
}

func TestConsentMatrixInviteAnsweredOnXMPP(t *testing.T) {
	h := start(t, Default(), nil)
	h.membership(bob, alice, "invite", alice, bob, "!room:example.org")
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribe`)
	h.subscription(alice, bob, bridge.Subscribed)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org join !room:example.org`)
}

func TestRevocationFromEitherSide(t *testing.T) {
	for _, by := range []string{"matrix leave", "matrix kick", "xmpp unsubscribed"} {
		t.Run(by, func(t *testing.T) {
			h := start(t, Default(), nil)
			h.subscription(alice, bob, bridge.Subscribe)
			h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
			h.membership(bob, alice, "join", bob, bob, "!dm:example.org")
			h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`)
			h.rec.reset()
			switch by {
			case "matrix leave":
				h.membership(bob, alice, "leave", bob, bob, "!dm:example.org")
			case "matrix kick":
				h.membership(bob, alice, "leave", alice, bob, "!dm:example.org")
			case "xmpp unsubscribed":
				h.subscription(alice, bob, bridge.Unsubscribed)
			}
			h.waitOut(`xmpp @bob:example.org→alice@xmpp.example unsubscribed`, `xmpp @bob:example.org→alice@xmpp.example unsubscribe`,
				`presence xmpp→matrix alice@xmpp.example "/offline"`, `matrix alice@xmpp.example→@bob:example.org leave !dm:example.org`)
		})
	}
}

func TestPolicyReject(t *testing.T) {
	cfg := Default()
	cfg.Policy = PolicyReject
	h := start(t, cfg, nil)
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example unsubscribed`)
	if h.count(`matrix alice@xmpp.example→@bob:example.org invite `) != 0 {
		t.Fatal("reject policy still invited")
	}
}

func TestRestartAsksNobodyAgain(t *testing.T) {
	store := bridge.NewMemoryStore()
	t.Run("first life", func(t *testing.T) {
		h := start(t, Default(), store)
		h.subscription(alice, bob, bridge.Subscribe)
		h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
		h.membership(bob, alice, "join", bob, bob, "!dm:example.org")
		h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`)
	})
	t.Run("after restart", func(t *testing.T) {
		h := start(t, Default(), store)
		// Prosody re-sends alice's request after the restart: approved at
		// once from the stored link, and bob is not invited again.
		h.subscription(alice, bob, bridge.Subscribe)
		h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`)
		h.settle()
		if n := h.count(`matrix alice@xmpp.example→@bob:example.org invite `); n != 0 {
			t.Fatalf("bob invited again after restart")
		}
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The ghost goes offline before it leaves, so that the Matrix user sees
// it offline rather than its last presence frozen.
func TestRevokedGhostOfflineBeforeItLeaves(t *testing.T) {
	h := start(t, Default(), nil)
	h.subscription(alice, bob, bridge.Subscribe)
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAvailable, Status: "here"})
	h.membership(bob, alice, "join", bob, bob, "!dm:example.org")
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`)
	h.rec.reset()
	h.subscription(alice, bob, bridge.Unsubscribe)
	offline, leave := `presence xmpp→matrix alice@xmpp.example "/offline"`, `matrix alice@xmpp.example→@bob:example.org leave !dm:example.org`
	h.waitOut(offline, leave)
	if out := h.rec.all(); slices.Index(out, offline) > slices.Index(out, leave) {
		t.Fatalf("the ghost left before going offline: %q", out)
	}
}

// The room a ghost opened is learnt from the side's report of the invite,
// so that the core, the links bucket's only writer, records it.
func TestGhostInviteRecordsTheRoom(t *testing.T) {
	h := start(t, Default(), nil)
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
	h.membership(bob, alice, "invite", bob, alice, "!new:example.org")
	l, _, err := h.store.Links.Get(context.Background(), bridge.PairKey(bob, alice))
	if err != nil || l.RoomID != "!new:example.org" || l.State != bridge.LinkAsked {
		t.Fatalf("link %+v, %v", l, err)
	}
	// A ghost's invite without a link (never asked for) records nothing.
	h.membership("@carol:example.org", alice, "invite", "@carol:example.org", alice, "!x:example.org")
	if _, _, err := h.store.Links.Get(context.Background(), bridge.PairKey("@carol:example.org", alice)); err == nil {
		t.Fatal("an unasked invite created a link")
	}
}

// With policy accept the core, not the XMPP side, answers at once.
func TestPolicyAccept(t *testing.T) {
	cfg := Default()
	cfg.Policy = PolicyAccept
	h := start(t, cfg, nil)
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribed`, `xmpp @bob:example.org→alice@xmpp.example subscribe`,
		`matrix alice@xmpp.example→@bob:example.org invite `)
}

// A Matrix user linked for the first time is asked for afresh: what the
// Matrix side reported before the link was dropped, and it reports only
// changes, so without the request the XMPP user would wait for bob's next
// change.
func TestNewlyLinkedMatrixUserAskedForPresence(t *testing.T) {
	h := start(t, Default(), nil)
	h.presence(mapping.NetworkMatrix, bob, mapping.Presence{State: mapping.StateAway, Status: "before any link"})
	h.membership(bob, alice, "invite", alice, bob, "!room:example.org")
	h.waitOut(`request matrix @bob:example.org`)
	h.rec.reset()
	// A second link of bob's is no news.
	h.membership(bob, "carol@xmpp.example", "invite", "carol@xmpp.example", bob, "!room2:example.org")
	h.waitOut(`xmpp @bob:example.org→carol@xmpp.example subscribe`)
	if n := h.count(`request matrix @bob:example.org`); n != 0 {
		t.Fatalf("asked %d times for a user already linked", n)
	}
}
