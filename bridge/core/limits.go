package core

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// bucket is a token bucket's state: tokens at the instant at.
type bucket struct {
	tokens float64
	at     time.Time
}

// buckets is the budget of every key (an address, a domain) seen recently.
// A key that has not spent anything holds no entry: a full bucket and an
// absent one are the same, so entries that have refilled are pruned, and
// the map holds only keys that spent within the last Burst×Every.
type buckets struct {
	b         Budget
	m         map[string]bucket
	nextPrune int
}

func newBuckets(b Budget) *buckets {
	return &buckets{b: b, m: make(map[string]bucket), nextPrune: minPrune}
}

// minPrune is the size under which the map is never swept.
const minPrune = 1024

func (s *buckets) off() bool { return s.b.Every <= 0 }

// tokens returns the tokens of key at now.
func (s *buckets) tokens(key string, now time.Time) float64 {
	e, ok := s.m[key]
	if !ok {
		return float64(s.b.Burst)
	}
	return min(float64(s.b.Burst), e.tokens+float64(now.Sub(e.at))/float64(s.b.Every))
}

// maxKeys bounds the map even when the other budgets are off: past it, a
// key not yet held is refused (the map holds only keys that spent within
// their refill time, so reaching it means a flood).
const maxKeys = 100_000

// has reports whether key has a token at now.
func (s *buckets) has(key string, now time.Time) bool {
	if s.off() {
		return true
	}
	if _, held := s.m[key]; !held && len(s.m) >= maxKeys {
		s.prune(now)
		if len(s.m) >= maxKeys {
			return false
		}
	}
	return s.tokens(key, now) >= 1
}

// take spends one token of key (which has one, see has).
func (s *buckets) take(key string, now time.Time) {
	if s.off() {
		return
	}
	s.m[key] = bucket{tokens: s.tokens(key, now) - 1, at: now}
	if len(s.m) >= s.nextPrune {
		s.prune(now)
	}
}

// prune forgets the keys whose bucket is full again. It runs when the map
// doubled since the last sweep, so its cost per take is constant.
func (s *buckets) prune(now time.Time) {
	for k := range s.m {
		if s.tokens(k, now) >= float64(s.b.Burst) {
			delete(s.m, k)
		}
	}
	s.nextPrune = max(minPrune, 2*len(s.m))
}

// limiter holds the three budgets of subscription requests.
type limiter struct {
	local map[string]bool // domains that spend only their addresses' budget

	mu                     sync.Mutex
	address, domain, total *buckets
}

func newLimiter(l Limits, componentDomain string) *limiter {
	return &limiter{local: l.localDomains(componentDomain), address: newBuckets(l.PerAddress), domain: newBuckets(l.PerDomain), total: newBuckets(l.Total)}
}

// newMatrixLimiter is the same budgets for Matrix users inviting ghosts:
// the users of the local homeserver spend only their own.
func newMatrixLimiter(l Limits, homeserverDomain string) *limiter {
	return &limiter{local: map[string]bool{homeserverDomain: true}, address: newBuckets(l.PerAddress), domain: newBuckets(l.PerDomain), total: newBuckets(l.Total)}
}

// allow spends a token of address, of domain and of the total if all
// three have one, and otherwise spends nothing and says which budget is
// exhausted. A request refused by its domain does not eat into the
// address's budget, nor into the others' share of the total. A local
// domain's users spend only their address's budget.
func (l *limiter) allow(address, domain string, now time.Time) (Reason, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	local := l.local[domain]
	switch {
	case !l.address.has(address, now):
		return ReasonAddressBudget, false
	case !local && !l.domain.has(domain, now):
		return ReasonDomainBudget, false
	case !local && !l.total.has("", now):
		return ReasonTotalBudget, false
	}
	l.address.take(address, now)
	if !local {
		l.domain.take(domain, now)
		l.total.take("", now)
	}
	return 0, true
}

// size is the number of keys held, for tests of bounded memory.
func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.address.m) + len(l.domain.m) + len(l.total.m)
}

// Reason is why the core refused or dropped a report.
type Reason uint8

// The reasons, counted by [Core.Refusals].
const (
	_ Reason = iota
	// ReasonNoLink: presence of a person who holds no link was dropped
	// (nothing stored, nothing shown).
	ReasonNoLink
	// ReasonAccess: refused by the allow/deny lists.
	ReasonAccess
	// ReasonRemoteInvite: a ghost would have invited a Matrix user of
	// another homeserver, and core.invite_local_only is set.
	ReasonRemoteInvite
	// ReasonAddressBudget, ReasonDomainBudget, ReasonTotalBudget: a
	// request over core.limits.per_address, per_domain or total.
	ReasonAddressBudget
	ReasonDomainBudget
	ReasonTotalBudget
	numReasons
)

var reasonNames = [numReasons]string{"", "no_link", "access_list", "remote_invite", "address_budget", "domain_budget", "total_budget"}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// refusals counts refusals by reason.
type refusals [numReasons]atomic.Uint64

func (r *refusals) add(reason Reason) { r[reason].Add(1) }

// logLimiter lets through one log line per key per interval and counts
// the others, so that a peer who repeats what is refused cannot flood the
// log: the next line that passes carries the number suppressed.
type logLimiter struct {
	every time.Duration
	mu    sync.Mutex
	last  [numReasons]time.Time
	held  [numReasons]int
}

// allow reports whether a line about reason may be logged now, and how
// many were suppressed since the last one.
func (l *logLimiter) allow(reason Reason, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last[reason].IsZero() && now.Sub(l.last[reason]) < l.every {
		l.held[reason]++
		return false, 0
	}
	n := l.held[reason]
	l.last[reason], l.held[reason] = now, 0
	return true, n
}

// refuse counts a refusal and logs it at level, at a bounded rate. attrs
// must not identify a person beyond their domain.
func (c *Core) refuse(level slog.Level, reason Reason, msg string, attrs ...any) {
	c.refused.add(reason)
	if !c.log.Enabled(context.Background(), level) {
		return
	}
	if ok, suppressed := c.logLimit.allow(reason, c.clock()); ok {
		c.log.Log(context.Background(), level, msg, append(attrs, "reason", reason.String(), "suppressed", suppressed)...)
	}
}

// Refusals returns how many reports the core refused or dropped since it
// started, by reason: metric-ready, every reason present, no identifiers.
func (c *Core) Refusals() map[Reason]uint64 {
	out := make(map[Reason]uint64, numReasons-1)
	for r := Reason(1); r < numReasons; r++ {
		out[r] = c.refused[r].Load()
	}
	return out
}
