package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Config is the "metrics" section of config.yaml.
type Config struct {
	// Listen is host:port of the HTTP listener; "" (the default) turns
	// metrics and health checks off. Keep it on loopback or a private
	// network: the endpoints have no authentication.
	Listen string `yaml:"listen"`
}

// Default returns the defaults documented in config.yaml.
func Default() Config { return Config{} }

// Validate reports every problem, each prefixed with its key.
func (c Config) Validate() error {
	if c.Listen == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %v", err)
	}
	return nil
}

// Sources are where the numbers come from. Only NATS and Store are
// required.
type Sources struct {
	NATS  *nats.Conn
	Store *bridge.Store
	// XMPP and Matrix say whether each side's network is reachable.
	XMPP, Matrix bridge.Health
	// XMPPConnects counts the streams established since start.
	XMPPConnects func() int64
	// Coalesced counts presences coalesced away by the core.
	Coalesced func() int64
	Log       *slog.Logger
}

// stateEvery is how often the buckets are read for the state gauges.
const stateEvery = 15 * time.Second

// Metrics collects the bridge's metrics. Make one with [New], install
// [Metrics.Watcher] as the core's watcher and run [Metrics.Run].
type Metrics struct {
	src Sources
	log *slog.Logger
	reg *prometheus.Registry

	events  *prometheus.CounterVec
	dropped *prometheus.CounterVec
	e2e     *prometheus.HistogramVec
	hsReqs  *prometheus.CounterVec
	hsTime  *prometheus.HistogramVec

	stateMu   sync.Mutex
	stateAt   time.Time
	subStates map[string]float64
	linkState map[string]float64
}

// New registers every metric.
func New(src Sources) (*Metrics, error) {
	if src.NATS == nil || src.Store == nil {
		return nil, errors.New("metrics: NATS and the store are required")
	}
	log := src.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{src: src, log: log, reg: prometheus.NewRegistry()}
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presence_bridge_events_total",
		Help: "Events on the bus: direction in (a side's report) or out (a command to a side), the side's network, the kind."},
		[]string{"direction", "network", "kind"})
	m.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presence_bridge_dropped_total",
		Help: "Presences the core did not pass on, by reason (opt_out, access_list, stale, loop)."}, []string{"reason"})
	m.e2e = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "presence_bridge_end_to_end_seconds",
		Help:    "From a presence observed on one network to its delivery on the other (XMPP stanzas written, Matrix PUT answered 2xx), by the network it came from.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"from"})
	m.hsReqs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presence_bridge_homeserver_requests_total",
		Help: "Requests to the homeserver by outcome: ok, rate_limited (429), error (other error status), unreachable (no answer, 502-504)."}, []string{"outcome"})
	m.hsTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "presence_bridge_homeserver_request_seconds",
		Help:    "Time of the requests to the homeserver, by outcome.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"outcome"})
	for _, o := range []string{"ok", "rate_limited", "error", "unreachable"} {
		m.hsReqs.WithLabelValues(o)
	}
	for _, r := range []bridge.DropReason{bridge.DropNoConsent, bridge.DropOptOut, bridge.DropAccessList, bridge.DropStale, bridge.DropLoop} {
		m.dropped.WithLabelValues(string(r))
	}
	for _, n := range []string{"xmpp", "matrix"} {
		m.e2e.WithLabelValues(n)
	}
	for _, d := range []string{"in", "out"} {
		for _, n := range []string{"xmpp", "matrix"} {
			m.events.WithLabelValues(d, n, string(bridge.KindPresence))
		}
	}
	m.reg.MustRegister(m.events, m.dropped, m.e2e, m.hsReqs, m.hsTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "presence_bridge_nats_connected", Help: "1 while the bridge's NATS connection is up."},
		func() float64 { return b2f(src.NATS.IsConnected()) }))
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "presence_bridge_nats_reconnects_total", Help: "Reconnections of the bridge's NATS connection."},
		func() float64 { return float64(src.NATS.Stats().Reconnects) }))
	if src.XMPP != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "presence_bridge_xmpp_stream_up", Help: "1 while the component has a stream to the XMPP server."},
			func() float64 { return b2f(src.XMPP.Healthy() == nil) }))
	}
	if src.XMPPConnects != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "presence_bridge_xmpp_stream_connects_total", Help: "Streams established to the XMPP server (reconnects are this minus one)."},
			func() float64 { return float64(src.XMPPConnects()) }))
	}
	if src.Matrix != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "presence_bridge_homeserver_up", Help: "1 while the homeserver answers."},
			func() float64 { return b2f(src.Matrix.Healthy() == nil) }))
	}
	if src.Coalesced != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "presence_bridge_coalesced_total", Help: "Presences replaced by a newer one within the coalescing window, never sent."},
			func() float64 { return float64(src.Coalesced()) }))
	}
	m.reg.MustRegister(&funcCollector{m: m})
	return m, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var (
	descSubs  = prometheus.NewDesc("presence_bridge_subscriptions", "RFC 6121 subscriptions between puppets and XMPP contacts, by state (none, to, from, both; pending_in, pending_out counted apart).", []string{"state"}, nil)
	descLinks = prometheus.NewDesc("presence_bridge_links", "Links between Matrix and XMPP users, by state (asked, approved, denied, revoked).", []string{"state"}, nil)
)

