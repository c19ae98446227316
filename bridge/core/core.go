package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

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
	clock  func() time.Time // of the budgets; tests stop it

	// mu guards people, and is held while a presence is handed to a side,
	// so that nobody is shown after their last link ended.
	mu     sync.Mutex
	people map[string]*person // per PresenceKey: only people with a live link
	// owned: the partitions whose users this instance owns (nil: all);
	// partitions: their count. See partition.go.
	owned      map[int]bool
	partitions int
	// linkMu serializes the core's link writes with the index above.
	linkMu sync.Mutex
	links  map[string]linkSeen // per PairKey: the revision the index reflects

	presence *coalescer[shown]
	persist  *persister
	ready    chan struct{}

	limits       *limiter // XMPP requests
	matrixLimits *limiter // Matrix invites of ghosts
	refused      refusals
	logLimit     logLimiter

	watcher atomic.Pointer[bridge.PresenceWatcher] // optional; see SetWatcher
}

var (
	_ bridge.XMPPObserver   = (*Core)(nil)
	_ bridge.MatrixObserver = (*Core)(nil)
)

// shown is one presence the core asks a side to show: the presence of
// user, a person of network net, shown by their puppet or ghost. notice
// is the offline shown once when the person opts out: it goes out
// although they opted out. at is when the presence was observed on its
// network (the report's ObservedAt), passed on to the side that shows it
// for the end-to-end metric; zero for a presence the core makes up itself
// (an opt-out's offline, a stored presence shown again).
type shown struct {
	net    mapping.Network
	user   string
	p      mapping.Presence
	notice bool
	at     time.Time
	seq    uint64 // of the report shown; 0 for one the core made up
}

// refusalLogEvery bounds the log lines about refused requests: one per
// reason per interval, with the number suppressed.
const refusalLogEvery = time.Minute

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
	c := &Core{cfg: cfg, ns: ns, store: store, xmpp: xmpp, matrix: matrix, log: log, clock: time.Now,
		people: make(map[string]*person), links: make(map[string]linkSeen), ready: make(chan struct{}),
		limits: newLimiter(cfg.Limits, ns.ComponentDomain), matrixLimits: newMatrixLimiter(cfg.Limits, ns.HomeserverDomain), logLimit: logLimiter{every: refusalLogEvery}}
	c.persist = newPersister(store, log)
	c.presence = newCoalescer(cfg.CoalesceWindow, c.show)
	return c, nil
}

// show hands one presence to the side that shows it, unless its person
// has no live link any more or opted out since. It runs after the event
// that caused it (coalescer timers, final flush), so it must not depend
// on that event's context.
func (c *Core) show(key string, s shown) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pe := c.people[key]
	if pe == nil || (pe.optOut && !s.notice) {
		return
	}
	ctx := context.Background()
	st := bridge.Stamp{ObservedAt: s.at}
	var err error
	if s.net == mapping.NetworkXMPP {
		err = c.matrix.ShowGhost(ctx, bridge.GhostPresence{Stamp: st, User: mapping.BareJID(s.user), Presence: s.p})
	} else {
		err = c.xmpp.ShowPuppet(ctx, bridge.PuppetPresence{Stamp: st, User: mapping.UserID(s.user), Presence: s.p})
	}
	if err != nil {
		c.log.Error("handing presence to the other side failed", "network", s.net, "err", err)
		return
	}
	if s.seq != 0 && s.seq == pe.rec.Seq && c.owns(key) {
		// Shown: an instance taking this user over need not show it again.
		pe.rec.ShownSeq = s.seq
		c.persist.Put(key, pe.rec)
	}
}

// Run loads the core's state, becomes ready, and works until ctx ends; then
// it sends what the coalescer still holds, writes what the persister still
// holds, and returns after every goroutine it started has exited.
func (c *Core) Run(ctx context.Context) error {
	if err := c.loadLinks(ctx); err != nil {
		return err
	}
	persistCtx, stopPersist := context.WithCancel(context.WithoutCancel(ctx))
	persistDone := make(chan struct{})
	go func() { c.persist.Run(persistCtx); close(persistDone) }()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watchDone := make(chan struct{})
	go func() { c.watchLinks(watchCtx); close(watchDone) }()
	defer func() { <-watchDone }()
	close(c.ready)
	c.log.Info("core running", "coalesce_window", c.cfg.CoalesceWindow, "policy", c.cfg.Policy, "invite_local_only", c.cfg.InviteLocalOnly)
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
	c.mu.Lock()
	defer c.mu.Unlock()
	pe := c.people[key]
	return pe != nil && pe.optOut
}

// XMPPPresence handles an XMPP user's presence.
func (c *Core) XMPPPresence(_ context.Context, r bridge.XMPPPresence) error {
	if !c.xmppUser(r.User) {
		c.refused.add(ReasonAccess)
		c.dropped(mapping.NetworkXMPP, r.User.Domain() == c.ns.ComponentDomain)
		return nil
	}
	c.onPresence(mapping.NetworkXMPP, string(r.User), r.Stamp, r.Presence)
	return nil
}

