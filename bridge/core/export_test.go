package core

import "time"

// Views of the core's insides for tests of bounded memory and budgets.

// peopleCount is the number of people the core keeps in memory.
func (c *Core) peopleCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.people)
}

// setClock makes the budgets see clock.
func (c *Core) setClock(clock func() time.Time) { c.clock = clock }

// budgetKeys is the number of keys the budgets hold.
func (c *Core) budgetKeys() int { return c.limits.size() }

// pendingWrites is the number of presence writes the persister holds.
func (c *Core) pendingWrites() int {
	c.persist.mu.Lock()
	defer c.persist.mu.Unlock()
	return len(c.persist.dirty) + len(c.persist.writing)
}
