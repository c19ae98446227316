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