// funcCollector reports the metrics read from the sources at scrape time.
type funcCollector struct{ m *Metrics }

func (f *funcCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSubs
	ch <- descLinks
}

func (f *funcCollector) Collect(ch chan<- prometheus.Metric) {
	subs, links := f.m.states()
	for s, n := range subs {
		ch <- prometheus.MustNewConstMetric(descSubs, prometheus.GaugeValue, n, s)
	}
	for s, n := range links {
		ch <- prometheus.MustNewConstMetric(descLinks, prometheus.GaugeValue, n, s)
	}
}

// states counts subscriptions and links by state, reading the buckets
// at most every stateEvery.
func (m *Metrics) states() (subs, links map[string]float64) {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	if m.subStates != nil && time.Since(m.stateAt) < stateEvery {
		return m.subStates, m.linkState
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	subs = map[string]float64{"none": 0, "to": 0, "from": 0, "both": 0, "pending_in": 0, "pending_out": 0}
	err := m.src.Store.Subscriptions.Range(ctx, func(_ string, s bridge.Subscription) error {
		st := "none"
		switch {
		case s.To && s.From:
			st = "both"
		case s.To:
			st = "to"
		case s.From:
			st = "from"
		}
		subs[st]++
		if s.PendingIn {
			subs["pending_in"]++
		}
		if s.PendingOut {
			subs["pending_out"]++
		}
		return nil
	})
	links = map[string]float64{string(bridge.LinkAsked): 0, string(bridge.LinkApproved): 0, string(bridge.LinkDenied): 0, string(bridge.LinkRevoked): 0}
	err2 := m.src.Store.Links.Range(ctx, func(_ string, l bridge.Link) error {
		links[string(l.State)]++
		return nil
	})
	if err := errors.Join(err, err2); err != nil {
		m.log.Warn("reading the state for metrics failed", "err", err)
	}
	m.subStates, m.linkState, m.stateAt = subs, links, time.Now()
	return subs, links
}

// ObserveHomeserverRequest counts one request to the homeserver (the
// Matrix side's InstrumentRequests hook).
func (m *Metrics) ObserveHomeserverRequest(outcome string, took time.Duration) {
	m.hsReqs.WithLabelValues(outcome).Inc()
	m.hsTime.WithLabelValues(outcome).Observe(took.Seconds())
}

// Delivered returns the hook a side calls when it delivered a presence
// observed on the network from ([bridge.DeliveryReporter]: the Matrix
// side's deliveries come from XMPP, the XMPP side's from Matrix): it
// observes the time since observedAt in the end-to-end histogram. A zero
// observedAt is ignored.
func (m *Metrics) Delivered(from mapping.Network) func(observedAt time.Time) {
	h := m.e2e.WithLabelValues(from.String())
	return func(observedAt time.Time) {
		if !observedAt.IsZero() {
			h.Observe(time.Since(observedAt).Seconds())
		}
	}
}

// Invalidate makes the next scrape read the buckets again (tests).
func (m *Metrics) Invalidate() {
	m.stateMu.Lock()
	m.subStates = nil
	m.stateMu.Unlock()
}

// watcher counts the core's opt-outs and drops and passes every change on
// to next.
type watcher struct {
	m    *Metrics
	next bridge.PresenceWatcher
}

var (
	_ bridge.PresenceWatcher     = watcher{}
	_ bridge.PresenceDropWatcher = watcher{}
)

// Watcher returns the core's watcher: it counts drops and passes every
// change on to next (the updates publisher; nil for none).
func (m *Metrics) Watcher(next bridge.PresenceWatcher) bridge.PresenceWatcher {
	return watcher{m: m, next: next}
}

func (w watcher) PresenceChanged(net mapping.Network, user string, rec bridge.PresenceRecord, optedOut bool) {
	// Seq 0: the opt-out itself (the core announces it), not a presence.
	if optedOut && rec.Seq != 0 {
		w.m.dropped.WithLabelValues(string(bridge.DropOptOut)).Inc()
	}
	if w.next != nil {
		w.next.PresenceChanged(net, user, rec, optedOut)
	}
}

func (w watcher) PresenceDropped(_ mapping.Network, reason bridge.DropReason) {
	w.m.dropped.WithLabelValues(string(reason)).Inc()
}

// observe counts one bus message: pb.v1.<dir>.<network>.<kind>.<user>.
func (m *Metrics) observe(msg *nats.Msg) {
	tok := strings.SplitN(msg.Subject, ".", 6)
	if len(tok) != 6 || (tok[2] != "in" && tok[2] != "out") {
		return
	}
	m.events.WithLabelValues(tok[2], tok[3], tok[4]).Inc()
}

// Ready checks NATS and both sides; the error names each that is down.
func (m *Metrics) Ready() error {
	var errs []error
	if !m.src.NATS.IsConnected() {
		errs = append(errs, fmt.Errorf("nats: not connected (%s)", m.src.NATS.Status()))
	}
	if m.src.XMPP != nil {
		if err := m.src.XMPP.Healthy(); err != nil {
			errs = append(errs, fmt.Errorf("xmpp: %w", err))
		}
	}
	if m.src.Matrix != nil {
		if err := m.src.Matrix.Healthy(); err != nil {
			errs = append(errs, fmt.Errorf("homeserver: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Handler serves /metrics, /healthz and /readyz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := m.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready:\n%s\n", err)
			return
		}
		_, _ = w.Write([]byte("ready: nats, xmpp, homeserver\n"))
	})
	return mux
}

// Run counts the bus's events and serves HTTP on listen until ctx ends.
// ready, if not nil, is called once both are in place.
func (m *Metrics) Run(ctx context.Context, listen string, ready func(net.Addr)) error {
	sub, err := m.src.NATS.Subscribe("pb.v1.*.*.*.*", m.observe)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, 64<<20)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("metrics: listen: %w", err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	if err := m.src.NATS.Flush(); err != nil {
		m.log.Warn("metrics subscription not confirmed", "err", err)
	}
	m.log.Info("metrics and health checks listening", "addr", ln.Addr().String())
	if ready != nil {
		ready(ln.Addr())
	}
	select {
	case <-ctx.Done():
	case err := <-done:
		return fmt.Errorf("metrics: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	<-done
	return nil
}
