package xmppside

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Component is the XEP-0114 component that gives every Matrix user a puppet
// JID. Create it with [New] and run it with [Component.Run]; the core drives
// it through the [bridge.XMPPActor] methods and hears from it through the
// [bridge.XMPPObserver] given to New.
type Component struct {
	cfg    Config
	ns     mapping.Namespace
	tr     *mapping.Translator
	store  *bridge.Store
	obs    bridge.XMPPObserver
	log    *slog.Logger
	plog   *slog.Logger // for what peers can make it log: bounded rate
	domain jid.JID
	now    func() time.Time

	subs    *contacts // derived from the subscriptions bucket; see subscription.go
	pairs   *pairLocks
	puppets *puppets         // the last presence each puppet was asked to show
	users   *users           // XMPP users' resources and what was reported
	out     *outbox          // puppets whose presence must be fanned out
	owed    *owedUnavailable // contacts owed an unavailable; see directed.go
	link    chan bool

	subscribeBudget *budget // subscription requests that reach the core
	commandBudget   *budget // chat commands run and answered
	refused         refusals

	sessMu   sync.Mutex
	sess     *xmpp.Session  // nil while disconnected
	sessGen  uint64         // counts sessions, so the sender knows when to announce
	sessUsed sync.WaitGroup // writers holding sess; see acquireSession
	running  atomic.Bool
	connects atomic.Int64 // streams established, for logs and tests
	ids      atomic.Uint64
	idBase   string
}

var _ bridge.XMPPActor = (*Component)(nil)

// stableSession is how long a stream must have lasted for the reconnect
// backoff to start over.
const stableSession = 5 * time.Second

// storeTimeout bounds one bucket operation.
const storeTimeout = 5 * time.Second

// reportTimeout bounds one report to the observer, so that a stuck core
// cannot stall the stream handler forever; a report that times out fails
// like any other.
const reportTimeout = 10 * time.Second

// New checks the configuration and returns a component ready to Run. The
// namespace's ComponentDomain must equal cfg.ComponentDomain. store holds the
// subscriptions bucket, which the component alone writes, and the core's
// presence bucket, which it reads. log may be nil.
func New(cfg Config, ns mapping.Namespace, tr *mapping.Translator, store *bridge.Store, obs bridge.XMPPObserver, log *slog.Logger) (*Component, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if ns.ComponentDomain != cfg.ComponentDomain {
		return nil, fmt.Errorf("%w: namespace has %q, config %q", ErrNamespace, ns.ComponentDomain, cfg.ComponentDomain)
	}
	if tr == nil || store == nil || obs == nil {
		return nil, fmt.Errorf("%w: translator, store and observer are required", ErrConfig)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	domain, err := jid.Parse(cfg.ComponentDomain)
	if err != nil {
		return nil, fmt.Errorf("%w: component_domain: %w", ErrConfig, err)
	}
	log = log.With("component", cfg.ComponentDomain)
	lim := cfg.Limits
	return &Component{
		cfg:             cfg,
		ns:              ns,
		tr:              tr,
		store:           store,
		obs:             obs,
		log:             log,
		plog:            newLimitedLogger(log),
		domain:          domain,
		now:             time.Now,
		subs:            newContacts(),
		pairs:           newPairLocks(),
		puppets:         newPuppets(),
		users:           newUsers(lim.TrackedUsers, lim.ResourcesPerAddress),
		out:             newOutbox(),
		owed:            newOwedUnavailable(),
		link:            make(chan bool, 1),
		subscribeBudget: newBudget(lim.SubscribePerAddress, lim.SubscribePerDomain, cfg.localDomains()),
		commandBudget:   newBudget(lim.CommandsPerAddress, lim.CommandsPerDomain, cfg.localDomains()),
		idBase:          "pb" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36) + "-",
	}, nil
}

