package core

import (
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
