package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Core joins the two sides. Create it with [New] and start it with [Core.Run].
type Core struct {
	cfg Config
	ns  mapping.Namespace
	bus *bridge.Bus
	log *slog.Logger

	mu      sync.Mutex
	lastSeq map[string]uint64 // per PresenceKey: newest sequence seen

	presence *coalescer[*bridge.Event]
	persist  *persister
	ready    chan struct{}

	settingsMu sync.RWMutex
	optOut     map[string]bool // per PresenceKey, mirrored from the settings bucket
}

// New checks cfg and returns a core that is not yet running.
func New(cfg Config, ns mapping.Namespace, bus *bridge.Bus, log *slog.Logger) (*Core, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("core: config: %w", err)
	}
	if err := ns.Validate(); err != nil {
		return nil, fmt.Errorf("core: namespace: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Core{cfg: cfg, ns: ns, bus: bus, log: log, lastSeq: make(map[string]uint64), ready: make(chan struct{}), optOut: make(map[string]bool)}
	c.persist = newPersister(bus.Store(), log)
	return c, nil
}

// Run processes events until ctx ends, then flushes pending presence and
// returns after every goroutine it started has exited.
func (c *Core) Run(ctx context.Context) error {
	c.presence = newCoalescer(c.cfg.CoalesceWindow, func(_ string, ev *bridge.Event) {
		// Publishing must outlive ctx for the final flush.
		if err := c.bus.Publish(context.WithoutCancel(ctx), bridge.Out, ev); err != nil {
			c.log.Error("publish presence failed", "user", ev.User, "err", err)
		}
	})
	// Opt-outs are read on every event: mirror them in memory.
	if err := c.bus.Store().Settings.Watch(ctx, func(key string, s bridge.UserSettings, deleted bool) {
		c.settingsMu.Lock()
		if deleted || !s.OptOut {
			delete(c.optOut, key)
		} else {
			c.optOut[key] = true
		}
		c.settingsMu.Unlock()
	}); err != nil {
		return err
	}
	persistCtx, stopPersist := context.WithCancel(context.WithoutCancel(ctx))
	persistDone := make(chan struct{})
	go func() { c.persist.Run(persistCtx); close(persistDone) }()
	defer func() { stopPersist(); <-persistDone }()
	sub, err := c.bus.Subscribe(ctx, bridge.SubjectFilter(bridge.In, mapping.NetworkUnknown, bridge.KindPresence), c.onPresence)
	if err != nil {
		return err
	}
	if err := c.bus.Conn().Flush(); err != nil {
		return fmt.Errorf("core: subscribe: %w", err)
	}
	close(c.ready)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	consume := func(name string, net mapping.Network, kind bridge.Kind, h bridge.DurableHandler) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.bus.Consume(ctx, name, bridge.SubjectFilter(bridge.In, net, kind), h); err != nil {
				errs <- err
			}
		}()
	}
	consume("core-xmpp-subscriptions", mapping.NetworkXMPP, bridge.KindSubscription, c.onSubscription)
	consume("core-matrix-membership", mapping.NetworkMatrix, bridge.KindMembership, c.onMembership)
	consume("core-optout", mapping.NetworkUnknown, bridge.KindOptOut, c.onOptOut)
	c.log.Info("core running", "coalesce_window", c.cfg.CoalesceWindow, "policy", c.cfg.Policy)
	<-ctx.Done()
	_ = sub.Drain()
	wg.Wait()
	c.presence.Flush()
	close(errs)
	var all []error
	for e := range errs {
		all = append(all, e)
	}
	return errors.Join(all...)
}

// Ready is closed once the core receives presence events; events published
// before that are not seen (presence is state: the next change repairs it).
func (c *Core) Ready() <-chan struct{} { return c.ready }

