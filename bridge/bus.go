package bridge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ControlStream is the JetStream stream that keeps durable events.
const ControlStream = "PB_CONTROL"

// DeadLetterStream keeps the control events that durable consumers gave
// up on (see [Config.MaxDeliver]), on [DeadLetterSubject]s
// (pb.dead.<consumer>.v1.…), for as long as control events are kept.
// Each message is the event as it was, with headers saying where it came
// from and why it failed; to replay one, publish its body on the subject
// in its DeadLetterHeaderSubject header.
const DeadLetterStream = "PB_DEAD"

// The headers of a dead letter.
const (
	DeadLetterHeaderSubject    = "Pb-Subject"    // the event's original subject
	DeadLetterHeaderConsumer   = "Pb-Consumer"   // the durable consumer that gave up
	DeadLetterHeaderDeliveries = "Pb-Deliveries" // how many times it was tried
	DeadLetterHeaderError      = "Pb-Error"      // the last error
)

// deadLetterRoot is outside subjectRoot: the control stream's subjects
// must not overlap the dead-letter stream's.
const deadLetterRoot = "pb.dead"

// DeadLetterSubject is the subject a control event on subject is moved to
// when consumer gives up on it.
func DeadLetterSubject(consumer, subject string) string {
	return deadLetterRoot + "." + consumer + "." + strings.TrimPrefix(subject, "pb.")
}

// Handler receives events from [Bus.Subscribe]. It is called from one
// goroutine per subscription, in order; it must not block for long.
type Handler func(ctx context.Context, ev *Event)

// DurableHandler receives events from [Bus.Consume]. Returning nil
// acknowledges the event; [ErrDrop] (or an error wrapping it) drops it for
// good; any other error redelivers it later, with exponential back-off.
type DurableHandler func(ctx context.Context, ev *Event) error

// ErrDrop tells [Bus.Consume] that an event can never be handled.
var ErrDrop = errors.New("bridge: drop event")

// Redelivery back-off of a failed durable event: retryBase doubled per
// failed delivery, capped at retryCap.
const (
	retryBase = time.Second
	retryCap  = 5 * time.Minute
)

// retryDelay is the wait before delivery number n+1 of an event that
// failed n times, with back-off from base.
func retryDelay(n uint64, base time.Duration) time.Duration {
	d := base
	for i := uint64(1); i < n && d < retryCap; i++ {
		d *= 2
	}
	return min(d, retryCap)
}

// retrySpan is how long an event that always fails is retried before its
// delivery number n.
func retrySpan(n int, base time.Duration) time.Duration {
	var span time.Duration
	for i := 1; i < n; i++ {
		span += retryDelay(uint64(i), base)
	}
	return span
}

// Bus is the connection to NATS, embedded or external, and everything above
// it. It is safe for concurrent use.
type Bus struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	srv   *server.Server // nil when external
	store *Store
	log   *slog.Logger
	seq   Sequencer

	closed    chan struct{} // closed by nats once the connection is closed
	closeOnce sync.Once

	maxDeliver int
	retryBase  time.Duration // the first back-off step; tests shorten it

	republishing atomic.Int64 // reports being published again (see republish)

	replicas       int
	partitions     int  // of InStream
	wantPartitions int  // cfg.Partitions: checked by ServePartitions
	unpartitioned  bool // InStream has no transform (nats-server < 2.10)
}

// Open connects to NATS (starting the embedded server if cfg has no URLs),
// and creates the control stream and buckets if they are missing.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Bus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bridge: nats config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Bus{log: log, closed: make(chan struct{}), maxDeliver: cfg.MaxDeliver, retryBase: retryBase, replicas: cfg.Replicas, wantPartitions: cfg.Partitions}
	opts := []nats.Option{
		nats.Name("presence-bridge"),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(b.closed) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Error("nats async error", "subject", subj, "err", err)
		}),
	}
	url := ""
	if cfg.IsEmbedded() {
		srv, token, err := startEmbedded(cfg.Embedded)
		if err != nil {
			return nil, err
		}
		b.srv = srv
		opts = append(opts, nats.InProcessServer(srv))
		if token != "" {
			opts = append(opts, nats.Token(token))
		}
		log.Info("embedded nats started", "data_dir", cfg.Embedded.DataDir, "listen", cfg.Embedded.Listen)
	} else {
		url = strings.Join(cfg.URLs, ",")
		opts = append(opts, cfg.ClusterAuth()...)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.shutdownServer()
		return nil, fmt.Errorf("bridge: connect to nats: %w", err)
	}
	b.nc = nc
	if b.js, err = jetstream.New(nc,
		jetstream.WithPublishAsyncErrHandler(b.republish),
		jetstream.WithPublishAsyncTimeout(reportAckTimeout)); err != nil {
		b.Close()
		return nil, fmt.Errorf("bridge: jetstream: %w", err)
	}
	if err := b.setUp(ctx, cfg); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// setupPatience is how long Open waits for an external cluster's
