package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/core"
	"github.com/presence-bridge/presence-bridge/bridge/transport"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/matrixfed"
	"github.com/presence-bridge/presence-bridge/matrixside"
	"github.com/presence-bridge/presence-bridge/xmppside"
)

// shutdownGrace bounds the whole clean shutdown after SIGINT/SIGTERM.
const shutdownGrace = 20 * time.Second

func registrationYAML(cfg *File) ([]byte, error) {
	// Fresh tokens where the config has none.
	reg, err := matrixside.Registration(cfg.Matrix.Config, cfg.Namespace()).YAML()
	return []byte(reg), err
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
	if cfg.Matrix.IsFederation() {
		busy = false // no busy presence over federation
	} else if cfg.Mapping.Busy == "auto" || cfg.Mapping.Busy == "" {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		busy, err = matrixside.DetectBusy(dctx, cfg.Matrix.HomeserverURL)
		cancel()
		if err != nil {
			log.Warn("could not ask the homeserver for busy presence support; using the fallback", "err", err)
		}
	}
	tr := mapping.NewTranslator(table, busy)
	ns := cfg.Namespace()

	// The core and the sides meet on the bus: each reports through a
	// publisher and is served its part by a transport server.
	pub := transport.NewPublisher(bus)
	c, err := core.New(cfg.Core, ns, bus.Store(), pub, pub, log.With("part", "core"))
	if err != nil {
		return err
	}
	xs, err := xmppside.New(cfg.XMPP, ns, tr, bus.Store(), pub, log.With("part", "xmpp"))
	if err != nil {
		return err
	}
	ms, err := newMatrixSide(cfg, ns, tr, bus.Store(), pub, log.With("part", "matrix"))
	if err != nil {
		return err
	}

	// The core runs until the sides have stopped, so that what they say
	// on their way out is still handled.
	coreCtx, stopCore := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCore()
	coreParts := newGroup(coreCtx, stopCore)
	coreParts.run("core", c.Run)
	if !coreParts.await(c.Ready()) {
		return coreParts.wait()
	}
	if !startOps(coreParts, c, bus, pub, xs, ms, cfg, table, busy, log) {
		return coreParts.wait()
	}
	coreSrv := transport.ServeCore(bus, c, c, log.With("part", "transport"))
	coreParts.run("core transport", coreSrv.Run)
	if !coreParts.await(coreSrv.Ready()) {
		return coreParts.wait()
	}

	sidesCtx, stopSides := context.WithCancel(ctx)
	defer stopSides()
	sides := newGroup(sidesCtx, stopSides)
	sides.run("xmpp side", xs.Run)
	sides.run("xmpp transport", transport.ServeXMPP(bus, xs, log.With("part", "transport")).Run)
	sides.run("matrix side", ms.Run)
	sides.run("matrix transport", transport.ServeMatrix(bus, ms, log.With("part", "transport")).Run)
	sides.run("xmpp requests", transport.ServeRequests(bus, mapping.NetworkXMPP, xs, log.With("part", "transport")).Run)
	sides.run("xmpp resources", transport.ServeResources(bus, xs, log.With("part", "transport")).Run)
	sides.run("matrix requests", transport.ServeRequests(bus, mapping.NetworkMatrix, ms, log.With("part", "transport")).Run)
	log.Info("bridge running")
	<-sidesCtx.Done()
	log.Info("shutting down")
	sidesErr := sides.waitWarn(log, shutdownGrace)
	stopCore()
	coreErr := coreParts.wait()
	log.Info("stopped")
	return errors.Join(sidesErr, coreErr)
}

// matrixSide is what the wiring needs of the Matrix side, in either
// mode: the appservice (matrixside.Side) or the federation gateway
// (matrixfed.Gateway).
type matrixSide interface {
	bridge.MatrixActor
	bridge.PresenceRequester
	bridge.Health
	Run(ctx context.Context) error
}

// newMatrixSide builds the Matrix side of matrix.mode.
func newMatrixSide(cfg *File, ns mapping.Namespace, tr *mapping.Translator, store *bridge.Store, obs bridge.MatrixObserver, log *slog.Logger) (matrixSide, error) {
	if cfg.Matrix.IsFederation() {
		matrixfed.Version = buildVersion()
		return matrixfed.New(cfg.Matrix.Federation, ns, tr, store, obs, log)
	}
	return matrixside.New(cfg.Matrix.Config, ns, tr, store, obs, log)
}

// group runs parts of the bridge; one failing stops the group.
type group struct {
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func newGroup(ctx context.Context, stop context.CancelFunc) *group {
	return &group{ctx: ctx, stop: stop}
}

func (g *group) run(name string, f func(context.Context) error) {
	g.wg.Go(func() {
		if err := f(g.ctx); err != nil && !errors.Is(err, context.Canceled) {
			g.mu.Lock()
			g.errs = append(g.errs, fmt.Errorf("%s: %w", name, err))
			g.mu.Unlock()
			g.stop()
		}
	})
}

// await waits for ready, or reports false if the group stopped first.
func (g *group) await(ready <-chan struct{}) bool {
	select {
	case <-ready:
		return true
	case <-g.ctx.Done():
		return false
	}
}

// wait returns once every part has returned.
func (g *group) wait() error {
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return errors.Join(g.errs...)
}

// waitWarn is wait, logging an error every grace period that it takes
// longer: parts bound their own shutdown, and a second signal ends the
// process (see main), so nothing is abandoned while it still runs.
func (g *group) waitWarn(log *slog.Logger, grace time.Duration) error {
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	t := time.NewTicker(grace)
	defer t.Stop()
	for {
		select {
		case <-done:
			return g.wait()
		case <-t.C:
			log.Error("shutdown is taking longer than expected; send the signal again to stop at once", "waited", grace)
		}
	}
}