// bridged reports whether user on net is a real person the bridge may
// carry: not one of its own puppets or ghosts (loop prevention), and
// allowed by the access lists.
func (c *Core) bridged(net mapping.Network, user string) bool {
	switch net {
	case mapping.NetworkXMPP:
		_, domain, err := mapping.ParseBareJID(user)
		if err != nil || domain == c.ns.ComponentDomain {
			return false
		}
		return listed(c.cfg.AllowXMPPDomains, c.cfg.DenyXMPPDomains, domain)
	case mapping.NetworkMatrix:
		_, server, err := mapping.ParseMXID(user)
		if err != nil {
			return false
		}
		if _, err := c.ns.ParseGhostMXID(mapping.UserID(user)); err == nil {
			return false
		}
		return listed(c.cfg.AllowMatrixServers, c.cfg.DenyMatrixServers, server)
	}
	return false
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

func (c *Core) optedOut(net mapping.Network, user string) bool {
	c.settingsMu.RLock()
	defer c.settingsMu.RUnlock()
	return c.optOut[bridge.PresenceKey(net, user)]
}

// onPresence handles a presence a side observed.
func (c *Core) onPresence(ctx context.Context, ev *bridge.Event) {
	if !c.bridged(ev.Origin, ev.User) {
		c.log.Debug("presence not bridged", "network", ev.Origin, "user", ev.User)
		return
	}
	key := bridge.PresenceKey(ev.Origin, ev.User)
	c.mu.Lock()
	if ev.Seq <= c.lastSeq[key] {
		c.mu.Unlock()
		c.log.Debug("stale presence dropped", "network", ev.Origin, "user", ev.User, "seq", ev.Seq)
		return
	}
	c.lastSeq[key] = ev.Seq
	c.mu.Unlock()
	c.persist.Put(key, ev.Origin, ev.User, bridge.PresenceRecord{Presence: *ev.Presence, OriginState: ev.OriginState, Seq: ev.Seq, UpdatedAt: ev.ObservedAt})
	if c.optedOut(ev.Origin, ev.User) {
		return
	}
	c.presence.Offer(key, c.presenceOut(ev.Origin, ev.User, *ev.Presence))
}

func (c *Core) presenceOut(net mapping.Network, user string, p mapping.Presence) *bridge.Event {
	return &bridge.Event{Kind: bridge.KindPresence, Origin: net, User: user, Presence: &p, OriginState: p.State}
}

// onOptOut records a person's choice and makes the other side see it.
func (c *Core) onOptOut(ctx context.Context, ev *bridge.Event) error {
	key := bridge.PresenceKey(ev.Origin, ev.User)
	if _, err := c.bus.Store().Settings.Update(ctx, key, func(s bridge.UserSettings, _ bool) (bridge.UserSettings, bool, error) {
		s.OptOut, s.UpdatedAt = ev.OptOut.Enabled, time.Now().UTC()
		return s, true, nil
	}); err != nil {
		return err
	}
	c.settingsMu.Lock()
	if ev.OptOut.Enabled {
		c.optOut[key] = true
	} else {
		delete(c.optOut, key)
	}
	c.settingsMu.Unlock()
	c.log.Info("presence export changed", "network", ev.Origin, "opted_out", ev.OptOut.Enabled)
	p := mapping.Presence{State: mapping.StateOffline}
	if !ev.OptOut.Enabled {
		rec, ok := c.latest(ctx, ev.Origin, ev.User)
		if !ok {
			return nil // nothing known yet: the next change will flow
		}
		p = rec.Presence
	}
	c.presence.Offer(key, c.presenceOut(ev.Origin, ev.User, p))
	return nil
}

// latest returns the newest presence record of a user: one not yet written
// by the persister, else the stored one.
func (c *Core) latest(ctx context.Context, net mapping.Network, user string) (bridge.PresenceRecord, bool) {
	key := bridge.PresenceKey(net, user)
	c.persist.mu.Lock()
	d, ok := c.persist.dirty[key]
	c.persist.mu.Unlock()
	if ok {
		return d.rec, true
	}
	rec, _, err := c.bus.Store().Presence.Get(ctx, key)
	return rec, err == nil
}

func domainOf(jid string) string {
	_, d, _ := strings.Cut(jid, "@")
	return d
}
