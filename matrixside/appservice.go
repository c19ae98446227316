package matrixside

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// maxTxnBody bounds a transaction body; Synapse sends at most 100 PDUs and
// 100 EDUs per transaction, far below this.
const maxTxnBody = 16 << 20

// Handler returns the appservice API handler (what Run serves): the
// homeserver pushes transactions and asks about users through it.
func (s *Side) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"errcode": code, "error": msg})
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

func (s *Side) serveHTTP(w http.ResponseWriter, r *http.Request) {
	tok := hsToken(r)
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.HSToken)) != 1 {
		s.log.Warn("appservice request refused: bad hs_token", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "token_given", tok != "")
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "bad or missing hs_token")
		return
	}
	route, arg, ok := splitRoute(r.URL.EscapedPath())
	if !ok {
		writeError(w, http.StatusNotFound, "M_UNRECOGNIZED", "unrecognized path")
		return
	}
	method := map[string]string{"transactions": http.MethodPut, "users": http.MethodGet, "rooms": http.MethodGet, "ping": http.MethodPost}[route]
	if r.Method != method {
		w.Header().Set("Allow", method)
		writeError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "method not allowed")
		return
	}
	switch route {
	case "transactions":
		s.serveTransaction(w, r, arg)
	case "users":
		s.serveUserQuery(w, r, arg)
	case "rooms":
		writeError(w, http.StatusNotFound, "M_NOT_FOUND", "the bridge has no room aliases")
	case "ping":
		writeJSON(w, http.StatusOK, struct{}{})
	}
}

// splitRoute recognizes the appservice API paths, stable and legacy:
// transactions/{txnId}, users/{userId}, rooms/{alias}, ping (stable only).
func splitRoute(path string) (route, arg string, ok bool) {
	rest, stable := strings.CutPrefix(path, "/_matrix/app/v1/")
	if !stable {
		rest = strings.TrimPrefix(path, "/")
	}
	if stable && rest == "ping" {
		return "ping", "", true
	}
	name, escaped, found := strings.Cut(rest, "/")
	if !found || escaped == "" || strings.Contains(escaped, "/") {
		return "", "", false
	}
	switch name {
	case "transactions", "users", "rooms":
	default:
		return "", "", false
	}
	arg, err := url.PathUnescape(escaped)
	if err != nil || arg == "" {
		return "", "", false
	}
	return name, arg, true
}

