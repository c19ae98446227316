package main

import (
	"context"
	"log/slog"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/core"
	"github.com/presence-bridge/presence-bridge/bridge/opsapi"
	"github.com/presence-bridge/presence-bridge/bridge/transport"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// startOps runs the presence service with the core (it lives as long as
// the core) and makes the core publish its updates. It reports false if
// the group stopped before the service was ready.
func startOps(g *group, c *core.Core, bus *bridge.Bus, pub *transport.Publisher, cfg *File, table mapping.Table, busy bool, log *slog.Logger) bool {
	c.SetWatcher(opsapi.NewUpdates(bus.Conn(), log.With("part", "ops")))
	svc, err := opsapi.New(bus.Conn(), opsapi.Options{
		Store: bus.Store(), Namespace: cfg.Namespace(), Table: table, Busy: busy,
		Requester: pub, Permitted: c.Carries, Version: buildVersion(), Log: log.With("part", "ops"),
	})
	if err != nil {
		g.run("presence service", func(context.Context) error { return err })
		return false
	}
	g.run("presence service", svc.Run)
	return g.await(svc.Ready())
}
