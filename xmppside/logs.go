package xmppside

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// peerLogRate bounds the lines of each message a peer can make the
// component log: a hostile server can send any number of stanzas, and
// the log must not follow. What is held back is counted and reported by
// the next line of the same message (attribute "suppressed").
var peerLogRate = Rate{Every: 100 * time.Millisecond, Burst: 20}

// limitedHandler is a slog.Handler that passes at most peerLogRate lines
// per message on to next. The messages are constants, so the set of
// buckets stays small.
type limitedHandler struct {
	next slog.Handler
	lim  *logLimits
}

type logLimits struct {
	mu         sync.Mutex
	b          *buckets
	suppressed map[string]int
}

func newLimitedLogger(l *slog.Logger) *slog.Logger {
	return slog.New(&limitedHandler{next: l.Handler(), lim: &logLimits{b: newBuckets(peerLogRate, 1024), suppressed: make(map[string]int)}})
}

func (h *limitedHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *limitedHandler) Handle(ctx context.Context, r slog.Record) error {
	h.lim.mu.Lock()
	if h.lim.b.tokens(r.Message, r.Time) < 1 {
		h.lim.suppressed[r.Message]++
		h.lim.mu.Unlock()
		return nil
	}
	h.lim.b.take(r.Message, r.Time)
	n := h.lim.suppressed[r.Message]
	delete(h.lim.suppressed, r.Message)
	h.lim.mu.Unlock()
	if n > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", n))
	}
	return h.next.Handle(ctx, r)
}

func (h *limitedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &limitedHandler{next: h.next.WithAttrs(as), lim: h.lim}
}

func (h *limitedHandler) WithGroup(name string) slog.Handler {
	return &limitedHandler{next: h.next.WithGroup(name), lim: h.lim}
}