// MatrixPresence handles a Matrix user's presence.
func (c *Core) MatrixPresence(_ context.Context, r bridge.MatrixPresence) error {
	if !c.matrixUser(r.User) {
		c.refused.add(ReasonAccess)
		_, err := c.ns.ParseGhostMXID(r.User)
		c.dropped(mapping.NetworkMatrix, err == nil)
		return nil
	}
	c.onPresence(mapping.NetworkMatrix, string(r.User), r.Stamp, r.Presence)
	return nil
}

// onPresence keeps and shows the presence of a person who holds a live
// link, in order, unless they opted out; anyone else's is dropped and
// forgotten: nothing is stored or shown for a person without consent.
func (c *Core) onPresence(net mapping.Network, user string, st bridge.Stamp, p mapping.Presence) {
	key := bridge.PresenceKey(net, user)
	c.mu.Lock()
	pe := c.people[key]
	if pe == nil {
		c.mu.Unlock()
		c.refused.add(ReasonNoLink)
		c.drop(net, bridge.DropNoConsent)
		return
	}
	if st.Seq != 0 && st.Seq <= pe.lastSeq {
		c.mu.Unlock()
		c.log.Debug("stale presence dropped", "network", net, "seq", st.Seq)
		c.drop(net, bridge.DropStale)
		return
	}
	pe.lastSeq = st.Seq
	optOut := pe.optOut
	// Under c.mu: a record put after the person was forgotten would
	// outlive them.
	rec := bridge.PresenceRecord{Presence: p, Seq: st.Seq, UpdatedAt: st.ObservedAt}
	if optOut {
		rec.ShownSeq = st.Seq // not to be shown, now or by a later owner
	}
	pe.rec = rec
	c.persist.Put(key, rec)
	c.mu.Unlock()
	c.watch(net, user, rec, optOut)
	if optOut {
		return
	}
	c.presence.Offer(key, shown{net: net, user: user, p: p, at: st.ObservedAt, seq: st.Seq})
}

// XMPPOptOut records an XMPP user's choice and makes Matrix see it.
func (c *Core) XMPPOptOut(ctx context.Context, r bridge.OptOut[mapping.BareJID]) error {
	if !c.xmppUser(r.User) {
		c.refused.add(ReasonAccess)
		return nil
	}
	return c.setOptOut(ctx, mapping.NetworkXMPP, string(r.User), r.Enabled)
}

// MatrixOptOut records a Matrix user's choice and makes XMPP see it.
func (c *Core) MatrixOptOut(ctx context.Context, r bridge.OptOut[mapping.UserID]) error {
	if !c.matrixUser(r.User) {
		c.refused.add(ReasonAccess)
		return nil
	}
	return c.setOptOut(ctx, mapping.NetworkMatrix, string(r.User), r.Enabled)
}

// setOptOut records a person's choice, linked or not: it holds for their
// links to come. Only opt-outs are stored; opting in deletes the record.
func (c *Core) setOptOut(ctx context.Context, net mapping.Network, user string, enabled bool) error {
	key := bridge.PresenceKey(net, user)
	c.linkMu.Lock() // a first link reads the settings under it
	defer c.linkMu.Unlock()
	c.mu.Lock()
	_, linked := c.people[key]
	c.mu.Unlock()
	if enabled && !linked && net == mapping.NetworkXMPP {
		// A record for someone the bridge does not carry yet: within the
		// budgets of XMPP requests, as any server may forge addresses.
		jid := mapping.BareJID(user)
		if reason, ok := c.limits.allow(user, jid.Domain(), c.clock()); !ok {
			c.refuse(slog.LevelWarn, reason, "opt-out over budget not recorded", "xmpp_domain", jid.Domain())
			return nil
		}
	}
	var err error
	if enabled {
		_, err = c.store.Settings.Put(ctx, key, bridge.UserSettings{OptOut: true, UpdatedAt: now()})
	} else {
		err = c.store.Settings.Delete(ctx, key)
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	pe := c.people[key]
	if pe != nil {
		pe.optOut = enabled
	}
	c.mu.Unlock()
	c.watchOptOut(ctx, net, user, key, enabled)
	if pe == nil {
		c.log.Debug("presence export changed", "network", net, "opted_out", enabled, "linked", false)
		return nil // nothing shown: the choice waits for their first link
	}
	c.log.Info("presence export changed", "network", net, "opted_out", enabled, "linked", true)
	s := shown{net: net, user: user, p: mapping.Presence{State: mapping.StateOffline}, notice: true}
	if !enabled {
		rec, ok := c.latest(ctx, key)
		if !ok {
			return nil // nothing known yet: the next change will flow
		}
		s = shown{net: net, user: user, p: rec.Presence}
	}
	c.presence.Offer(key, s)
	return nil
}

// latest returns the newest presence record of a user: one not yet written
// by the persister, else the stored one.
func (c *Core) latest(ctx context.Context, key string) (bridge.PresenceRecord, bool) {
	if rec, ok, deleted := c.persist.pending(key); ok || deleted {
		return rec, ok
	}
	rec, _, err := c.store.Presence.Get(ctx, key)
	return rec, err == nil
}
