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

// runBridge runs the parts of role until ctx ends: the bus (embedded
// NATS by default), the core, then the sides. On shutdown the sides stop
// first (XMPP contacts see puppets go unavailable), then the core, then
// the bus. On an external cluster each side runs only while this
// instance holds its lease (see Role).
func runBridge(ctx context.Context, cfg *File, role Role) error {
	if err := checkRole(role, cfg); err != nil {
		return err
	}
	log := cfg.Logging.Logger()
	log.Info("starting", "version", buildVersion(), "role", role, "component", cfg.XMPP.ComponentDomain, "homeserver", cfg.Matrix.HomeserverDomain, "embedded_nats", cfg.NATS.IsEmbedded())

	bus, err := bridge.Open(ctx, cfg.NATS, log.With("part", "bus"))
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the cluster
		}
		return err
	}
	defer bus.Close()
	var leases *bridge.Leases
	if !cfg.NATS.IsEmbedded() && role != RoleCore {
		if leases, err = bus.Leases(ctx, cfg.Cluster, cfg.NATS.Replicas, holderName(role)); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}

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
	// publisher and is served its part by a transport server. A side is
	// made afresh for every term it is active (nothing it remembers in
	// memory survives a time standing by); the first is made here so that
	// a config it refuses stops the start.
	pub := transport.NewPublisher(bus)
	hooks := &sideHooks{}
	var sideWork []namedWork
	if role.runs(RoleXMPP) {
		first, err := xmppside.New(cfg.XMPP, ns, tr, bus.Store(), pub, log.With("part", "xmpp"))
		if err != nil {
			return err
		}
		next := func() (*xmppside.Component, error) {
			if xs := first; xs != nil {
				first = nil
				return xs, nil
			}
			return xmppside.New(cfg.XMPP, ns, tr, bus.Store(), pub, log.With("part", "xmpp"))
		}
		sideWork = append(sideWork, namedWork{"xmpp side", leaseRun(leases, log, leaseXMPP, func(ctx context.Context) error {
			xs, err := next()
			if err != nil {
				return err
			}
			hooks.startXMPP(xs)
			defer hooks.endXMPP(xs)
			return runParts(ctx, log,
				namedWork{"xmpp component", xs.Run},
				namedWork{"xmpp transport", transport.ServeXMPP(bus, xs, log.With("part", "transport")).Run},
				namedWork{"xmpp requests", transport.ServeRequests(bus, mapping.NetworkXMPP, xs, log.With("part", "transport")).Run},
				namedWork{"xmpp resources", transport.ServeResources(bus, xs, log.With("part", "transport")).Run},
			)
		})})
	}
	if role.runs(RoleMatrix) {
		first, err := newMatrixSide(cfg, ns, tr, bus.Store(), pub, log.With("part", "matrix"))
		if err != nil {
			return err
		}
		next := func() (matrixSide, error) {
			if ms := first; ms != nil {
				first = nil
				return ms, nil
			}
			return newMatrixSide(cfg, ns, tr, bus.Store(), pub, log.With("part", "matrix"))
		}
		sideWork = append(sideWork, namedWork{"matrix side", leaseRun(leases, log, leaseMatrix, func(ctx context.Context) error {
			ms, err := next()
			if err != nil {
				return err
			}
			if as, ok := ms.(*matrixside.Side); ok && leases != nil {
				// A standby takes over from what the ghosts show:
				// setting them offline on the way out would leave them
				// so until each person's next change.
				as.KeepGhostsOnStop()
			}
			hooks.startMatrix(ms)
			defer hooks.endMatrix()
			return runParts(ctx, log,
				namedWork{"matrix appservice", ms.Run},
				namedWork{"matrix transport", transport.ServeMatrix(bus, ms, log.With("part", "transport")).Run},
				namedWork{"matrix requests", transport.ServeRequests(bus, mapping.NetworkMatrix, ms, log.With("part", "transport")).Run},
			)
		})})
	}

	// The core runs until the sides have stopped, so that what they say
	// on their way out is still handled.
	coreCtx, stopCore := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCore()
	coreParts := newGroup(coreCtx, stopCore)
	if role.runs(RoleCore) {
		c, err := core.New(cfg.Core, ns, bus.Store(), pub, pub, log.With("part", "core"))
		if err != nil {
			return err
		}
		coreParts.run("core", c.Run)
		if !coreParts.await(c.Ready()) {
			return coreParts.wait()
		}
		if !startOps(coreParts, c, bus, pub, hooks, role, cfg, table, busy, log) {
			return coreParts.wait()
		}
		coreSrv := transport.ServeCore(bus, c, c, log.With("part", "transport"))
		coreParts.run("core transport", coreSrv.Run)
		if !coreParts.await(coreSrv.Ready()) {
			return coreParts.wait()
		}
	}

	sidesCtx, stopSides := context.WithCancel(ctx)
	defer stopSides()
	sides := newGroup(sidesCtx, stopSides)
	for _, w := range sideWork {
		sides.run(w.name, w.run)
	}
	// A core that fails stops the process too.
	go func() {
		select {
		case <-coreCtx.Done():
			stopSides()
		case <-sidesCtx.Done():
		}
	}()
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

// namedWork is one part of the bridge.
type namedWork struct {
	name string
	run  func(context.Context) error
}

// runParts runs parts together until ctx ends or one fails (which stops
// the others), and returns once all have returned.
func runParts(ctx context.Context, log *slog.Logger, parts ...namedWork) error {
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	g := newGroup(pctx, stop)
	for _, p := range parts {
		g.run(p.name, p.run)
	}
	<-pctx.Done()
	return g.waitWarn(log, shutdownGrace)
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