// JetStream to create the stream and buckets: a cluster that is still
// electing its leaders, or busy with other instances starting at the
// same moment, times requests out for a while.
const setupPatience = 2 * time.Minute

// setUp creates the streams and buckets, retrying on an external cluster
// while it is not ready (see retrySetup).
func (b *Bus) setUp(ctx context.Context, cfg Config) error {
	return b.retrySetup(ctx, !cfg.IsEmbedded(), func(ctx context.Context) error {
		if err := b.ensureStream(ctx, cfg); err != nil {
			return err
		}
		var err error
		b.store, err = openStore(ctx, b.js, cfg.Replicas)
		return err
	})
}

// retrySetup calls f until it succeeds, for up to setupPatience on an
// external cluster (retry), once otherwise.
func (b *Bus) retrySetup(ctx context.Context, retry bool, f func(context.Context) error) error {
	deadline := time.Now().Add(setupPatience)
	for attempt := 1; ; attempt++ {
		err := f(ctx)
		if err == nil || !retry || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		b.log.Warn("nats cluster not ready for the bridge's streams and buckets; retrying", "attempt", attempt, "err", err)
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// TokenFile is the file in the embedded server's data dir that holds the
// token other processes must present when the server listens.
const TokenFile = "client.token"

// listenToken returns the token of the embedded server's listener, made
// on first use and kept in the data dir (readable by the bridge's user
// only), so that the nats CLI and tests can read it and nobody else who
// reaches the port can rewrite the bridge's state or inject events.
func listenToken(dataDir string) (string, error) {
	path := filepath.Join(dataDir, TokenFile)
	if data, err := os.ReadFile(path); err == nil {
		if tok := strings.TrimSpace(string(data)); tok != "" {
			return tok, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("bridge: nats token: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("bridge: nats token: %w", err)
	}
	tok := NewID() + NewID()
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("bridge: nats token: %w", err)
	}
	return tok, nil
}

func startEmbedded(cfg EmbeddedConfig) (*server.Server, string, error) {
	opts := &server.Options{
		ServerName: "presence-bridge",
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
		NoLog:      true,
		DontListen: cfg.Listen == "",
	}
	token := ""
	if cfg.Listen != "" {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, "", fmt.Errorf("bridge: nats.embedded.listen: %w", err)
		}
		opts.Host = host
		if opts.Port, err = strconv.Atoi(port); err != nil {
			return nil, "", fmt.Errorf("bridge: nats.embedded.listen: %w", err)
		}
		if opts.Port == 0 {
			opts.Port = server.RANDOM_PORT
		}
		if token, err = listenToken(cfg.DataDir); err != nil {
			return nil, "", err
		}
		opts.Authorization = token
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, "", fmt.Errorf("bridge: embedded nats: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, "", fmt.Errorf("bridge: embedded nats did not start (data dir %s)", cfg.DataDir)
	}
	return srv, token, nil
}

func (b *Bus) ensureStream(ctx context.Context, cfg Config) error {
	// Only the commands (out): the reports (in) go to InStream, which
	// a previous version's control stream also held.
	var subjects []string
	for _, k := range []Kind{KindSubscription, KindMembership, KindOptOut} {
		subjects = append(subjects, subjectRoot+"."+string(Out)+".*."+string(k)+".*")
	}
	_, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:      ControlStream,
		Subjects:  subjects,
		Storage:   jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy,
		MaxAge:    cfg.ControlMaxAge,
		Replicas:  cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("bridge: create stream %s: %w", ControlStream, err)
	}
	_, err = b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:      DeadLetterStream,
		Subjects:  []string{deadLetterRoot + ".>"},
		Storage:   jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy,
		MaxAge:    cfg.ControlMaxAge,
		Replicas:  cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("bridge: create stream %s: %w", DeadLetterStream, err)
	}
	return b.ensureInStream(ctx, cfg)
}

// Store returns the state buckets.
func (b *Bus) Store() *Store { return b.store }

// Conn returns the underlying NATS connection.
func (b *Bus) Conn() *nats.Conn { return b.nc }

// Publish completes ev (version, id, sequence, and for a report the time)
// and publishes it in direction dir: In on ev.Origin's subject, Out on the
// other network's. A command (Out) keeps a zero ObservedAt: it carries the
// time the presence it shows was observed, and one the core made up
// itself has none. Durable kinds wait for the stream's acknowledgement.
func (b *Bus) Publish(ctx context.Context, dir Direction, ev *Event) error {
	if ev.V == 0 {
		ev.V = SchemaVersion
	}
	if ev.ID == "" {
		ev.ID = NewID()
	}
	if ev.Seq == 0 {
		ev.Seq = b.seq.Next()
	}
	if ev.ObservedAt.IsZero() && dir == In {
		ev.ObservedAt = time.Now().UTC()
	}
	data, err := EncodeEvent(ev)
	if err != nil {
		return err
	}
	net := ev.Origin
	if dir == Out {
		net = ev.Origin.Other()
	}
	subj := Subject(dir, net, ev.Kind, ev.User)
	if ev.Kind.Durable() {
		if _, err := b.js.Publish(ctx, subj, data, jetstream.WithMsgID(ev.ID)); err != nil {
			return fmt.Errorf("bridge: publish %s: %w", subj, err)
		}
		return nil
	}
	if dir == In {
		// A report goes to the core's stream (InStream). Published
		// without waiting, so that a side is not slowed by a round trip
		// per report; one the stream did not acknowledge (its leader was
		// being elected, a node died) is published again by republish.
		if _, err := b.js.PublishAsync(subj, data, jetstream.WithMsgID(ev.ID)); err != nil {
			return fmt.Errorf("bridge: publish %s: %w", subj, err)
		}
		return nil
	}
	if err := b.nc.Publish(subj, data); err != nil {
		return fmt.Errorf("bridge: publish %s: %w", subj, err)
	}
	return nil
}

// reportAckTimeout is how long a report waits for the stream's
// acknowledgement before it is published again.
const reportAckTimeout = 5 * time.Second

// maxRepublishing bounds the reports being published again at once (a
// long outage): beyond it they are dropped, with a warning; presence is
// state, and the person's next change repairs it.
const maxRepublishing = 4096

// republish publishes again, until the stream acknowledges it or the bus
// closes, a report the stream did not acknowledge. It keeps its message
// id, so that the stream drops a copy of one that was stored after all;
// the core drops one that arrives after a newer report of the same person
// (by Seq).
func (b *Bus) republish(_ jetstream.JetStream, msg *nats.Msg, cause error) {
	if n := b.republishing.Add(1); n > maxRepublishing {
		b.republishing.Add(-1)
		b.log.Warn("report not acknowledged and too many being published again; dropped", "subject", msg.Subject, "err", cause)
		return
	}
	go func() {
		defer b.republishing.Add(-1)
		wait := 100 * time.Millisecond
		for {
			select {
			case <-b.closed:
				return
			case <-time.After(wait):
			}
			ctx, cancel := context.WithTimeout(context.Background(), reportAckTimeout)
			_, err := b.js.PublishMsg(ctx, msg)
			cancel()
			if err == nil || errors.Is(err, nats.ErrConnectionClosed) {
				return
			}
			wait = min(2*wait, 2*time.Second)
		}
	}()
}

// Subscribe delivers events on subjects matching filter (see
// [SubjectFilter]) to h until the subscription is drained or the bus
// closed. Malformed messages are logged and dropped.
func (b *Bus) Subscribe(ctx context.Context, filter string, h Handler) (*nats.Subscription, error) {
	sub, err := b.nc.Subscribe(filter, func(m *nats.Msg) {
		ev, err := DecodeEvent(m.Data)
		if err != nil {
			b.log.Warn("dropping malformed bus message", "subject", m.Subject, "err", err)
			return
		}
		h(ctx, ev)
	})
	if err != nil {
		return nil, fmt.Errorf("bridge: subscribe %s: %w", filter, err)
	}
	return sub, nil
}

// Consume reads durable events matching filter through the durable consumer
// name, which resumes where it stopped after a restart. It calls ready (if
// not nil) once it consumes, and blocks until ctx ends and the consumer
// has stopped. Malformed events are logged and terminated; a handler error
// redelivers the event with exponential back-off, up to the dead-letter
// limit (nats.max_deliver), after which the event is moved to
// [DeadLetterStream] and logged at ERROR. The log says when the consumer
// starts failing and when it recovers, not every retry.
func (b *Bus) Consume(ctx context.Context, name, filter string, ready func(), h DurableHandler) error {
	var cons jetstream.Consumer
	// On a cluster that is electing leaders (a node restarting) the
	// request times out for a while: wait for it rather than fail.
	err := b.retrySetup(ctx, b.srv == nil, func(ctx context.Context) error {
		var err error
		cons, err = b.js.CreateOrUpdateConsumer(ctx, ControlStream, jetstream.ConsumerConfig{
			Durable:       name,
			FilterSubject: filter,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       30 * time.Second,
			// The bus counts deliveries and dead-letters itself, so that
			// an event it gives up on is kept and said.
			MaxDeliver: -1,
			BackOff:    nil,
		})
		return err
	})
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bridge: consumer %s: %w", name, err)
	}
	b.awaitConsumerLeader(ctx, cons)
	health := &consumerHealth{name: name, log: b.log}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := DecodeEvent(m.Data())
		if err != nil {
			b.log.Warn("dropping malformed control event", "subject", m.Subject(), "err", err)
			_ = m.Term()
			return
		}
		b.settle(ctx, name, m.Subject(), m, ev, h(ctx, ev), health)
	}, jetstream.PullExpiry(pullExpiry))
	if err != nil {
		return fmt.Errorf("bridge: consume %s: %w", name, err)
	}
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	cc.Drain()
	<-cc.Closed()
	return nil
}

