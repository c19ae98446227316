package matrixside

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	"github.com/presence-bridge/presence-bridge/mapping"
)

const (
	testAS     = "as-token-for-tests"
	testHS     = "hs-token-for-tests"
	testDomain = "localhost"
)

var testNS = mapping.Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: testDomain, ComponentDomain: "matrix.example.net"}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MATRIXSIDE_LOG") != "" {
		return bustest.Logger(t)
	}
	return slog.New(slog.DiscardHandler)
}

func testConfig(hsURL string) Config {
	cfg := Default()
	cfg.HomeserverURL = hsURL
	cfg.HomeserverDomain = testDomain
	cfg.ASToken = testAS
	cfg.HSToken = testHS
	return cfg
}

var waitFor = bustest.WaitFor

// openTestStore opens the bridge's state store on an embedded bus with its
// data in dir (a temp dir if empty), closed when the test ends.
func openTestStore(t testing.TB, dir string) *bridge.Store {
	t.Helper()
	return bustest.Open(t, dir).Store()
}

// freeListener listens on a free loopback port.
func freeListener(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// runSide runs s on ln until the test ends or the returned stop is called
// (stop waits for Run to return, checks it returned nil, and may be
// called again).
func runSide(t testing.TB, s *Side, ln net.Listener) (stop func()) {
	t.Helper()
	s.listener = ln
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return stop
}

// fakeObserver is the core as the side sees it: it records every report.
// fail, if set, makes the durable reports fail (the core is away).
type fakeObserver struct {
	mu          sync.Mutex
	presence    []bridge.MatrixPresence
	memberships []bridge.MatrixMembership
	optOuts     []bridge.OptOut[mapping.UserID]
	fail        error
}

var _ bridge.MatrixObserver = (*fakeObserver)(nil)

func (o *fakeObserver) MatrixPresence(_ context.Context, r bridge.MatrixPresence) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.presence = append(o.presence, r)
	return nil
}

func (o *fakeObserver) MatrixMembership(_ context.Context, r bridge.MatrixMembership) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fail != nil {
		return o.fail
	}
	o.memberships = append(o.memberships, r)
	return nil
}

func (o *fakeObserver) MatrixOptOut(_ context.Context, r bridge.OptOut[mapping.UserID]) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fail != nil {
		return o.fail
	}
	o.optOuts = append(o.optOuts, r)
	return nil
}

func (o *fakeObserver) setFail(err error) {
	o.mu.Lock()
	o.fail = err
	o.mu.Unlock()
}

// presenceOfUser returns the presence reports of u, in order.
func (o *fakeObserver) presenceOfUser(u mapping.UserID) []mapping.Presence {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []mapping.Presence
	for _, r := range o.presence {
		if r.User == u {
			out = append(out, r.Presence)
		}
	}
	return out
}

func (o *fakeObserver) presenceCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.presence)
}

// waitPresence waits for a presence report of u that satisfies pred.
func (o *fakeObserver) waitPresence(t testing.TB, timeout time.Duration, what string, u mapping.UserID, pred func(mapping.Presence) bool) mapping.Presence {
	t.Helper()
	var got mapping.Presence
	waitFor(t, timeout, what, func() bool {
		for _, p := range o.presenceOfUser(u) {
			if pred(p) {
				got = p
				return true
			}
		}
		return false
	})
	return got
}

func (o *fakeObserver) findMembership(pred func(bridge.MatrixMembership) bool) (bridge.MatrixMembership, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, r := range o.memberships {
		if pred(r) {
			return r, true
		}
	}
	return bridge.MatrixMembership{}, false
}

func (o *fakeObserver) countMemberships(pred func(bridge.MatrixMembership) bool) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, r := range o.memberships {
		if pred(r) {
			n++
		}
	}
	return n
}

func (o *fakeObserver) waitMembership(t testing.TB, timeout time.Duration, what string, pred func(bridge.MatrixMembership) bool) bridge.MatrixMembership {
	t.Helper()
	var got bridge.MatrixMembership
	waitFor(t, timeout, what, func() bool {
		var ok bool
		got, ok = o.findMembership(pred)
		return ok
	})
	return got
}

func (o *fakeObserver) optOutsOf(u mapping.UserID) []bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []bool
	for _, r := range o.optOuts {
		if r.User == u {
			out = append(out, r.Enabled)
		}
	}
	return out
}

// fakeHS is an httptest homeserver: it answers registration, profile,
// filter, /sync and /versions calls and lets each test decide how
// presence PUTs are answered.
type fakeHS struct {
	*httptest.Server
	mu       sync.Mutex
	puts     map[string][]presenceBody // per ghost, in arrival order
	putTimes map[string][]time.Time
	raw      []string                                // every presence PUT body
	answer   func(ghost string, n int) (int, string) // n: this ghost's PUT number, from 1
}

func newFakeHS(t testing.TB) *fakeHS {
	f := &fakeHS{puts: map[string][]presenceBody{}, putTimes: map[string][]time.Time{}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"errcode": code, "error": msg})
}

