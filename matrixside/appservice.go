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
		// Anyone who reaches the listener can do this as often as they
		// like: counted, logged at a bounded rate, and the connection
		// closed after the answer. The server would otherwise wait up to
		// the read timeout for a body the peer may never send (it reads
		// an unread body after the handler, Connection: close or not);
		// the expired read deadline makes that read fail at once.
		s.counts.badToken.Add(1)
		s.badTokenLog.note(time.Now(), "remote", r.RemoteAddr, "token_given", tok != "")
		w.Header().Set("Connection", "close")
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
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
	s.health.hint(time.Now()) // the homeserver is there
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
// timeouts and cannot be waited for). The listener is open to whoever can
// reach it, so everything a peer holds is bounded: time (s.limits: header,
// read, write and idle timeouts), header size, and the number of
// connections (matrix.max_connections, see connCap). It returns once the
// server and all its handlers are done: nil when ctx ended, the server's
// error if it failed.
func (s *Side) serveAPI(ctx context.Context, ln net.Listener) error {
	capped := newConnCap(ln, s.cfg.MaxConnections, &s.counts.connsShed)
	s.conns.Store(capped)
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
		ReadHeaderTimeout: s.limits.readHeader,
		ReadTimeout:       s.limits.read,
		WriteTimeout:      s.limits.write, // a transaction may wait for the core
		IdleTimeout:       s.limits.idle,
		MaxHeaderBytes:    s.limits.maxHeaderBytes,
		ConnState:         capped.track,
		// The server's own lines (TLS handshakes, bad requests) are a
		// peer's doing: debug only.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// Handlers see ctx end: the transaction in progress fails fast
		// (and comes again) rather than holding up the shutdown.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(capped) }()
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

// QueryUser implements appservice.QueryHandler. The homeserver asks when
// something names a ghost it does not know: a client looking its profile
// up (Element does before inviting; Dendrite v0.15.2 asks only then) and,
// on Synapse, events naming it, federated invites included. A yes
// registers the ghost, an account on the homeserver for good, so it is
// given only
//   - for a ghost this process registered already (the homeserver lost
//     it: it is registered again);
//   - for the ghost of an XMPP user with a live link (asked or approved,
//     in the core's links bucket when the side started; links made later
//     come with the core's commands, which register the ghost themselves);
//   - else within the registration budget, per XMPP domain and in all
//     (matrix.query_ghosts_per_domain_per_hour, query_ghosts_per_hour): a
//     Matrix user looking up and inviting an XMPP user nobody linked yet
//     is how the Matrix half of the consent flow starts, and clients warn
//     about users whose profile cannot be found.
//
// Past the budget the answer is no, counted and logged at a bounded rate.
// The user can still be invited (the client warns; Dendrite accepts an
// invite of a local user it does not know, Synapse asks after the fact):
// the invite reaches the core, and the ghost is registered when the core,
// with the XMPP user's consent, has it join.
func (q queryHandler) QueryUser(u id.UserID) bool {
	s := q.s
	kind, jid := s.classify(u)
	if kind != kindGhost {
		return false
	}
	now := time.Now()
	registered := s.ghosts.isRegistered(u)
	if !registered && !s.ghosts.isLinked(u) {
		if !s.budget.take(jid.Domain(), now) {
			s.counts.queriesRefused.Add(1)
			s.queryLog.note(now, "xmpp_domain", jid.Domain())
			return false
		}
		s.counts.queriesRegistered.Add(1)
	}
	// mautrix's QueryHandler gets no request context: Run's ends it.
	base := context.Background()
	if p := s.runCtx.Load(); p != nil {
		base = *p
	}
	ctx, cancel := context.WithTimeout(base, requestTimeout)
	defer cancel()
	var err error
	if registered {
		// The homeserver asks only about users it does not know: it lost
		// this one. Register it again (no budget: it was consented to).
		err = s.ghosts.reregister(ctx, s.ghosts.client(u))
	} else {
		_, err = s.ghosts.ensure(ctx, u, jid)
	}
	if err != nil {
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
		s.botJoinLog.note(time.Now(), "room", roomID)
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
