package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Core joins the two sides. Create it with [New] and start it with
// [Core.Run]; it implements both observers, so the sides' reports reach
// it (directly, or through bridge/transport), and it calls both actors.
type Core struct {
	cfg    Config
	ns     mapping.Namespace
	store  *bridge.Store
	xmpp   bridge.XMPPActor
	matrix bridge.MatrixActor
	log    *slog.Logger

	mu      sync.Mutex
	lastSeq map[string]uint64 // per PresenceKey: newest sequence seen

	presence *coalescer[shown]
	persist  *persister
	ready    chan struct{}

	settingsMu sync.RWMutex
	optOut     map[string]bool // per PresenceKey; the core writes the settings bucket, so this copy is exact

	watcher atomic.Pointer[bridge.PresenceWatcher] // optional; see SetWatcher
}

var (
	_ bridge.XMPPObserver   = (*Core)(nil)
	_ bridge.MatrixObserver = (*Core)(nil)
)

// shown is one presence the core asks a side to show: the presence of
// user, a person of network net, shown by their puppet or ghost.
type shown struct {
	net  mapping.Network
	user string
	p    mapping.Presence
}

// New checks cfg and returns a core that is not yet running. store holds
// the buckets the core owns (presence, links, settings); xmpp and matrix
// are the sides it commands.
func New(cfg Config, ns mapping.Namespace, store *bridge.Store, xmpp bridge.XMPPActor, matrix bridge.MatrixActor, log *slog.Logger) (*Core, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("core: config: %w", err)
	}
	if err := ns.Validate(); err != nil {
		return nil, fmt.Errorf("core: namespace: %w", err)
	}
	if store == nil || xmpp == nil || matrix == nil {
		return nil, errors.New("core: store and both actors are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Core{cfg: cfg, ns: ns, store: store, xmpp: xmpp, matrix: matrix, log: log,
		lastSeq: make(map[string]uint64), ready: make(chan struct{}), optOut: make(map[string]bool)}
	c.persist = newPersister(store, log)
	c.presence = newCoalescer(cfg.CoalesceWindow, c.show)
	return c, nil
}

// show hands one presence to the side that shows it. It runs after the
// event that caused it (coalescer timers, final flush), so it must not
// depend on that event's context.
func (c *Core) show(_ string, s shown) {
	ctx := context.Background()
	var err error
	if s.net == mapping.NetworkXMPP {
		err = c.matrix.ShowGhost(ctx, bridge.GhostPresence{User: mapping.BareJID(s.user), Presence: s.p})
	} else {
		err = c.xmpp.ShowPuppet(ctx, bridge.PuppetPresence{User: mapping.UserID(s.user), Presence: s.p})
	}
	if err != nil {
		c.log.Error("handing presence to the other side failed", "network", s.net, "err", err)
	}
}

// Run loads the core's state, becomes ready, and works until ctx ends; then
// it sends what the coalescer still holds, writes what the persister still
// holds, and returns after every goroutine it started has exited.
func (c *Core) Run(ctx context.Context) error {
	if err := c.store.Settings.Range(ctx, func(key string, s bridge.UserSettings) error {
		if s.OptOut {
			c.optOut[key] = true
		}
		return nil
	}); err != nil {
		return fmt.Errorf("core: loading opt-outs: %w", err)
	}
	persistCtx, stopPersist := context.WithCancel(context.WithoutCancel(ctx))
	persistDone := make(chan struct{})
	go func() { c.persist.Run(persistCtx); close(persistDone) }()
	close(c.ready)
	c.log.Info("core running", "coalesce_window", c.cfg.CoalesceWindow, "policy", c.cfg.Policy)
	<-ctx.Done()
	c.presence.Flush()
	stopPersist()
	<-persistDone
	return nil
}

// Ready is closed once Run has loaded the state the core's rules need:
// reports should be delivered only after that.
func (c *Core) Ready() <-chan struct{} { return c.ready }

// xmppUser reports whether jid is a real XMPP user the bridge may carry:
// not one of its own puppets (loop prevention), and allowed by the access
// lists. Addresses were validated where they entered the bridge.
func (c *Core) xmppUser(jid mapping.BareJID) bool {
	domain := jid.Domain()
	return domain != c.ns.ComponentDomain && listed(c.cfg.AllowXMPPDomains, c.cfg.DenyXMPPDomains, domain)
}

// matrixUser is xmppUser for Matrix users: not one of the bridge's ghosts.
func (c *Core) matrixUser(mxid mapping.UserID) bool {
	if _, err := c.ns.ParseGhostMXID(mxid); err == nil {
		return false
	}
	return listed(c.cfg.AllowMatrixServers, c.cfg.DenyMatrixServers, mxid.Server())
}

