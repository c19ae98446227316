package matrixside

import "container/list"

// lru is a map with a bound: once it holds max entries, adding one drops
// the least recently used (onEvict, if set, is told). Every table of the
// side keyed by what a homeserver or a remote user sends is one, so that
// no input can make the side's memory grow without end. Not safe for
// concurrent use: its owner locks.
type lru[K comparable, V any] struct {
	max     int
	ll      list.List // of *lruEntry[K, V], most recently used first
	m       map[K]*list.Element
	onEvict func(K, V)
	evicted uint64
}

type lruEntry[K comparable, V any] struct {
	key K
	val V
}

func newLRU[K comparable, V any](max int, onEvict func(K, V)) *lru[K, V] {
	return &lru[K, V]{max: max, m: make(map[K]*list.Element), onEvict: onEvict}
}

// get returns the value of k and marks it used.
func (c *lru[K, V]) get(k K) (V, bool) {
	e, ok := c.m[k]
	if !ok {
		var zero V
		return zero, false
	}
	c.ll.MoveToFront(e)
	return e.Value.(*lruEntry[K, V]).val, true
}

// peek returns the value of k without marking it used.
func (c *lru[K, V]) peek(k K) (V, bool) {
	e, ok := c.m[k]
	if !ok {
		var zero V
		return zero, false
	}
	return e.Value.(*lruEntry[K, V]).val, true
}

// put sets the value of k, marks it used, and evicts the least recently
// used entry if the bound is passed.
func (c *lru[K, V]) put(k K, v V) {
	if e, ok := c.m[k]; ok {
		e.Value.(*lruEntry[K, V]).val = v
		c.ll.MoveToFront(e)
		return
	}
	c.m[k] = c.ll.PushFront(&lruEntry[K, V]{key: k, val: v})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		ent := old.Value.(*lruEntry[K, V])
		c.ll.Remove(old)
		delete(c.m, ent.key)
		c.evicted++
		if c.onEvict != nil {
			c.onEvict(ent.key, ent.val)
		}
	}
}

// remove deletes k (not counted as an eviction).
func (c *lru[K, V]) remove(k K) {
	if e, ok := c.m[k]; ok {
		c.ll.Remove(e)
		delete(c.m, k)
	}
}

func (c *lru[K, V]) len() int { return c.ll.Len() }

// each calls fn for every entry, most recently used first, without
// marking them used; fn must not change c.
func (c *lru[K, V]) each(fn func(K, V)) {
	for e := c.ll.Front(); e != nil; e = e.Next() {
		ent := e.Value.(*lruEntry[K, V])
		fn(ent.key, ent.val)
	}
}
