package matrixside

import (
	"fmt"
	"testing"
	"time"
)

// TestQueryBudgetDomainsBounded: the per-domain registration budgets are
// bounded; the total budget holds whatever the number of domains.
func TestQueryBudgetDomainsBounded(t *testing.T) {
	now := time.Now()
	q := newQueryBudget(100, 1, now)
	granted := 0
	for i := range 3 * queryBudgetDomains {
		if q.take(fmt.Sprintf("d%d.example", i), now) {
			granted++
		}
	}
	if n := q.domains.len(); n > queryBudgetDomains {
		t.Errorf("%d domain budgets kept, bound %d", n, queryBudgetDomains)
	}
	if granted != 100 {
		t.Errorf("%d registrations granted across %d domains, want the total budget 100", granted, 3*queryBudgetDomains)
	}
	// An hour later the budget is full again.
	if !q.take("d0.example", now.Add(time.Hour)) {
		t.Error("budget not refilled after an hour")
	}
}
