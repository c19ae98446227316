package matrixfed

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/exhttp"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Version is what /_matrix/federation/v1/version says.
var Version = "dev"

// Gateway is the Matrix side in federation mode: a federation participant
// under a server name of its own whose users are the ghosts of XMPP users.
// It implements bridge.MatrixActor and reports to a bridge.MatrixObserver.
type Gateway struct {
	cfg   Config
	ns    mapping.Namespace
	tr    *mapping.Translator
	store *bridge.Store
	obs   bridge.MatrixObserver
	log   *slog.Logger

	key    *federation.SigningKey
	client *federation.Client
	auth   *federation.ServerAuth
	rooms  *rooms
	out    *outbox
	limit  *originLimiter
	logs   *logLimiter

	mu       sync.Mutex
	listener net.Listener
	ready    chan struct{}
}

var (
	_ bridge.MatrixActor       = (*Gateway)(nil)
	_ bridge.Health            = (*Gateway)(nil)
	_ bridge.PresenceRequester = (*Gateway)(nil)
)

// New checks cfg and loads (or, on first start, generates) the signing
// key. It does no network I/O: Run does.
func New(cfg Config, ns mapping.Namespace, tr *mapping.Translator, store *bridge.Store, obs bridge.MatrixObserver, log *slog.Logger) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if ns.HomeserverDomain != cfg.ServerName {
		return nil, fmt.Errorf("%w: namespace server %q is not server_name %q", ErrConfig, ns.HomeserverDomain, cfg.ServerName)
	}
	if store == nil || store.Federation == nil || obs == nil || tr == nil {
		return nil, fmt.Errorf("%w: store, observer and translator are required", ErrConfig)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key, created, err := loadOrCreateKey(cfg.KeyPath())
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("federation signing key generated", "key_id", key.ID, "path", cfg.KeyPath())
	}
	g := &Gateway{cfg: cfg, ns: ns, tr: tr, store: store, obs: obs, log: log, key: key,
		rooms: newRooms(store.Federation), limit: newOriginLimiter(cfg.OriginRate, cfg.OriginBurst),
		logs: newLogLimiter(time.Minute), ready: make(chan struct{})}
	g.client = newClient(cfg, key)
	// An in-memory key cache: remote keys are fetched again after a
	// restart, which costs one request per server.
	g.auth = federation.NewServerAuth(g.client, federation.NewInMemoryCache(), func(federation.XMatrixAuth) string { return cfg.ServerName })
	g.auth.MaxBodySize = cfg.MaxRequestBytes
	g.out = newOutbox(g)
	return g, nil
}

// newClient makes the federation client. Gaps of mautrix's it fills:
// a Content-Type on PUT and POST (Dendrite answers 400 without one), and
// the loopback and private addresses its DefaultAllowIP refuses, when
// allowed by the configuration.
func newClient(cfg Config, key *federation.SigningKey) *federation.Client {
	settings := exhttp.SensibleClientSettings
	settings.GlobalTimeout = 30 * time.Second
	settings.InsecureTLS = cfg.InsecureSkipVerify
	c := federation.NewClient(cfg.ServerName, key, federation.NewInMemoryCache(), settings)
	c.UserAgent = "presence-bridge/" + Version
	if cfg.AllowPrivateAddresses {
		c.AllowIP = func(net.IP) bool { return true }
	}
	c.HTTP.Transport = jsonContentType{c.HTTP.Transport}
	return c
}

// jsonContentType sets the Content-Type mautrix's federation client
// leaves out on requests with a body.
type jsonContentType struct{ next http.RoundTripper }

func (t jsonContentType) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil && r.Header.Get("Content-Type") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Content-Type", "application/json")
	}
	return t.next.RoundTrip(r)
}

// KeyID is the ID of the gateway's signing key.
func (g *Gateway) KeyID() string { return string(g.key.ID) }

// Ready is closed once the listener accepts connections.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// Addr is the listener's address once Ready.
func (g *Gateway) Addr() net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.listener == nil {
		return nil
	}
	return g.listener.Addr()
}

// Healthy is nil: the gateway depends on no single server. A remote
// server that is down holds up only its own queue.
func (g *Gateway) Healthy() error { return nil }

