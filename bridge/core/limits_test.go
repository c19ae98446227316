package core

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// stopClock makes the core's budgets see a clock that moves only when the
// test moves it.
func (h *harness) stopClock() *time.Time {
	t := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h.core.setClock(func() time.Time { return t })
	return &t
}

func (h *harness) invites() int {
	n := 0
	for _, d := range h.rec.all() {
		if strings.HasPrefix(d, "matrix ") && strings.Contains(d, " invite") {
			n++
		}
	}
	return n
}

// TestSubscriptionFloodWithinBudget (issue 9, defect 2): a server forging
// 10,000 addresses of its own domain, each asking a different puppet,
// gets at most its domain's budget of invites (rooms, ghosts) and links;
// the rest is left unanswered and counted. A well-behaved user of another
// domain is still served.
func TestSubscriptionFloodWithinBudget(t *testing.T) {
	cfg := Default()
	h := start(t, cfg, nil)
	h.stopClock()
	for i := range 10000 {
		h.subscription(fmt.Sprintf("forged%d@evil.example", i), fmt.Sprintf("@victim%d:example.org", i), bridge.Subscribe)
	}
	budget := cfg.Limits.PerDomain.Burst
	if n := h.invites(); n > budget {
		t.Fatalf("10,000 forged requests became %d invites; the domain's budget is %d", n, budget)
	}
	if n := len(keys(h, h.store.Links)); n > budget+1 {
		t.Fatalf("10,000 forged requests left %d links", n)
	}
	for _, d := range h.rec.all() {
		if strings.Contains(d, "unsubscribed") {
			t.Fatalf("a request over budget was answered as if refused by the Matrix user: %s", d)
		}
	}
	if got := h.core.Refusals()[ReasonDomainBudget]; got != uint64(10000-budget) {
		t.Errorf("refusals[domain_budget] = %d, want %d", got, 10000-budget)
	}
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
	if n := h.core.budgetKeys(); n > 2*budget+4 {
		t.Errorf("the budgets hold %d keys after the flood", n)
	}
}

// Users of the XMPP server the component is attached to (by default the
// component domain's parent: example.org for matrix.example.org) spend
// only their own budget: neither a flood from elsewhere nor their
// number holds them back.
func TestLocalDomainSpendsOnlyAddressBudget(t *testing.T) {
	cfg := Default()
	cfg.Limits.PerDomain = Budget{Every: time.Hour, Burst: 2}
	cfg.Limits.Total = Budget{Every: time.Hour, Burst: 5}
	h := start(t, cfg, nil)
	h.stopClock()
	for i := range 100 {
		h.subscription(fmt.Sprintf("forged%d@evil%d.example", i, i%10), bob, bridge.Subscribe)
	}
	if n := h.invites(); n != 5 {
		t.Fatalf("a flood from 10 domains became %d invites, want the total budget of 5", n)
	}
	h.rec.reset()
	for i := range 200 {
		h.subscription(fmt.Sprintf("colleague%d@example.org", i), bob, bridge.Subscribe)
	}
	if n := h.invites(); n != 200 {
		t.Fatalf("200 local users asking at once became %d invites", n)
	}
}

