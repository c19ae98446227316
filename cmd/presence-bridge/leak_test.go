package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestGroupWaitsForSlowParts: a part slower to stop than the grace is
// waited for (with an error logged meanwhile), never abandoned.
func TestGroupWaitsForSlowParts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g := newGroup(ctx, cancel)
	warned := &firstWrite{done: make(chan struct{})}
	stopped := make(chan struct{})
	g.run("slow", func(ctx context.Context) error {
		<-ctx.Done()
		<-warned.done // still stopping when the grace is over
		close(stopped)
		return nil
	})
	cancel()
	if err := g.waitWarn(slog.New(slog.NewTextHandler(warned, nil)), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("waitWarn returned before the part stopped")
	}
	if !strings.Contains(warned.String(), "shutdown is taking longer") {
		t.Errorf("logged %q", warned.String())
	}
}

// firstWrite records what is written and closes done at the first write.
type firstWrite struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

func (w *firstWrite) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() == 0 {
		close(w.done)
	}
	return w.buf.Write(p)
}

func (w *firstWrite) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestGroupOnePartFailingStopsAll: an error of one part stops the others
// and is returned.
func TestGroupOnePartFailingStopsAll(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := newGroup(ctx, cancel)
	g.run("failing", func(context.Context) error { return errors.New("boom") })
	g.run("waiting", func(ctx context.Context) error { <-ctx.Done(); return nil })
	if err := g.wait(); err == nil || !strings.Contains(err.Error(), "failing: boom") {
		t.Fatalf("wait = %v", err)
	}
}