func listed(allow, deny []string, domain string) bool {
	for _, d := range deny {
		if d == domain {
			return false
		}
	}
	if len(allow) == 0 {
		return true
	}
	for _, d := range allow {
		if d == domain {
			return true
		}
	}
	return false
}

func (c *Core) optedOut(key string) bool {
	c.settingsMu.RLock()
	defer c.settingsMu.RUnlock()
	return c.optOut[key]
}

// XMPPPresence handles an XMPP user's presence.
func (c *Core) XMPPPresence(_ context.Context, r bridge.XMPPPresence) error {
	if !c.xmppUser(r.User) {
		c.log.Debug("presence not bridged", "network", mapping.NetworkXMPP, "user", r.User)
		c.dropped(mapping.NetworkXMPP, r.User.Domain() == c.ns.ComponentDomain)
		return nil
	}
	c.onPresence(mapping.NetworkXMPP, string(r.User), r.Stamp, r.Presence)
	return nil
}

// MatrixPresence handles a Matrix user's presence.
func (c *Core) MatrixPresence(_ context.Context, r bridge.MatrixPresence) error {
	if !c.matrixUser(r.User) {
		c.log.Debug("presence not bridged", "network", mapping.NetworkMatrix, "user", r.User)
		_, err := c.ns.ParseGhostMXID(r.User)
		c.dropped(mapping.NetworkMatrix, err == nil)
		return nil
	}
	c.onPresence(mapping.NetworkMatrix, string(r.User), r.Stamp, r.Presence)
	return nil
}

// onPresence applies order, records, and shows the presence unless the
// person opted out.
func (c *Core) onPresence(net mapping.Network, user string, st bridge.Stamp, p mapping.Presence) {
	key := bridge.PresenceKey(net, user)
	c.mu.Lock()
	if st.Seq != 0 && st.Seq <= c.lastSeq[key] {
		c.mu.Unlock()
		c.log.Debug("stale presence dropped", "network", net, "user", user, "seq", st.Seq)
		c.drop(net, bridge.DropStale)
		return
	}
	c.lastSeq[key] = st.Seq
	c.mu.Unlock()
	rec := bridge.PresenceRecord{Presence: p, Seq: st.Seq, UpdatedAt: st.ObservedAt}
	c.persist.Put(key, rec)
	optedOut := c.optedOut(key)
	c.watch(net, user, rec, optedOut)
	if optedOut {
		return
	}
	c.presence.Offer(key, shown{net, user, p})
}

// XMPPOptOut records an XMPP user's choice and makes Matrix see it.
func (c *Core) XMPPOptOut(ctx context.Context, r bridge.OptOut[mapping.BareJID]) error {
	return c.setOptOut(ctx, mapping.NetworkXMPP, string(r.User), r.Enabled)
}

// MatrixOptOut records a Matrix user's choice and makes XMPP see it.
func (c *Core) MatrixOptOut(ctx context.Context, r bridge.OptOut[mapping.UserID]) error {
	return c.setOptOut(ctx, mapping.NetworkMatrix, string(r.User), r.Enabled)
}

func (c *Core) setOptOut(ctx context.Context, net mapping.Network, user string, enabled bool) error {
	key := bridge.PresenceKey(net, user)
	if _, err := c.store.Settings.Update(ctx, key, func(s bridge.UserSettings, _ bool) (bridge.UserSettings, bool, error) {
		s.OptOut, s.UpdatedAt = enabled, now()
		return s, true, nil
	}); err != nil {
		return err
	}
	c.settingsMu.Lock()
	if enabled {
		c.optOut[key] = true
	} else {
		delete(c.optOut, key)
	}
	c.settingsMu.Unlock()
	c.log.Info("presence export changed", "network", net, "opted_out", enabled)
	c.watchOptOut(ctx, net, user, key, enabled)
	p := mapping.Presence{State: mapping.StateOffline}
	if !enabled {
		rec, ok := c.latest(ctx, key)
		if !ok {
			return nil // nothing known yet: the next change will flow
		}
		p = rec.Presence
	}
	c.presence.Offer(key, shown{net, user, p})
	return nil
}

// latest returns the newest presence record of a user: one not yet written
// by the persister, else the stored one.
func (c *Core) latest(ctx context.Context, key string) (bridge.PresenceRecord, bool) {
	if rec, ok := c.persist.pending(key); ok {
		return rec, true
	}
	rec, _, err := c.store.Presence.Get(ctx, key)
	return rec, err == nil
}
