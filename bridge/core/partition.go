package core

import (
	"context"
	"errors"
	"fmt"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Several core instances share the users out by partition (see
// bridge.PartitionOwner and package bridge/transport): an instance is told
// only of the users of the partitions it holds, and writes only their
// presence records. What it keeps of them in memory (the newest sequence,
// the opt-out, the coalescer's pending value, the record not yet
// written) is rebuilt from KV when it takes a partition and dropped when
// it loses one. The index of links (who may be carried at all) is kept
// for everyone by every instance: a link joins two users who may live in
// different partitions, so each instance follows the links bucket with a
// KV watch, besides its own writes; both are applied by revision, so the
// index follows the bucket whichever comes first.

var _ bridge.PartitionOwner = (*Core)(nil)

// owns reports whether this instance writes the state of the user of a
// PresenceKey: one of its partitions, or every user before the transport
// told it of any partition (one instance, or tests without transport).
// c.mu is held.
func (c *Core) owns(key string) bool {
	return c.owned == nil || c.owned[bridge.PartitionOfKey(c.partitions, key)]
}

// AcquirePartition rebuilds, from KV, what the core keeps in memory of the
// users of p: their opt-outs and newest sequences, and the revisions of
// their presence records, written from then on with compare-and-set (a
// previous owner that still writes loses); a presence recorded but never
// shown (the previous instance died before it could) is shown now.
func (c *Core) AcquirePartition(ctx context.Context, p bridge.Partition) error {
	select {
	case <-c.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	c.linkMu.Lock()
	defer c.linkMu.Unlock()
	opted := map[string]bool{}
	if err := c.store.Settings.Range(ctx, func(key string, s bridge.UserSettings) error {
		if p.HoldsKey(key) && s.OptOut {
			opted[key] = true
		}
		return nil
	}); err != nil {
		return fmt.Errorf("core: partition %v: reading opt-outs: %w", p, err)
	}
	keys, err := c.store.Presence.Keys(ctx)
	if err != nil {
		return fmt.Errorf("core: partition %v: listing presence: %w", p, err)
	}
	records := map[string]bridge.PresenceRecord{}
	revs := map[string]uint64{}
	for _, key := range keys {
		if !p.HoldsKey(key) {
			continue
		}
		c.mu.Lock()
		_, linked := c.people[key]
		c.mu.Unlock()
		if !linked {
			continue
		}
		rec, rev, err := c.store.Presence.Get(ctx, key)
		if errors.Is(err, bridge.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("core: partition %v: reading presence: %w", p, err)
		}
		records[key], revs[key] = rec, rev
	}
	var unshown []shown
	c.mu.Lock()
	if c.owned == nil {
		c.owned = map[int]bool{}
	}
	c.partitions = p.Count
	c.owned[p.Index] = true
	for key, pe := range c.people {
		if !p.HoldsKey(key) {
			continue
		}
		rec := records[key]
		pe.optOut, pe.lastSeq, pe.rec = opted[key], rec.Seq, rec
		// From now on this instance writes their record, with
		// compare-and-set from the revision it read (0: none).
		c.persist.Own(key, revs[key])
		if rec.Seq > rec.ShownSeq && !pe.optOut {
			net, user, err := bridge.ParsePresenceKey(key)
			if err == nil {
				unshown = append(unshown, shown{net: net, user: user, p: rec.Presence, seq: rec.Seq})
			}
		}
	}
	c.mu.Unlock()
	for _, s := range unshown {
		c.presence.Offer(bridge.PresenceKey(s.net, s.user), s)
	}
	c.log.Debug("core partition rebuilt", "partition", p.String(), "presence_records", len(records), "shown_again", len(unshown))
	return nil
}

// ReleasePartition stops the core's work for the users of p. handOver:
// what the coalescer holds for them is sent now and everything recorded;
// else it is dropped unsent and unwritten (another instance owns them).
func (c *Core) ReleasePartition(ctx context.Context, p bridge.Partition, handOver bool) {
	var keys []string
	c.mu.Lock()
	for key := range c.people {
		if p.HoldsKey(key) {
			keys = append(keys, key)
		}
	}
	c.mu.Unlock()
	if handOver {
		c.presence.FlushKeys(keys)
	} else {
		for _, key := range keys {
			c.presence.Forget(key)
		}
	}
	c.mu.Lock()
	delete(c.owned, p.Index)
	c.mu.Unlock()
	if handOver {
		if err := c.persist.Sync(ctx); err != nil {
			c.log.Warn("recording presence before handing a partition over failed; the next owner shows it again", "partition", p.String(), "err", err)
		}
		return
	}
	c.persist.Drop(p.HoldsKey)
}

// Sync returns once every presence handled so far is recorded in KV.
func (c *Core) Sync(ctx context.Context) error { return c.persist.Sync(ctx) }

// linkSeen is the newest revision of a link the index reflects.
type linkSeen struct {
	state bridge.LinkState // "" once deleted
	rev   uint64
}

// applyLink moves the index to revision rev of the link at key, unless it
// already reflects that revision or a newer one. linkMu is held.
func (c *Core) applyLink(key string, p pair, state bridge.LinkState, rev uint64, optOut [2]bool) (added [2]bool) {
	seen := c.links[key]
	if rev != 0 && seen.rev >= rev {
		return added
	}
	if !live(state) && !ended(state) {
		state = ""
	}
	added = c.index(p, seen.state, state, optOut)
	if state == "" && rev == 0 {
		delete(c.links, key)
		return added
	}
	c.links[key] = linkSeen{state: state, rev: rev}
	return added
}

// watchLinks follows the links other instances write, until ctx ends.
func (c *Core) watchLinks(ctx context.Context) {
	err := c.store.Links.Watch(ctx, func(key string, l bridge.Link, rev uint64, deleted bool) {
		var p pair
		if deleted {
			mxid, jid, err := bridge.ParsePairKey(key)
			if err != nil {
				return
			}
			p = pair{mxid: mapping.UserID(mxid), jid: mapping.BareJID(jid)}
		} else {
			p = pair{l.MatrixUser, l.XMPPUser}
			if p.key() != key {
				return
			}
		}
		c.linkMu.Lock()
		defer c.linkMu.Unlock()
		var optOut [2]bool
		if !deleted && live(l.State) {
			optOut, _ = c.settingsOfNew(ctx, p)
		}
		c.applyLink(key, p, l.State, rev, optOut)
	})
	if err != nil && !errors.Is(err, bridge.ErrWatchUnsupported) && ctx.Err() == nil {
		c.log.Error("following the links of other core instances failed", "err", err)
	}
}