// One address asking many puppets gets its own budget, which comes back
// with time.
func TestPerAddressBudget(t *testing.T) {
	cfg := Default()
	cfg.Limits.PerAddress = Budget{Every: time.Minute, Burst: 3}
	h := start(t, cfg, nil)
	clock := h.stopClock()
	for i := range 20 {
		h.subscription(alice, fmt.Sprintf("@friend%d:example.org", i), bridge.Subscribe)
	}
	if n := h.invites(); n != 3 {
		t.Fatalf("20 requests of one address became %d invites, want its burst of 3", n)
	}
	if got := h.core.Refusals()[ReasonAddressBudget]; got != 17 {
		t.Errorf("refusals[address_budget] = %d, want 17", got)
	}
	// The XMPP server re-sends a pending request at the next login.
	*clock = clock.Add(time.Minute)
	h.subscription(alice, "@friend19:example.org", bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@friend19:example.org invite `)
}

// TestInviteLocalOnly: with core.invite_local_only, ghosts invite only
// users of the bridge's homeserver; a request for a remote Matrix user is
// refused (unsubscribed) and counted.
func TestInviteLocalOnly(t *testing.T) {
	cfg := Default()
	cfg.InviteLocalOnly = true
	h := start(t, cfg, nil)
	h.subscription(alice, "@mallory:remote.example", bridge.Subscribe)
	h.waitOut(`xmpp @mallory:remote.example→alice@xmpp.example unsubscribed`)
	h.subscription(alice, bob, bridge.Subscribe)
	h.waitOut(`matrix alice@xmpp.example→@bob:example.org invite `)
	if n := h.invites(); n != 1 {
		t.Fatalf("%d invites, want only bob's", n)
	}
	if got := h.core.Refusals()[ReasonRemoteInvite]; got != 1 {
		t.Errorf("refusals[remote_invite] = %d, want 1", got)
	}
}

// TestMemoryBounded (issue 9, defect 11): the core's maps keyed by remote
// input stay bounded: 30,000 forged addresses leave nothing in memory,
// and a linked person's coalescing slot goes once they are quiet.
func TestMemoryBounded(t *testing.T) {
	cfg := Default()
	cfg.CoalesceWindow = 20 * time.Millisecond
	h := start(t, cfg, nil, aliceBob)
	for i := range 30000 {
		h.presenceSeq(mapping.NetworkXMPP, fmt.Sprintf("forged%d@evil.example", i), mapping.Presence{State: mapping.StateAway}, uint64(i+1))
		h.presenceSeq(mapping.NetworkMatrix, fmt.Sprintf("@forged%d:evil.example", i), mapping.Presence{State: mapping.StateAway}, uint64(i+1))
	}
	h.check(h.core.setOptOut(t.Context(), mapping.NetworkMatrix, "@forged:evil.example", true))
	if n := h.people(); n != 2 { // alice and bob
		t.Errorf("30,000 forged addresses left %d entries in memory", n-2)
	}
	h.presence(mapping.NetworkXMPP, alice, mapping.Presence{State: mapping.StateAway, Status: "x"})
	bustest.WaitFor(t, 5*time.Second, "every coalescing slot freed once every person went quiet", func() bool { return h.core.presence.size() == 0 })
	if pending := h.core.pendingWrites(); pending > 3 {
		t.Errorf("the persister holds %d records", pending)
	}
}

// The budget of a key that spent nothing is not held.
func TestBucketsPruneRefilledKeys(t *testing.T) {
	b := newBuckets(Budget{Every: time.Second, Burst: 2})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 5000 {
		k := fmt.Sprint(i)
		if !b.has(k, t0) {
			t.Fatal("a new key has no token")
		}
		b.take(k, t0)
	}
	b.prune(t0.Add(2 * time.Second))
	if len(b.m) != 0 {
		t.Fatalf("%d refilled keys held", len(b.m))
	}
	b.take("a", t0)
	b.take("a", t0)
	if b.has("a", t0) || !b.has("a", t0.Add(time.Second)) {
		t.Fatal("a bucket spent its burst but has a token, or did not refill")
	}
}

// TestMatrixInviteFloodWithinBudget: the mirror of XMPP requests: invites
// of ghosts from one remote Matrix server become puppet subscription
// requests only within the budgets; the rest are declined (the ghost
// rejects), and a local user is still served.
func TestMatrixInviteFloodWithinBudget(t *testing.T) {
	cfg := Default()
	cfg.Limits.PerDomain = Budget{Every: time.Hour, Burst: 5}
	h := start(t, cfg, nil)
	h.stopClock()
	for i := range 50 {
		mxid := fmt.Sprintf("@spam%d:spam.example", i)
		h.membership(mxid, fmt.Sprintf("victim%d@xmpp.example", i), "invite", fmt.Sprintf("victim%d@xmpp.example", i), mxid, fmt.Sprintf("!r%d:spam.example", i))
	}
	asked := 0
	for _, d := range h.rec.all() {
		if strings.HasPrefix(d, "xmpp @spam") && strings.HasSuffix(d, " subscribe") {
			asked++
		}
	}
	if asked != 5 {
		t.Fatalf("50 invites from one server became %d subscription requests, want its burst of 5", asked)
	}
	if got := h.core.Refusals()[ReasonDomainBudget]; got != 45 {
		t.Errorf("refusals[domain_budget] = %d, want 45", got)
	}
	h.waitOut(`matrix victim49@xmpp.example→@spam49:spam.example reject !r49:spam.example`)
	// bob is on the bridge's own homeserver: his server's budget is not spent.
	h.membership(bob, alice, "invite", alice, bob, "!room:example.org")
	h.waitOut(`xmpp @bob:example.org→alice@xmpp.example subscribe`)
}
