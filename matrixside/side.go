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

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Side is the Matrix side of the bridge: an application service that
// shows XMPP users as ghosts and reports Matrix users' presence and
// memberships to the core. Create it with [New], start it with [Side.Run].
// It implements [bridge.MatrixActor].
type Side struct {
	cfg   Config
	ns    mapping.Namespace
	tr    *mapping.Translator
	store *bridge.Store
	obs   bridge.MatrixObserver
	log   *slog.Logger

	as     *appservice.AppService
	bot    *mautrix.Client
	prober *mautrix.Client // the bot too, for the health goroutine alone
	ghosts *ghosts
	out    *outbox
	rooms  *rooms
	in     *inbound
	txns   *txnLog
	state  *sideState // ghost presence shown and the sync position, in KV
	health *health
	budget *queryBudget
	txnMu  sync.Mutex // transactions are handled one at a time, in order

	transport   *gatedTransport
	counts      counters
	badTokenLog *sampledLog
	queryLog    *sampledLog
	badGhostLog *sampledLog
	botJoinLog  *sampledLog
	sampled     []*sampledLog // flushed by runHealth
	conns       atomic.Pointer[connCap]

	runCtx        atomic.Pointer[context.Context] // Run's, for the homeserver's user queries
	ephemeralSeen atomic.Bool
	pollRounds    atomic.Int64 // completed poll rounds, for tests
	running       atomic.Bool
	keepGhosts    atomic.Bool // KeepGhostsOnStop
	botJoins      chan id.RoomID
	ready         chan struct{} // closed once the listener is up

	// Test hooks.
	listener net.Listener
	workers  int
	limits   httpLimits
}

// httpLimits bounds the appservice listener's connections in time and
// size (defaultHTTPLimits; tests shorten them). Their number is bounded by
// matrix.max_connections.
type httpLimits struct {
	readHeader, read, write, idle time.Duration
	maxHeaderBytes                int
}

// defaultHTTPLimits: a peer must send its request headers within 5 s and
// its body within 60 s of connecting; a transaction may take 120 s to
// answer (it waits for the core); an idle keep-alive is closed after
// 60 s. Requests refused for a bad token close their connection at once.
var defaultHTTPLimits = httpLimits{
	readHeader:     5 * time.Second,
	read:           60 * time.Second,
	write:          120 * time.Second,
	idle:           60 * time.Second,
	maxHeaderBytes: 16 << 10,
}

var _ bridge.MatrixActor = (*Side)(nil)

const (
	// sendWorkers is how many ghost presence PUTs may be in flight at once.
	sendWorkers = 8
	// requestTimeout bounds one request to the homeserver.
	requestTimeout = 30 * time.Second
	// httpClientTimeout bounds any request, /sync's 30 s long poll included.
	httpClientTimeout = 90 * time.Second
)

