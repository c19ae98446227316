package matrixside

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Handler returns the appservice API handler (what Run serves): the
// homeserver pushes transactions and asks about users through it.
//
// User queries, room alias queries and pings are mautrix's
// (AppService.Router, with the side as its QueryHandler). Around them,
// where mautrix has gaps:
//   - the hs_token is checked here, in the Authorization header or the
//     legacy access_token query parameter, and a wrong one gets 403
//     M_FORBIDDEN (mautrix reads only the header and answers 401);
//   - the legacy un-prefixed paths (/transactions/{id}, /users/{id},
//     /rooms/{alias}) are served (mautrix serves only /_matrix/app/v1/);
//   - unknown paths and methods get M_UNRECOGNIZED (a plain ServeMux 404
//     or 405 has no errcode);
//   - transactions are handled by serveTransaction (see there why).
func (s *Side) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// appPrefix is where the stable appservice API lives.
const appPrefix = "/_matrix/app/v1/"

func (s *Side) serveHTTP(w http.ResponseWriter, r *http.Request) {
	tok := hsToken(r)
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.HSToken)) != 1 {
		s.log.Warn("appservice request refused: bad hs_token", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "token_given", tok != "")
		mautrix.MForbidden.WithMessage("bad or missing hs_token").Write(w)
		return
	}
	route, arg, escaped, ok := splitRoute(r.URL.EscapedPath())
	if !ok {
		mautrix.MUnrecognized.WithMessage("unrecognized path").Write(w)
		return
	}
	method := map[string]string{"transactions": http.MethodPut, "users": http.MethodGet, "rooms": http.MethodGet, "ping": http.MethodPost}[route]
	if r.Method != method {
		w.Header().Set("Allow", method)
		mautrix.MUnrecognized.WithStatus(http.StatusMethodNotAllowed).WithMessage("method not allowed").Write(w)
		return
	}
	s.health.observe(nil) // the homeserver is there
	if route == "transactions" {
		s.serveTransaction(w, r, arg)
		return
	}
	// mautrix's handlers: on the stable path, with the token where they
	// look for it.
	r2 := r.Clone(r.Context())
	r2.Header.Set("Authorization", "Bearer "+s.cfg.HSToken)
	r2.URL.Path, r2.URL.RawPath = appPrefix+route, appPrefix+route
	if arg != "" {
		r2.URL.Path += "/" + arg
		r2.URL.RawPath += "/" + escaped
	}
	s.as.Router.ServeHTTP(w, r2)
}

// serveAPI serves the appservice API on ln until ctx ends, in an
// http.Server of our own around mautrix's router (AppService.Start has no
// timeouts and cannot be waited for). It returns once the server and all
// its handlers are done: nil when ctx ended, the server's error if it
// failed.
func (s *Side) serveAPI(ctx context.Context, ln net.Listener) error {
	// handlers counts the requests in progress, so that serveAPI waits for
	// them even if Shutdown gives up; once closing, a request that still
	// gets in is refused.
	var handlers sync.WaitGroup
	var closingMu sync.Mutex
	closing := false
	api := s.Handler()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			closingMu.Lock()
			if closing {
				closingMu.Unlock()
				mautrix.MUnknown.WithStatus(http.StatusServiceUnavailable).WithMessage("shutting down").Write(w)
				return
			}
			handlers.Add(1)
			closingMu.Unlock()
			defer handlers.Done()
			api.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      120 * time.Second, // a transaction may wait for the core
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		// Handlers see ctx end: the transaction in progress fails fast
		// (and comes again) rather than holding up the shutdown.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	var err error
	select {
	case err = <-served:
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if srv.Shutdown(sctx) != nil {
		_ = srv.Close()
	}
	closingMu.Lock()
	closing = true
	closingMu.Unlock()
	handlers.Wait()
	if err == nil {
		err = <-served
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("matrixside: serve: %w", err)
}

// hsToken returns the token of a request: Authorization: Bearer, or the
// legacy access_token query parameter.
func hsToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
			return tok
		}
		return ""
	}
	return r.URL.Query().Get("access_token")
}

// splitRoute recognizes the appservice API paths, stable and legacy:
// transactions/{txnId}, users/{userId}, rooms/{alias}, ping (stable only).
// It returns the argument unescaped and as it was escaped in the path.
func splitRoute(path string) (route, arg, escaped string, ok bool) {
	rest, stable := strings.CutPrefix(path, appPrefix)
	if !stable {
		rest = strings.TrimPrefix(path, "/")
	}
	if stable && rest == "ping" {
		return "ping", "", "", true
	}
	name, escaped, found := strings.Cut(rest, "/")
	if !found || escaped == "" || strings.Contains(escaped, "/") {
		return "", "", "", false
	}
	switch name {
	case "transactions", "users", "rooms":
	default:
		return "", "", "", false
	}
	arg, err := url.PathUnescape(escaped)
	if err != nil || arg == "" {
		return "", "", "", false
	}
	return name, arg, escaped, true
}

// queryHandler answers the homeserver's user and room alias queries for
// mautrix's router: a ghost exists once it is registered; the bridge has
// no room aliases.
type queryHandler struct{ s *Side }

// QueryAlias implements appservice.QueryHandler.
func (queryHandler) QueryAlias(id.RoomAlias) bool { return false }

// QueryUser implements appservice.QueryHandler: a ghost of a valid JID is
// registered (and named) on the spot.
func (q queryHandler) QueryUser(u id.UserID) bool {
	s := q.s
	kind, jid := s.classify(u)
	if kind != kindGhost {
		return false
	}
	// mautrix's QueryHandler gets no request context: Run's ends it.
	base := context.Background()
	if p := s.runCtx.Load(); p != nil {
		base = *p
	}
	ctx, cancel := context.WithTimeout(base, requestTimeout)
	defer cancel()
	if _, err := s.ghosts.ensure(ctx, u, jid); err != nil {
		s.log.Warn("registering queried ghost failed", "ghost", u, "err", err)
		return false
	}
	return true
}

// queueBotJoin hands a room the bot was invited to to runBotJoins.
func (s *Side) queueBotJoin(roomID id.RoomID) {
	select {
	case s.botJoins <- roomID:
	default:
		s.log.Warn("bot join queue full, invite ignored", "room", roomID)
	}
}

// botJoinAttempts bounds the tries of one bot join (mautrix retries
// network errors, 429 and 502-504 with a doubling backoff).
const botJoinAttempts = 5

// runBotJoins accepts invites to the bot, so that the bot shares rooms
// with the users who invite it and /sync shows their presence, and so
// that it can answer commands there.
func (s *Side) runBotJoins(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case roomID := <-s.botJoins:
			jctx, cancel := context.WithTimeout(mautrix.WithMaxRetries(ctx, botJoinAttempts-1), 5*time.Minute)
			_, err := s.bot.JoinRoomByID(jctx, roomID)
			cancel()
			switch {
			case err == nil:
				s.log.Info("bot joined room", "room", roomID)
			case ctx.Err() == nil:
				s.log.Warn("bot cannot join room", "room", roomID, "err", err)
			}
		}
	}
}
