package xmppside

import (
	"context"
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

// ConsumerName is the durable consumer through which the component reads
// subscription commands from the core.
const ConsumerName = "xmppside-subscriptions"

// Component is the XEP-0114 component that gives every Matrix user a puppet
// JID. Create it with [New] and run it with [Component.Run].
type Component struct {
	cfg    Config
	ns     mapping.Namespace
	tr     *mapping.Translator
	bus    *bridge.Bus
	store  *bridge.Store
	log    *slog.Logger
	domain jid.JID
	now    func() time.Time

	subs     *contacts
	subMu    sync.Mutex // serializes subscription transitions: bucket write + copy
	puppets  *puppets
	users    *users
	presence *presenceWriter
	inputs   gate // bus callbacks

	sessMu   sync.Mutex
	sess     *xmpp.Session // nil while disconnected
	running  atomic.Bool
	connects atomic.Int64 // streams established, for tests and logs
	ids      atomic.Uint64
	idBase   string
}

// stableSession is how long a stream must have lasted for the reconnect
// backoff to start over.
const stableSession = 5 * time.Second

// New checks the configuration and returns a component ready to Run. The
// namespace's ComponentDomain must equal cfg.ComponentDomain. log may be nil.
func New(cfg Config, ns mapping.Namespace, tr *mapping.Translator, bus *bridge.Bus, log *slog.Logger) (*Component, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if ns.ComponentDomain != cfg.ComponentDomain {
		return nil, fmt.Errorf("%w: namespace has %q, config %q", ErrNamespace, ns.ComponentDomain, cfg.ComponentDomain)
	}
	if tr == nil || bus == nil {
		return nil, fmt.Errorf("%w: translator and bus are required", ErrConfig)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	domain, err := jid.Parse(cfg.ComponentDomain)
	if err != nil {
		return nil, fmt.Errorf("%w: component_domain: %w", ErrConfig, err)
	}
	log = log.With("component", cfg.ComponentDomain)
	c := &Component{
		cfg:     cfg,
		ns:      ns,
		tr:      tr,
		bus:     bus,
		store:   bus.Store(),
		log:     log,
		domain:  domain,
		now:     time.Now,
		subs:    newContacts(),
		puppets: newPuppets(),
		users:   newUsers(),
		idBase:  "pb" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36) + "-",
	}
	c.presence = newPresenceWriter(c.store, log)
	return c, nil
}

// Run connects to the XMPP server and serves until ctx ends, reconnecting
// with capped exponential backoff whenever the stream ends. When ctx ends it
// sends unavailable from every puppet to everyone who saw it available,
// closes the stream (bounded by Config.ShutdownTimeout) and returns nil
// after every goroutine it started has exited. It returns an error only if
// it cannot start (bus unreachable, already running).
func (c *Component) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)

	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	err := c.subs.load(lctx, c.store.Subscriptions, func(key string, err error) {
		c.log.Warn("skipping undecodable subscription key", "key", key, "err", err)
	})
	cancel()
	if err != nil {
		return fmt.Errorf("xmppside: loading subscriptions: %w", err)
	}

	// work outlives ctx by the shutdown: handlers and bus callbacks still
	// need the bucket while the component says goodbye.
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.presence.run(work) }()

	c.inputs = gate{}
	sub, err := c.bus.Subscribe(work, bridge.SubjectFilter(bridge.Out, mapping.NetworkXMPP, bridge.KindPresence), c.onPresenceOut)
	if err != nil {
		stopWork()
		wg.Wait()
		return fmt.Errorf("xmppside: %w", err)
	}
	consumeCtx, stopConsume := context.WithCancel(work)
	defer stopConsume()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			err := c.bus.Consume(consumeCtx, ConsumerName, bridge.SubjectFilter(bridge.Out, mapping.NetworkXMPP, bridge.KindSubscription), nil, c.onSubscriptionCommand)
			if consumeCtx.Err() != nil {
				return
			}
			c.log.Error("subscription command consumer stopped; restarting", "err", err)
			select {
			case <-consumeCtx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()

	var once sync.Once
	quiesce := func() {
		// Once ctx has ended, before the goodbye: no new commands.
		once.Do(func() {
			_ = sub.Unsubscribe()
			c.inputs.close()
			stopConsume()
		})
	}
	c.connectLoop(ctx, work, quiesce)
	quiesce() // also when the stream died just as ctx ended
	stopWork()
	wg.Wait()
	c.log.Info("xmpp component stopped")
	return nil
}

// connectLoop connects, serves and reconnects until ctx ends; quiesce runs
// once ctx has ended, before the clean shutdown.
func (c *Component) connectLoop(ctx, work context.Context, quiesce func()) {
	bo := backoff{min: c.cfg.ReconnectMin, max: c.cfg.ReconnectMax}
	for {
		conn, sess, err := c.connect(ctx)
		if err == nil {
			start := c.now()
			err = c.serve(ctx, work, conn, sess, quiesce)
			if ctx.Err() != nil {
				return
			}
			if c.now().Sub(start) > stableSession {
				bo.reset()
			}
		}
		if ctx.Err() != nil {
			quiesce()
			return
		}
		wait := bo.next()
		c.log.Warn("xmpp stream down; reconnecting", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			quiesce()
			return
		case <-time.After(wait):
		}
	}
}

// session returns the current session, or nil while disconnected.
func (c *Component) session() *xmpp.Session {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	return c.sess
}

func (c *Component) setSession(s *xmpp.Session) {
	c.sessMu.Lock()
	c.sess = s
	c.sessMu.Unlock()
}

// nextID returns a stanza id unique for this process.
func (c *Component) nextID() string {
	return c.idBase + strconv.FormatUint(c.ids.Add(1), 36)
}

func (c *Component) addr() string {
	return net.JoinHostPort(c.cfg.Host, strconv.Itoa(c.cfg.Port))
}
