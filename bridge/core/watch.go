package core

import (
	"context"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// SetWatcher installs w, told of every presence the core records (the
// operations service publishes them). Call it before Run; nil removes it.
func (c *Core) SetWatcher(w bridge.PresenceWatcher) {
	if w == nil {
		c.watcher.Store(nil)
		return
	}
	c.watcher.Store(&w)
}

// watch tells the watcher, if any, of a recorded presence.
func (c *Core) watch(net mapping.Network, user string, rec bridge.PresenceRecord, optedOut bool) {
	if w := c.watcher.Load(); w != nil {
		(*w).PresenceChanged(net, user, rec, optedOut)
	}
}

// Carries reports whether the core bridges the presence of user of net:
// not one of the bridge's own puppets or ghosts, and allowed by the
// access lists. For the operations service's PermissionDenied.
func (c *Core) Carries(net mapping.Network, user string) bool {
	switch net {
	case mapping.NetworkXMPP:
		jid, err := mapping.NewBareJID(user)
		return err == nil && c.xmppUser(jid)
	case mapping.NetworkMatrix:
		mxid, err := mapping.NewUserID(user)
		return err == nil && c.matrixUser(mxid)
	}
	return false
}

// Coalesced counts the presences replaced by a newer one within a
// coalescing window, never sent.
func (c *Core) Coalesced() int64 { return c.presence.replaced.Load() }

// dropped tells the watcher of a presence not bridged: loop if it came
// from the bridge's own puppet or ghost, else the access lists.
func (c *Core) dropped(net mapping.Network, loop bool) {
	if loop {
		c.drop(net, bridge.DropLoop)
		return
	}
	c.drop(net, bridge.DropAccessList)
}

func (c *Core) drop(net mapping.Network, reason bridge.DropReason) {
	if w := c.watcher.Load(); w != nil {
		if d, ok := (*w).(bridge.PresenceDropWatcher); ok {
			d.PresenceDropped(net, reason)
		}
	}
}

// OptedOut reports whether a person stopped the export of their presence,
// from the core's exact copy of the settings bucket.
func (c *Core) OptedOut(net mapping.Network, user string) bool {
	return c.optedOut(bridge.PresenceKey(net, user))
}

// watchOptOut tells the watcher of a changed opt-out: an opted-out
// update at once, or the latest presence when the export resumes.
func (c *Core) watchOptOut(ctx context.Context, net mapping.Network, user, key string, enabled bool) {
	if c.watcher.Load() == nil {
		return
	}
	if enabled {
		c.watch(net, user, bridge.PresenceRecord{UpdatedAt: now()}, true)
		return
	}
	if rec, ok := c.latest(ctx, key); ok {
		c.watch(net, user, rec, false)
	}
}
