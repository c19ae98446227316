package matrixside

import (
	"context"
	"encoding/json"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
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
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
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

var (
	openTestBus = bustest.Open
	waitFor     = bustest.WaitFor
)

// freeListener listens on a free loopback port.
func freeListener(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// runSide starts s.Run on ln and stops it at cleanup, checking it
// returns nil.
// runSide runs s until the test ends or the returned stop is called
// (stop waits for Run to return and may be called again).
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

// busRecorder collects events published on a subject filter.
type busRecorder struct {
	mu     sync.Mutex
	events []*bridge.Event
}

func record(t testing.TB, b *bridge.Bus, filter string) *busRecorder {
	t.Helper()
	r := &busRecorder{}
	sub, err := b.Subscribe(context.Background(), filter, func(_ context.Context, ev *bridge.Event) {
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return r
}

func (r *busRecorder) find(pred func(*bridge.Event) bool) *bridge.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.events {
		if pred(ev) {
			return ev
		}
	}
	return nil
}

func (r *busRecorder) count(pred func(*bridge.Event) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ev := range r.events {
		if pred(ev) {
			n++
		}
	}
	return n
}

func (r *busRecorder) wait(t testing.TB, timeout time.Duration, what string, pred func(*bridge.Event) bool) *bridge.Event {
	t.Helper()
	var got *bridge.Event
	waitFor(t, timeout, what, func() bool { got = r.find(pred); return got != nil })
	return got
}

// fakeHS is an httptest homeserver: it answers registration and profile
// calls and lets each test decide how presence PUTs are answered.
type fakeHS struct {
	*httptest.Server
	mu       sync.Mutex
	puts     map[string][]presenceBody // per ghost, in arrival order
	putTimes map[string][]time.Time
	requests int
	raw      []string                                // every presence PUT body
	answer   func(ghost string, n int) (int, string) // n: this ghost's PUT number, from 1
}

func newFakeHS(t testing.TB) *fakeHS {
	f := &fakeHS{puts: map[string][]presenceBody{}, putTimes: map[string][]time.Time{}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeHS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.requests++
	f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+testAS {
		writeError(w, 401, "M_UNKNOWN_TOKEN", "bad token")
		return
	}
	p := r.URL.Path
	switch {
	case p == "/_matrix/client/v3/register":
		writeJSON(w, 200, map[string]string{"user_id": "x"})
	case strings.HasSuffix(p, "/displayname") && r.Method == http.MethodGet:
		writeError(w, 404, "M_NOT_FOUND", "no name")
	case strings.HasSuffix(p, "/displayname"):
		writeJSON(w, 200, struct{}{})
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

// newTestSide builds a side on a fake or real homeserver without running it.
func newTestSide(t testing.TB, cfg Config, bus *bridge.Bus) *Side {
	t.Helper()
	tr := mapping.NewTranslator(mapping.DefaultTable(), false)
	s, err := newSide(cfg, testNS, tr, bus, testLogger(t))
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

func ghostOf(t testing.TB, jid string) string {
	t.Helper()
	gTyped, err := testNS.GhostMXID(mapping.BareJID(jid))
	g := string(gTyped)
	if err != nil {
		t.Fatal(err)
	}
	return g
}
