package matrixside

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Side is the Matrix side of the bridge: an application service that
// shows XMPP users as ghosts and reports Matrix users' presence and
// memberships to the core. Create it with [New], start it with [Side.Run].
type Side struct {
	cfg Config
	ns  mapping.Namespace
	tr  *mapping.Translator
	bus *bridge.Bus
	log *slog.Logger

	c      *client
	ghosts *ghosts
	out    *outbox
	rooms  *rooms
	in     *inbound
	txns   *txnLog

	watchMu sync.Mutex
	watched map[string]struct{}

	ephemeralSeen atomic.Bool
	pollRounds    atomic.Int64 // completed poll rounds, for tests
	running       atomic.Bool
	botJoins      chan string
	ready         chan struct{} // closed once the listener is up

	// Test hooks.
	transport http.RoundTripper
	listener  net.Listener
	workers   int
}

// sendWorkers is how many ghost presence PUTs may be in flight at once.
const sendWorkers = 8

// New checks the configuration and builds the side. It does no I/O.
// ns must be the namespace the rest of the bridge uses; its ghost prefix
// and homeserver domain must match cfg.
func New(cfg Config, ns mapping.Namespace, tr *mapping.Translator, bus *bridge.Bus, log *slog.Logger) (*Side, error) {
	if bus == nil {
		return nil, fmt.Errorf("%w: no bus", ErrConfig)
	}
	return newSide(cfg, ns, tr, bus, log)
}

// newSide is New without the bus requirement, for unit tests and
// benchmarks that drive the side directly.
func newSide(cfg Config, ns mapping.Namespace, tr *mapping.Translator, bus *bridge.Bus, log *slog.Logger) (*Side, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if ns.GhostPrefix != cfg.GhostPrefix {
		errs = append(errs, fmt.Errorf("%w: ghost_prefix: %q differs from the bridge namespace's %q", ErrConfig, cfg.GhostPrefix, ns.GhostPrefix))
	}
	if ns.HomeserverDomain != cfg.HomeserverDomain {
		errs = append(errs, fmt.Errorf("%w: homeserver_domain: %q differs from the bridge namespace's %q", ErrConfig, cfg.HomeserverDomain, ns.HomeserverDomain))
	}
	if tr == nil {
		errs = append(errs, fmt.Errorf("%w: no translator", ErrConfig))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Side{
		cfg: cfg, ns: ns, tr: tr, bus: bus,
		log:      log.With("side", "matrix"),
		rooms:    newRooms(),
		in:       newInbound(),
		txns:     newTxnLog(),
		watched:  map[string]struct{}{},
		botJoins: make(chan string, 64),
		ready:    make(chan struct{}),
		workers:  sendWorkers,
	}
	s.setTransport(nil)
	return s, nil
}

// setTransport (re)builds the homeserver client on rt (nil: default).
func (s *Side) setTransport(rt http.RoundTripper) {
	s.transport = rt
	s.c = newClient(s.cfg.HomeserverURL, s.cfg.ASToken, rt)
	s.ghosts = newGhosts(s.c)
	s.out = newOutbox(s.cfg.CoalesceWindow, s.sendPresence, s.log)
}

// BusySupported reports whether ghosts are shown busy with MSC3026: what
// the translator was built with (see [DetectBusy]).
func (s *Side) BusySupported() bool { return s.tr.BusySupported() }

// Watch asks the side to report mxid's presence even when nothing else
// shows it (presence source poll or auto): the core calls it for Matrix
// users that XMPP users are subscribed to. It never blocks.
func (s *Side) Watch(mxid string) {
	s.watchMu.Lock()
	s.watched[mxid] = struct{}{}
	s.watchMu.Unlock()
}

// Unwatch undoes [Side.Watch]. Users in the links bucket stay polled.
func (s *Side) Unwatch(mxid string) {
	s.watchMu.Lock()
	delete(s.watched, mxid)
	s.watchMu.Unlock()
}

// Ready is closed once Run listens for the homeserver.
func (s *Side) Ready() <-chan struct{} { return s.ready }

// Run serves the appservice API and works until ctx ends; it returns only
// after all its goroutines have exited. It returns nil when ctx ends and
// an error if the listener cannot start or fails. It may be called once.
func (s *Side) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	if s.bus == nil {
		return fmt.Errorf("%w: no bus", ErrConfig)
	}
	ln := s.listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.Listen); err != nil {
			return fmt.Errorf("matrixside: listen %s: %w", s.cfg.Listen, err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.loadLinks(ctx)

	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
		cancel()
	}

	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fail(fmt.Errorf("matrixside: serve: %w", err))
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
	})
	s.log.Info("appservice listening", "addr", ln.Addr().String())
	close(s.ready)

	for range s.workers {
		wg.Go(func() { s.out.run(ctx) })
	}
	sub, err := s.bus.Subscribe(ctx, bridge.SubjectFilter(bridge.Out, mapping.NetworkMatrix, bridge.KindPresence), s.onPresenceOut)
	if err != nil {
		fail(err)
	}
	wg.Go(func() {
		if err := s.bus.Consume(ctx, "matrixside-membership", bridge.SubjectFilter(bridge.Out, mapping.NetworkMatrix, bridge.KindMembership), nil, s.onMembershipOut); err != nil && ctx.Err() == nil {
			fail(err)
		}
	})
	wg.Go(func() { s.runBotJoins(ctx) })
	switch s.cfg.PresenceSource {
	case SourceAuto:
		wg.Go(func() { s.runSync(ctx) })
		wg.Go(func() { s.runPoll(ctx) })
	case SourceSync:
		wg.Go(func() { s.runSync(ctx) })
	case SourcePoll:
		wg.Go(func() { s.runPoll(ctx) })
	}
	if s.cfg.GhostRefreshInterval > 0 {
		wg.Go(func() { s.runRefresh(ctx) })
	}

	<-ctx.Done()
	if sub != nil {
		_ = sub.Unsubscribe()
	}
	wg.Wait()
	s.ghostsOffline(context.WithoutCancel(ctx))
	s.log.Info("matrix side stopped")
	return firstErr
}

// shutdownOfflineTimeout bounds setting the ghosts offline on shutdown.
const shutdownOfflineTimeout = 5 * time.Second

// ghostsOffline shows every ghost that is online as offline, keeping its
// status: while the bridge is gone nobody should look present. Bounded by
// shutdownOfflineTimeout; what is not done by then is logged.
func (s *Side) ghostsOffline(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, shutdownOfflineTimeout)
	defer cancel()
	online := s.out.shownOnline()
	jobs := make(chan *ghostOut)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range min(8, len(online)) {
		wg.Go(func() {
			for g := range jobs {
				if err := s.c.setPresence(ctx, g.path, mapping.MatrixOffline.String(), online[g].Status); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	for g := range online {
		jobs <- g
	}
	close(jobs)
	wg.Wait()
	s.log.Info("ghosts set offline", "ghosts", len(online), "failed", failed.Load())
}

// runRefresh re-sends every ghost's presence once per refresh interval.
func (s *Side) runRefresh(ctx context.Context) {
	t := time.NewTicker(s.cfg.GhostRefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n := s.out.refresh(s.cfg.GhostRefreshInterval, now)
			s.log.Debug("ghost presence refresh scheduled", "ghosts", n)
		}
	}
}