// Run loads the rooms from the bucket, queues the current presence of
// every joined ghost to the servers that share a room with it (the queue
// is rebuilt from the stores, not persisted), serves federation over TLS
// and sends transactions until ctx ends. It returns after every
// goroutine it started has exited.
func (g *Gateway) Run(ctx context.Context) error {
	if err := g.rooms.load(ctx); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(g.cfg.TLSCert, g.cfg.TLSKey)
	if err != nil {
		return fmt.Errorf("%w: tls: %w", ErrConfig, err)
	}
	ln, err := net.Listen("tcp", g.cfg.Listen)
	if err != nil {
		return fmt.Errorf("matrixfed: listen: %w", err)
	}
	tln := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	srv := &http.Server{
		Handler:           g.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	g.mu.Lock()
	g.listener = tln
	g.mu.Unlock()
	g.log.Info("federation listening", "addr", ln.Addr().String(), "server_name", g.cfg.ServerName, "key_id", g.key.ID)
	close(g.ready)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { g.out.run(runCtx) })
	g.restorePresence(runCtx)
	errc := make(chan error, 1)
	wg.Go(func() { errc <- srv.Serve(tln) })
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_ = srv.Shutdown(sctx)
	cancel()
	stop()
	wg.Wait()
	if errors.Is(runErr, http.ErrServerClosed) {
		runErr = nil
	}
	return runErr
}

// Handler serves the federation API: the key server, version and
// .well-known (mautrix's KeyServer), and behind X-Matrix authentication,
// per-origin rate limits and bounded bodies, what peers call on a
// participant that hosts no room.
func (g *Gateway) Handler() http.Handler {
	mux := http.NewServeMux()
	ks := &federation.KeyServer{
		KeyProvider:     &federation.StaticServerKey{ServerName: g.cfg.ServerName, Key: g.key},
		Version:         federation.ServerVersion{Name: "presence-bridge", Version: Version},
		WellKnownTarget: g.cfg.WellKnownServer,
	}
	ks.Register(mux, zerolog.Nop())
	fed := http.NewServeMux()
	fed.HandleFunc("PUT /_matrix/federation/v1/send/{txnID}", g.serveSend)
	fed.HandleFunc("PUT /_matrix/federation/v2/invite/{roomID}/{eventID}", g.serveInvite)
	fed.HandleFunc("GET /_matrix/federation/v1/query/profile", g.serveProfile)
	fed.HandleFunc("GET /_matrix/federation/v1/user/devices/{userID}", g.serveDevices)
	fed.HandleFunc("POST /_matrix/federation/v1/user/keys/query", g.serveKeysQuery)
	fed.HandleFunc("POST /_matrix/federation/v1/user/keys/claim", g.serveKeysClaim)
	fed.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		mautrix.MUnrecognized.WithMessage("Unrecognized endpoint").Write(w)
	})
	authed := g.authenticate(fed)
	mux.Handle("/_matrix/federation/", authed)
	return g.bounded(mux)
}

// bounded bounds every request's body, and rate-limits the endpoints
// that need no signature (keys, version, .well-known) by remote address,
// with the same budget as an origin.
func (g *Gateway) bounded(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, g.cfg.MaxRequestBytes)
		if r.URL.Path == "/_matrix/federation/v1/version" || !strings.HasPrefix(r.URL.Path, "/_matrix/federation/") {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			if !g.limit.allow("ip:"+host, time.Now()) {
				g.logs.warn(g.log, "limit:ip:"+host, "unauthenticated requests over the rate limit", "remote", host)
				mautrix.MLimitExceeded.WithMessage("Too many requests").Write(w)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// authenticate is the gate of every federation endpoint but version:
// a bounded body, a valid X-Matrix signature by a key the origin
// publishes, then the origin's rate limit.
func (g *Gateway) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ar, rerr := g.auth.Authenticate(r)
		if rerr != nil {
			g.logs.warn(g.log, "refused", "federation request refused", "path", r.URL.Path, "remote", r.RemoteAddr, "reason", rerr.Err)
			rerr.Write(w)
			return
		}
		origin := federation.OriginServerName(ar.Context())
		if !g.limit.allow(origin, time.Now()) {
			g.logs.warn(g.log, "limit:"+origin, "federation origin over its rate limit", "origin", origin)
			mautrix.MLimitExceeded.WithMessage("Too many requests").Write(w)
			return
		}
		next.ServeHTTP(w, ar)
	})
}