// pullExpiry bounds one pull request of a durable consumer. In a cluster a
// pull can be lost (the consumer had no leader yet, or its leader died);
// the client notices by the missing heartbeats (half of this) and pulls
// again: a short expiry keeps such a stall to seconds (nats.go's default,
// 30 s, would hold a subscription request that long).
const pullExpiry = 5 * time.Second

// awaitConsumerLeader waits (up to 10 s) until a new consumer of a
// replicated stream has elected its leader: a pull sent before that goes
// unanswered until it expires.
func (b *Bus) awaitConsumerLeader(ctx context.Context, cons jetstream.Consumer) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := cons.Info(ctx)
		if err == nil && (info.Cluster == nil || info.Cluster.Leader != "") {
			return
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// consumerHealth logs the state changes of a durable consumer: the first
// failure after a success, and the first success after failures, so that
// a dependency that is down costs two lines, not one per event per retry.
type consumerHealth struct {
	name string
	log  *slog.Logger

	mu       sync.Mutex
	failing  bool
	since    time.Time
	failures int
}

func (c *consumerHealth) failed(subject, id string, n uint64, delay time.Duration, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures++
	if c.failing {
		c.log.Debug("control event failed again", "consumer", c.name, "id", id, "deliveries", n, "retry_in", delay, "err", err)
		return
	}
	c.failing, c.since = true, time.Now()
	c.log.Warn("durable consumer failing; retrying with back-off", "consumer", c.name, "subject", subject, "id", id, "deliveries", n, "retry_in", delay, "err", err)
}

func (c *consumerHealth) succeeded() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.failing {
		return
	}
	c.log.Info("durable consumer recovered", "consumer", c.name, "failing_for", time.Since(c.since).Round(time.Millisecond), "failed_deliveries", c.failures)
	c.failing, c.failures = false, 0
}