// New checks the configuration and builds the side. It does no I/O. ns
// must be the namespace the rest of the bridge uses; its ghost prefix and
// homeserver domain must match cfg. store is read (links) and written
// (only its Txns bucket); obs receives everything the side observes.
func New(cfg Config, ns mapping.Namespace, tr *mapping.Translator, store *bridge.Store, obs bridge.MatrixObserver, log *slog.Logger) (*Side, error) {
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
	if store == nil {
		errs = append(errs, fmt.Errorf("%w: no store", ErrConfig))
	}
	if obs == nil {
		errs = append(errs, fmt.Errorf("%w: no observer", ErrConfig))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("side", "matrix")
	if cfg.CoalesceWindow != 0 {
		log.Warn("matrix.coalesce_window is deprecated and ignored: the core coalesces (core.coalesce_window)")
	}
	as, err := appservice.CreateFull(appservice.CreateOpts{
		Registration:     Registration(cfg, ns),
		HomeserverDomain: cfg.HomeserverDomain,
		HomeserverURL:    cfg.HomeserverURL,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	s := &Side{
		cfg: cfg, ns: ns, tr: tr, store: store, obs: obs, log: log,
		as:       as,
		rooms:    newRooms(cfg.MaxTracked),
		in:       newInbound(cfg.MaxTracked),
		txns:     newTxnLog(store.Txns, log),
		state:    newSideState(store, log),
		budget:   newQueryBudget(cfg.QueryGhostsPerHour, cfg.QueryGhostsPerDomainPerHour, time.Now()),
		botJoins: make(chan id.RoomID, 64),
		ready:    make(chan struct{}),
		workers:  sendWorkers,
		limits:   defaultHTTPLimits,
	}
	s.health = newHealth(cfg.OfflineGrace, s.probe, log, &s.counts.gated)
	s.badTokenLog = newSampledLog(log, slog.LevelWarn, "appservice requests refused: bad hs_token")
	s.queryLog = newSampledLog(log, slog.LevelWarn, "user queries for ghosts without a link refused: registration budget spent")
	s.badGhostLog = newSampledLog(log, slog.LevelWarn, "ignoring memberships of undecodable ghosts")
	s.botJoinLog = newSampledLog(log, slog.LevelWarn, "bot join queue full, invites ignored")
	s.sampled = []*sampledLog{s.badTokenLog, s.queryLog, s.badGhostLog, s.botJoinLog, s.state.log}

	// Before the first client is made: clients copy these.
	as.Log = zerologFor(log.Handler())
	as.DefaultHTTPRetries = 0 // the outbox and the transport retry, behind one gate
	// No state store: mautrix's memory store keeps every registration and
	// membership forever; the side keeps its own, bounded (see ghosts).
	as.StateStore = nil
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.MaxIdleConnsPerHost = 64
	s.transport = &gatedTransport{h: s.health, base: base, timeout: httpClientTimeout}
	as.HTTPClient = &http.Client{Transport: s.transport}

	s.bot = as.NewMautrixClient(cfg.BotMXID())
	s.prober = as.NewMautrixClient(cfg.BotMXID())
	s.ghosts = newGhosts(as, cfg.MaxTracked)
	s.out = newOutbox(s.sendPresence, s.health, cfg.MaxTracked, log)
	s.sampled = append(s.sampled, s.out.refusedLog)
	as.QueryHandler = queryHandler{s}
	return s, nil
}

// setTransport makes every request to the homeserver go through rt,
// behind the gate (a test hook; call it before Run).
func (s *Side) setTransport(rt http.RoundTripper) { s.transport.base = rt }

// probe asks the homeserver whether it answers (GET /versions).
func (s *Side) probe(ctx context.Context) error {
	_, err := s.prober.Versions(ctx)
	return err
}

// BusyFeature is the /versions unstable feature of MSC3026 busy presence.
var BusyFeature = mautrix.UnstableFeature{UnstableFlag: "org.matrix.msc3026.busy_presence"}

// DetectBusy asks the homeserver at homeserverURL whether it supports
// MSC3026 busy presence. /versions needs no token. Use the answer for
// mapping.NewTranslator.
func DetectBusy(ctx context.Context, homeserverURL string) (bool, error) {
	cli, err := mautrix.NewClient(homeserverURL, "", "")
	if err != nil {
		return false, fmt.Errorf("%w: homeserver_url: %w", ErrConfig, err)
	}
	hc := &http.Client{Timeout: requestTimeout}
	defer hc.CloseIdleConnections()
	cli.Client = hc
	versions, err := cli.Versions(ctx)
	if err != nil {
		return false, fmt.Errorf("matrixside: GET /versions: %w", err)
	}
	return versions.Supports(BusyFeature), nil
}

// Ready is closed once Run listens for the homeserver.
func (s *Side) Ready() <-chan struct{} { return s.ready }

// Run serves the appservice API and works until ctx ends; it returns only
// after everything it started has exited (the HTTP server, its handlers,
// and the workers), and after showing the ghosts offline. It returns nil
// when ctx ends and an error if the listener cannot start or fails. It may
// be called once.
func (s *Side) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
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
	s.runCtx.Store(&ctx)
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

	wg.Go(func() {
		if err := s.serveAPI(ctx, ln); err != nil {
			fail(err)
		}
	})
	s.log.Info("appservice listening", "addr", ln.Addr().String())
	close(s.ready)

	for range s.workers {
		wg.Go(func() { s.out.run(ctx) })
	}
	wg.Go(func() { s.txns.run(ctx) })
	wg.Go(func() { s.runBotJoins(ctx) })
	wg.Go(func() { s.runHealth(ctx) })
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
	wg.Wait()
	if !s.keepGhosts.Load() {
		s.ghostsOffline(context.WithoutCancel(ctx))
	}
	s.as.HTTPClient.CloseIdleConnections()
	for _, l := range s.sampled {
		l.flush(time.Now().Add(sampledLogEvery))
	}
	s.log.Info("matrix side stopped")
	return firstErr
}

// KeepGhostsOnStop makes Run leave the ghosts showing what they show
// when it ends, instead of setting them offline: for a bridge of several
// instances, where another instance takes the appservice over and goes
// on from what the ghosts show. Call it before Run.
func (s *Side) KeepGhostsOnStop() { s.keepGhosts.Store(true) }

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
				w := wireState{Presence: event.PresenceOffline, Status: online[g].Status}
				cli := s.ghosts.client(g.ghost)
				err := s.putShown(ctx, g, w, true, func() error { return putPresence(ctx, cli, presenceURL(cli), w) })
				if err != nil {
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
	s.state.flush(ctx, time.Time{}) // what the homeserver shows, for the next start
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
