package matrixside

import (
	"sync"
	"time"
)

// tokenBucket allows a burst of size events, refilled at size per hour.
// size 0 allows nothing.
type tokenBucket struct {
	size   float64
	tokens float64
	at     time.Time
}

func newTokenBucket(size int, now time.Time) *tokenBucket {
	return &tokenBucket{size: float64(size), tokens: float64(size), at: now}
}

func (b *tokenBucket) refill(now time.Time) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(b.size, b.tokens+b.size*d.Hours())
		b.at = now
	}
}

// queryBudgetDomains bounds the per-domain buckets remembered. A domain
// forgotten starts again with a full bucket: the total bucket is the
// bound that holds whatever the number of domains.
const queryBudgetDomains = 4096

// queryBudget is the budget of ghosts registered for user queries about
// ghosts without a link: a bucket per XMPP domain and one for all.
type queryBudget struct {
	perDomain int

	mu      sync.Mutex
	total   *tokenBucket
	domains *lru[string, *tokenBucket]
}

func newQueryBudget(total, perDomain int, now time.Time) *queryBudget {
	return &queryBudget{perDomain: perDomain, total: newTokenBucket(total, now), domains: newLRU[string, *tokenBucket](queryBudgetDomains, nil)}
}

// take spends one registration for domain if both buckets allow it.
func (q *queryBudget) take(domain string, now time.Time) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	d, ok := q.domains.get(domain)
	if !ok {
		d = newTokenBucket(q.perDomain, now)
		q.domains.put(domain, d)
	}
	q.total.refill(now)
	d.refill(now)
	if q.total.tokens < 1 || d.tokens < 1 {
		return false
	}
	q.total.tokens--
	d.tokens--
	return true
}