func (f *fakeHS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	p := r.URL.Path
	if p == "/_matrix/client/versions" {
		writeJSON(w, 200, map[string]any{"versions": []string{"v1.11"}})
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+testAS {
		writeError(w, 401, "M_UNKNOWN_TOKEN", "bad token")
		return
	}
	switch {
	case p == "/_matrix/client/v3/register":
		writeJSON(w, 200, map[string]string{"user_id": "x"})
	case strings.HasSuffix(p, "/displayname") && r.Method == http.MethodGet:
		writeError(w, 404, "M_NOT_FOUND", "no name")
	case strings.HasSuffix(p, "/displayname"):
		writeJSON(w, 200, struct{}{})
	case strings.HasSuffix(p, "/filter"):
		writeJSON(w, 200, map[string]string{"filter_id": "1"})
	case strings.HasPrefix(p, "/_matrix/client/v3/presence/") && r.Method == http.MethodPut:
		ghost := r.URL.Query().Get("user_id")
		var pb presenceBody
		_ = json.Unmarshal(body, &pb)
		f.mu.Lock()
		f.puts[ghost] = append(f.puts[ghost], pb)
		f.raw = append(f.raw, string(body))
		f.putTimes[ghost] = append(f.putTimes[ghost], time.Now())
		n := len(f.puts[ghost])
		answer := f.answer
		f.mu.Unlock()
		if answer != nil {
			if status, resp := answer(ghost, n); status != 200 {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = io.WriteString(w, resp)
				return
			}
		}
		writeJSON(w, 200, struct{}{})
	case strings.HasPrefix(p, "/_matrix/client/v3/presence/"):
		writeJSON(w, 200, map[string]any{"presence": "online"})
	case p == "/_matrix/client/v3/sync":
		// A long poll that never has news.
		select {
		case <-r.Context().Done():
		case <-time.After(time.Second):
		}
		writeJSON(w, 200, map[string]any{"next_batch": "s1"})
	default:
		writeError(w, 404, "M_UNRECOGNIZED", "fake: "+p)
	}
}

func (f *fakeHS) putsOf(ghost string) []presenceBody {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]presenceBody(nil), f.puts[ghost]...)
}

func (f *fakeHS) rawPuts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.raw)
}

// newTestSide builds a side on a fake or real homeserver without running
// it. A nil store gets a fresh one.
func newTestSide(t testing.TB, cfg Config, store *bridge.Store, obs bridge.MatrixObserver) *Side {
	t.Helper()
	if store == nil {
		store = openTestStore(t, "")
	}
	tr := mapping.NewTranslator(mapping.DefaultTable(), false)
	s, err := New(cfg, testNS, tr, store, obs, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// doAS sends an appservice API request to h.
func doAS(t testing.TB, h http.Handler, method, target, token, body string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

func ghostOf(t testing.TB, jid mapping.BareJID) string {
	t.Helper()
	g, err := testNS.GhostMXID(jid)
	if err != nil {
		t.Fatal(err)
	}
	return string(g)
}

// logRecords is a slog handler that keeps the level and message of every
// record, for tests that count log lines (what an operator would see).
// With MATRIXSIDE_LOG set, records also go to the test log.
type logRecords struct {
	mu   *sync.Mutex
	recs *[]logRecord
	next slog.Handler
}

type logRecord struct {
	level slog.Level
	msg   string
}

func newLogRecords(t testing.TB) (*logRecords, *slog.Logger) {
	l := &logRecords{mu: &sync.Mutex{}, recs: &[]logRecord{}, next: testLogger(t).Handler()}
	return l, slog.New(l)
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecords) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	*l.recs = append(*l.recs, logRecord{r.Level, r.Message})
	l.mu.Unlock()
	if l.next.Enabled(ctx, r.Level) {
		return l.next.Handle(ctx, r)
	}
	return nil
}

func (l *logRecords) WithAttrs(as []slog.Attr) slog.Handler {
	c := *l
	c.next = l.next.WithAttrs(as)
	return &c
}

func (l *logRecords) WithGroup(g string) slog.Handler {
	c := *l
	c.next = l.next.WithGroup(g)
	return &c
}

// count returns how many records at level or above contain substr.
func (l *logRecords) count(level slog.Level, substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range *l.recs {
		if r.level >= level && strings.Contains(r.msg, substr) {
			n++
		}
	}
	return n
}

// since returns the records at level or above logged after the first n.
func (l *logRecords) since(n int, level slog.Level) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range (*l.recs)[min(n, len(*l.recs)):] {
		if r.level >= level {
			out = append(out, r.level.String()+" "+r.msg)
		}
	}
	return out
}

func (l *logRecords) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(*l.recs)
}

// newTestSideLog is newTestSide with a logger of the test's choosing.
func newTestSideLog(t testing.TB, cfg Config, store *bridge.Store, obs bridge.MatrixObserver, log *slog.Logger) *Side {
	t.Helper()
	if store == nil {
		store = openTestStore(t, "")
	}
	s, err := New(cfg, testNS, mapping.NewTranslator(mapping.DefaultTable(), false), store, obs, log)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