// deadLetter moves an event that failed n times to the dead-letter
// stream and terminates it. If even that fails, the ERROR line carries
// the event itself, so that it can still be replayed.
func (b *Bus) deadLetter(ctx context.Context, consumer, subject string, m jetstream.Msg, ev *Event, n uint64, cause error) {
	subj := DeadLetterSubject(consumer, subject)
	dl := nats.NewMsg(subj)
	dl.Data = m.Data()
	dl.Header.Set(DeadLetterHeaderSubject, subject)
	dl.Header.Set(DeadLetterHeaderConsumer, consumer)
	dl.Header.Set(DeadLetterHeaderDeliveries, strconv.FormatUint(n, 10))
	dl.Header.Set(DeadLetterHeaderError, cause.Error())
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	attrs := []any{"consumer", consumer, "subject", subject, "id", ev.ID, "deliveries", n, "err", cause}
	if ack, err := b.js.PublishMsg(pctx, dl, jetstream.WithMsgID(ev.ID+".dead")); err != nil {
		b.log.Error("control event given up; the dead-letter stream refused it, replay it from this line", append(attrs, "dead_letter_err", err, "event", string(m.Data()))...)
	} else {
		b.log.Error("control event given up and moved to the dead-letter stream", append(attrs, "dead_letter_stream", DeadLetterStream, "dead_letter_seq", ack.Sequence, "dead_letter_subject", subj)...)
	}
	_ = m.Term()
}

// Close drains the connection and stops the embedded server. It is safe to
// call more than once.
func (b *Bus) Close() error {
	var err error
	b.closeOnce.Do(func() {
		if b.nc != nil {
			// Reports still waiting for their acknowledgement.
			if b.js != nil {
				select {
				case <-b.js.PublishAsyncComplete():
				case <-time.After(reportAckTimeout):
				}
			}
			if e := b.nc.Drain(); e != nil && !errors.Is(e, nats.ErrConnectionClosed) {
				err = e
			}
			select {
			case <-b.closed:
			case <-time.After(5 * time.Second):
			}
			b.nc.Close()
		}
		b.shutdownServer()
	})
	return err
}

func (b *Bus) shutdownServer() {
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
}