func (s *Side) serveTransaction(w http.ResponseWriter, r *http.Request, txnID string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTxnBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "transaction too large")
			return
		}
		writeError(w, http.StatusBadRequest, "M_BAD_JSON", "cannot read body")
		return
	}
	txn, code, err := parseTransaction(body)
	if err != nil {
		s.log.Warn("malformed transaction", "txn", txnID, "errcode", code, "err", err)
		writeError(w, http.StatusBadRequest, code, err.Error())
		return
	}
	status, err := s.txns.handle(r.Context(), s.txnBucket(), txnID, func(ctx context.Context) error {
		return s.processTxn(ctx, txn)
	})
	if err != nil {
		s.log.Error("transaction failed, homeserver will retry", "txn", txnID, "err", err)
		writeError(w, status, "M_UNKNOWN", "transaction failed")
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (s *Side) txnBucket() *bridge.Bucket[time.Time] {
	if s.bus == nil {
		return nil
	}
	return s.bus.Store().Txns
}

// processTxn publishes what a transaction means.
func (s *Side) processTxn(ctx context.Context, t *parsedTxn) error {
	now := time.Now()
	for _, p := range t.Presence {
		s.ephemeralSeen.Store(true)
		s.observePresence(ctx, p.Sender, p.Content, now)
	}
	for _, c := range t.Commands {
		if err := s.runCommand(ctx, c); err != nil {
			return err
		}
	}
	bot := s.cfg.BotMXID()
	for _, m := range t.Members {
		if m.StateKey == bot {
			if m.Membership == "invite" {
				if kind, _ := s.classify(m.Sender); kind == kindMatrix {
					s.queueBotJoin(m.RoomID)
				}
			}
			continue
		}
		for _, ev := range s.membershipEvents(m) {
			if s.bus == nil {
				continue
			}
			if err := s.bus.Publish(ctx, bridge.In, ev); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Side) serveUserQuery(w http.ResponseWriter, r *http.Request, userID string) {
	kind, jid := s.classify(userID)
	if kind != kindGhost {
		writeError(w, http.StatusNotFound, "M_NOT_FOUND", "not a ghost of this bridge")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	local := userID[1 : len(userID)-len(s.ns.HomeserverDomain)-1]
	if err := s.ghosts.ensure(ctx, userID, local, jid); err != nil {
		s.log.Warn("registering queried ghost failed", "ghost", userID, "err", err)
		writeError(w, http.StatusInternalServerError, "M_UNKNOWN", "cannot register ghost")
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// txnLog makes transactions idempotent: a transaction id is processed once,
// also across restarts (the ids are kept in the txns bucket for a day).
// Transactions are processed one at a time, as the homeserver sends them.
type txnLog struct {
	mu     sync.Mutex
	recent map[string]struct{}
	order  []string
}

const recentTxns = 4096

func newTxnLog() *txnLog { return &txnLog{recent: map[string]struct{}{}} }

// txnKey turns a transaction id into a KV key.
func txnKey(id string) string {
	if len(id) > 128 {
		sum := sha256.Sum256([]byte(id))
		return "h." + hex.EncodeToString(sum[:])
	}
	return "t." + bridge.EncodeToken(id)
}

// handle runs process unless id was seen, then records id. It returns the
// HTTP status to answer with on error.
func (l *txnLog) handle(ctx context.Context, bucket *bridge.Bucket[time.Time], id string, process func(context.Context) error) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := txnKey(id)
	if _, ok := l.recent[key]; ok {
		return http.StatusOK, nil
	}
	if bucket != nil {
		_, _, err := bucket.Get(ctx, key)
		if err == nil {
			l.remember(key)
			return http.StatusOK, nil
		}
		if !errors.Is(err, bridge.ErrNotFound) {
			return http.StatusServiceUnavailable, err
		}
	}
	if err := process(ctx); err != nil {
		return http.StatusInternalServerError, err
	}
	l.remember(key)
	if bucket != nil {
		// Processed already; a failed write only weakens dedup after a restart.
		_, _ = bucket.Put(ctx, key, time.Now().UTC())
	}
	return http.StatusOK, nil
}

func (l *txnLog) remember(key string) {
	l.recent[key] = struct{}{}
	l.order = append(l.order, key)
	if len(l.order) > recentTxns {
		delete(l.recent, l.order[0])
		l.order = l.order[1:]
	}
}

// queueBotJoins hands a room the bot was invited to to runBotJoins.
func (s *Side) queueBotJoin(roomID string) {
	select {
	case s.botJoins <- roomID:
	default:
		s.log.Warn("bot join queue full, invite ignored", "room", roomID)
	}
}

// runBotJoins accepts invites to the bot, so that the bot shares rooms
// with the users who invite it and /sync shows their presence. Commands
// sent to the bot are for a later version; they are not read.
func (s *Side) runBotJoins(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case roomID := <-s.botJoins:
			for attempt := 0; attempt < 5; attempt++ {
				err := s.c.join(ctx, "", roomID)
				if err == nil {
					s.log.Info("bot joined room", "room", roomID)
					break
				}
				retry, after := retryable(err)
				if !retry || ctx.Err() != nil {
					s.log.Warn("bot cannot join room", "room", roomID, "err", err)
					break
				}
				if !sleepCtx(ctx, max(after, time.Second<<attempt)) {
					return
				}
			}
		}
	}
}
