package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/core"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/matrixside"
	"github.com/presence-bridge/presence-bridge/xmppside"
)

// shutdownGrace bounds the whole clean shutdown after SIGINT/SIGTERM.
const shutdownGrace = 20 * time.Second

func registrationYAML(cfg *File) ([]byte, error) {
	m := cfg.Matrix
	if m.ASToken == "" {
		m.ASToken = matrixside.NewToken()
	}
	if m.HSToken == "" {
		m.HSToken = matrixside.NewToken()
	}
	return matrixside.Registration(m, cfg.Namespace()).YAML()
}

// runBridge runs everything in one process until ctx ends: the bus
// (embedded NATS by default), the core, then both sides. On shutdown the
// sides stop first (XMPP contacts see puppets go unavailable), then the
// core, then the bus.
func runBridge(ctx context.Context, cfg *File) error {
	log := cfg.Logging.Logger()
	log.Info("starting", "version", buildVersion(), "component", cfg.XMPP.ComponentDomain, "homeserver", cfg.Matrix.HomeserverDomain, "embedded_nats", cfg.NATS.IsEmbedded())

	bus, err := bridge.Open(ctx, cfg.NATS, log.With("part", "bus"))
	if err != nil {
		return err
	}
	defer bus.Close()

	table, _ := cfg.Mapping.Table()
	busy := cfg.Mapping.Busy == "on"
	if cfg.Mapping.Busy == "auto" || cfg.Mapping.Busy == "" {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		busy, err = matrixside.DetectBusy(dctx, cfg.Matrix.HomeserverURL)
		cancel()
		if err != nil {
			log.Warn("could not ask the homeserver for busy presence support; using the fallback", "err", err)
		}
	}
	tr := mapping.NewTranslator(table, busy)
	ns := cfg.Namespace()

	c, err := core.New(cfg.Core, ns, bus, log.With("part", "core"))
	if err != nil {
		return err
	}
	xb := xmppBus{bus: bus, log: log.With("part", "xmpp-bus")}
	xs, err := xmppside.New(cfg.XMPP, ns, tr, bus.Store(), xb, log.With("part", "xmpp"))
	if err != nil {
		return err
	}
	ms, err := matrixside.New(cfg.Matrix, ns, tr, bus, log.With("part", "matrix"))
	if err != nil {
		return err
	}

	coreCtx, stopCore := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCore()
	coreDone := make(chan error, 1)
	go func() { coreDone <- c.Run(coreCtx) }()
	select {
	case <-c.Ready():
	case err := <-coreDone:
		return fmt.Errorf("core: %w", err)
	}

	sidesCtx, stopSides := context.WithCancel(ctx)
	defer stopSides()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	serveXMPP := func(ctx context.Context) error { return xb.serve(ctx, xs) }
	for name, runner := range map[string]func(context.Context) error{"xmpp": xs.Run, "xmpp commands": serveXMPP, "matrix": ms.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runner(sidesCtx); err != nil && !errors.Is(err, context.Canceled) {
				errs <- fmt.Errorf("%s side: %w", name, err)
				stopSides() // one side failing stops the bridge
			}
		}()
	}
	log.Info("bridge running")
	<-sidesCtx.Done()
	log.Info("shutting down")
	sidesDone := make(chan struct{})
	go func() { wg.Wait(); close(sidesDone) }()
	timer := time.NewTimer(shutdownGrace)
	defer timer.Stop()
	select {
	case <-sidesDone:
	case <-timer.C:
		return errors.New("shutdown took longer than " + shutdownGrace.String())
	}
	stopCore()
	if err := <-coreDone; err != nil {
		log.Error("core stopped with error", "err", err)
	}
	close(errs)
	var all []error
	for e := range errs {
		all = append(all, e)
	}
	log.Info("stopped")
	return errors.Join(all...)
}
