package main

import (
	"context"
	"log/slog"
	"net"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/core"
	"github.com/presence-bridge/presence-bridge/bridge/metrics"
	"github.com/presence-bridge/presence-bridge/bridge/opsapi"
	"github.com/presence-bridge/presence-bridge/bridge/transport"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/matrixside"
	"github.com/presence-bridge/presence-bridge/xmppside"
)

// startOps runs the operations surface with the core (it lives as long
// as the core): the presence service, the updates the core publishes,
// and, if configured, metrics and health checks. It reports false if the
// group stopped before they were ready.
func startOps(g *group, c *core.Core, bus *bridge.Bus, pub *transport.Publisher, hooks *sideHooks, role Role,
	cfg *File, table mapping.Table, busy bool, log *slog.Logger) bool {
	log = log.With("part", "ops")
	var watcher bridge.PresenceWatcher = opsapi.NewUpdates(bus.Conn(), log)
	var m *metrics.Metrics
	if cfg.Metrics.Listen != "" {
		var err error
		src := metrics.Sources{NATS: bus.Conn(), Store: bus.Store(), Coalesced: c.Coalesced, Log: log}
		// The sides' health and counts where this process runs them
		// (the core role alone reports NATS and the state).
		if role.runs(RoleXMPP) {
			src.XMPP, src.XMPPConnects = &hooks.xmppHealth, hooks.streamConnects
		}
		if role.runs(RoleMatrix) {
			src.Matrix = &hooks.matrixHealth
		}
		m, err = metrics.New(src)
		if err != nil {
			g.run("metrics", func(context.Context) error { return err })
			return false
		}
		// On each side before it runs. Ghosts show XMPP users' presence,
		// puppets Matrix users'.
		hooks.onMatrix(func(ms *matrixside.Side) {
			ms.InstrumentRequests(m.ObserveHomeserverRequest)
			ms.OnDelivered(m.Delivered(mapping.NetworkXMPP))
		})
		hooks.onXMPP(func(xs *xmppside.Component) { xs.OnDelivered(m.Delivered(mapping.NetworkMatrix)) })
		watcher = m.Watcher(watcher)
	}
	c.SetWatcher(watcher)
	svc, err := opsapi.New(bus.Conn(), opsapi.Options{
		Store: bus.Store(), Namespace: cfg.Namespace(), Table: table, Busy: busy,
		Requester: pub, Resources: pub, Permitted: c.Carries, OptedOut: c.OptedOut, Version: buildVersion(), Log: log,
	})
	if err != nil {
		g.run("presence service", func(context.Context) error { return err })
		return false
	}
	g.run("presence service", svc.Run)
	if !g.await(svc.Ready()) {
		return false
	}
	if m != nil {
		up := make(chan struct{})
		g.run("metrics", func(ctx context.Context) error {
			return m.Run(ctx, cfg.Metrics.Listen, func(net.Addr) { close(up) })
		})
		return g.await(up)
	}
	return true
}
