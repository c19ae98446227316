package xmppside

import (
	"sync"
	"time"
)

// maxLimiterKeys bounds the keys one limiter remembers. A key it forgot
// (the one used least recently) starts again with a full bucket, which is
// what it would have after a while anyway; the per-domain budget bounds how
// fast new addresses can come.
const maxLimiterKeys = 1 << 14

// buckets is a set of token buckets, one per key (an address or a
// domain), remembering at most max keys. A key it does not remember has a
// full bucket. Not safe for concurrent use: see [budget].
type buckets struct {
	rate Rate
	max  int
	m    map[string]*bucket
	lru  bucket // sentinel of the ring, most recently used first
}

type bucket struct {
	key        string
	tokens     float64
	at         time.Time
	prev, next *bucket
}

func newBuckets(r Rate, max int) *buckets {
	b := &buckets{rate: r, max: max, m: make(map[string]*bucket)}
	b.lru.prev, b.lru.next = &b.lru, &b.lru
	return b
}

// tokens returns the tokens key has at now.
func (b *buckets) tokens(key string, now time.Time) float64 {
	e := b.m[key]
	if e == nil {
		return float64(b.rate.Burst)
	}
	return min(float64(b.rate.Burst), e.tokens+float64(now.Sub(e.at))/float64(b.rate.Every))
}

// take spends one token of key at now (the caller checked there is one).
func (b *buckets) take(key string, now time.Time) {
	t := b.tokens(key, now) - 1
	e := b.m[key]
	if e == nil {
		if len(b.m) >= b.max {
			old := b.lru.prev
			old.unlink()
			delete(b.m, old.key)
		}
		e = &bucket{key: key}
		b.m[key] = e
	} else {
		e.unlink()
	}
	e.tokens, e.at = t, now
	e.prev, e.next = &b.lru, b.lru.next
	b.lru.next.prev = e
	b.lru.next = e
}

func (e *bucket) unlink() {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

// budget is a per-address and a per-domain rate: an event is allowed when
// both of its buckets have a token, and then spends one of each. The
// server's own domains (local) have no per-domain budget. Safe for
// concurrent use.
type budget struct {
	mu               sync.Mutex
	address, domains *buckets
	local            map[string]bool
}

func newBudget(perAddress, perDomain Rate, local []string) *budget {
	b := &budget{address: newBuckets(perAddress, maxLimiterKeys), domains: newBuckets(perDomain, maxLimiterKeys), local: make(map[string]bool)}
	for _, d := range local {
		b.local[d] = true
	}
	return b
}

// refusal says which budget refused an event.
type refusal uint8

const (
	allowed refusal = iota
	overAddress
	overDomain
)

// allow spends a token of address and of domain if both have one, and
// says which refused otherwise. The domain is checked first, so that a
// flood from many addresses of one domain makes no per-address state.
func (b *budget) allow(address, domain string, now time.Time) refusal {
	b.mu.Lock()
	defer b.mu.Unlock()
	local := b.local[domain]
	if !local && b.domains.tokens(domain, now) < 1 {
		return overDomain
	}
	if b.address.tokens(address, now) < 1 {
		return overAddress
	}
	if !local {
		b.domains.take(domain, now)
	}
	b.address.take(address, now)
	return allowed
}
