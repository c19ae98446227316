// Package bustest holds what tests of the bridge's packages share: an
// embedded bus in a temp dir, polling with a deadline, and a logger that
// writes to the test.
package bustest

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/testenv/poll"
)

// Open starts an embedded bus with its data in dir (a temp dir if empty)
// and closes it when the test ends.
func Open(t testing.TB, dir string) *bridge.Bus {
	t.Helper()
	cfg := bridge.Default()
	if dir == "" {
		dir = t.TempDir()
	}
	cfg.Embedded.DataDir = dir
	b, err := bridge.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// WaitFor polls cond until it holds, or fails the test after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, timeout, what, cond)
}

// Logger logs at debug level to t until the test ends (later lines, from
// goroutines still stopping, are dropped rather than panicking).
func Logger(t testing.TB) *slog.Logger {
	w := &writer{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type writer struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