// Run connects to the XMPP server and serves until ctx ends, reconnecting
// with capped exponential backoff whenever the stream ends. When ctx ends it
// sends unavailable from every puppet to everyone who saw it available and
// closes the stream (bounded by Config.ShutdownTimeout).
//
// It returns after every goroutine it started has exited: nil once ctx
// ended, [ErrAuthentication] when the server refused the secret
// Config.MaxAuthFailures times in a row, or an error when it cannot start
// (the subscriptions bucket is unreadable, or it is already running).
func (c *Component) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)

	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	none, err := c.subs.load(lctx, c.store.Subscriptions, func(key string, err error) {
		c.log.Warn("skipping undecodable subscription key", "key", key, "err", err)
	})
	cancel()
	if err != nil {
		return fmt.Errorf("xmppside: loading subscriptions: %w", err)
	}
	c.deleteNoneKeys(ctx, none)
	if err := c.loadOwed(ctx); err != nil && ctx.Err() == nil {
		// Still in the bucket: the next start sends them.
		c.log.Warn("reading the contacts owed an unavailable failed; starting without them", "err", err)
	}
	believed := c.loadBelieved(ctx)

	// The sender and the grace timer stop with ctx, or when the connect
	// loop gives up.
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.sendLoop(rctx) }()
	go func() { defer wg.Done(); c.graceLoop(rctx, believed) }()

	err = c.connectLoop(ctx)
	stop()
	wg.Wait()
	c.log.Info("xmpp component stopped")
	return err
}

// connectLoop connects, serves and reconnects until ctx ends (nil) or the
// server refused the secret too often (ErrAuthentication).
func (c *Component) connectLoop(ctx context.Context) error {
	bo := backoff{min: c.cfg.ReconnectMin, max: c.cfg.ReconnectMax}
	authFailures := 0
	for {
		conn, sess, err := c.connect(ctx)
		switch {
		case err == nil:
			authFailures = 0
			start := c.now()
			err = c.serve(ctx, conn, sess)
			if ctx.Err() != nil {
				return nil
			}
			if c.now().Sub(start) > stableSession {
				bo.reset()
			}
		case errors.Is(err, ErrAuthentication):
			authFailures++
			c.log.Error("xmpp component authentication failed; check xmpp.secret against the server's component_secret",
				"server", c.addr(), "err", err, "failures", authFailures, "max_auth_failures", c.cfg.MaxAuthFailures)
			if authFailures >= c.cfg.MaxAuthFailures {
				return fmt.Errorf("%w: %d refused handshakes in a row with %s", ErrAuthentication, authFailures, c.addr())
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		wait := bo.next()
		if !errors.Is(err, ErrAuthentication) {
			c.log.Warn("xmpp stream down; reconnecting", "err", err, "retry_in", wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// setSession makes s the session writers use (nil: disconnected).
func (c *Component) setSession(s *xmpp.Session) {
	c.sessMu.Lock()
	c.sess = s
	if s != nil {
		c.sessGen++
	}
	c.sessMu.Unlock()
}

// acquireSession returns the current session, its generation and a release
// func the caller must call when done writing; nil while disconnected.
// detachSession waits for every holder, so that nothing is written after
// the goodbye.
func (c *Component) acquireSession() (*xmpp.Session, uint64, func()) {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	if c.sess == nil {
		return nil, 0, func() {}
	}
	c.sessUsed.Add(1)
	return c.sess, c.sessGen, c.sessUsed.Done
}

// detachSession makes the component disconnected for writers and waits
// until every writer that held the session let go of it.
func (c *Component) detachSession() {
	c.setSession(nil)
	c.sessUsed.Wait()
}

// connected reports whether the component has a stream.
func (c *Component) connected() bool {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	return c.sess != nil
}

// nextID returns a stanza id unique for this process.
func (c *Component) nextID() string {
	return c.idBase + strconv.FormatUint(c.ids.Add(1), 36)
}

func (c *Component) addr() string {
	return net.JoinHostPort(c.cfg.Host, strconv.Itoa(c.cfg.Port))
}
