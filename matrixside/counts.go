package matrixside

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Counts is what the side refused, held back or forgot since [New], by
// reason, for operators and metrics. It carries no user identifiers. Read
// it with [Side.Counts].
type Counts struct {
	// BadToken: appservice requests refused for a wrong or missing
	// hs_token.
	BadToken uint64
	// ConnectionsShed: idle connections to the appservice listener closed
	// to make room under matrix.max_connections.
	ConnectionsShed uint64
	// GhostQueriesRefused: user queries for a ghost without a link
	// answered "no such user" because the registration budget
	// (matrix.query_ghosts_per_hour, query_ghosts_per_domain_per_hour) was
	// spent; no ghost was registered.
	GhostQueriesRefused uint64
	// GhostQueriesRegistered: ghosts without a link registered for a user
	// query, within the budget.
	GhostQueriesRegistered uint64
	// HomeserverGated: requests not sent, and membership commands sent
	// back to be retried, because the homeserver was down or rate-limiting.
	HomeserverGated uint64
	// Evicted*: entries dropped at the matrix.max_tracked bound: ghosts
	// (outgoing presence and the registration cache), Matrix users (their
	// last presence), rooms (the room index).
	EvictedGhosts      uint64
	EvictedMatrixUsers uint64
	EvictedRooms       uint64
}

// counters are the live values behind [Counts].
type counters struct {
	badToken, connsShed, queriesRefused, queriesRegistered, gated atomic.Uint64
}

// Counts returns what the side refused, held back or forgot so far.
func (s *Side) Counts() Counts {
	return Counts{
		BadToken:               s.counts.badToken.Load(),
		ConnectionsShed:        s.counts.connsShed.Load(),
		GhostQueriesRefused:    s.counts.queriesRefused.Load(),
		GhostQueriesRegistered: s.counts.queriesRegistered.Load(),
		HomeserverGated:        s.counts.gated.Load(),
		EvictedGhosts:          s.out.evictedCount() + s.ghosts.evictedCount(),
		EvictedMatrixUsers:     s.in.evictedCount(),
		EvictedRooms:           s.rooms.evictedCount(),
	}
}

// sampledLogEvery is how often a sampled log line may be written.
const sampledLogEvery = 10 * time.Second

// sampledLog logs a kind of event that a peer can cause as often as it
// likes (a bad token, a refused query) at most once per interval: the
// first event at once, later ones counted and logged with the next event
// after the interval, or by flush. Each line carries "count", the number
// of events it stands for. The message is constant.
type sampledLog struct {
	log   *slog.Logger
	level slog.Level
	msg   string
	every time.Duration

	mu      sync.Mutex
	last    time.Time // of the last line
	pending uint64    // events since the last line
}

func newSampledLog(log *slog.Logger, level slog.Level, msg string) *sampledLog {
	return &sampledLog{log: log, level: level, msg: msg, every: sampledLogEvery}
}

// note records one event and logs it with attrs if a line is due.
func (l *sampledLog) note(now time.Time, attrs ...any) {
	l.mu.Lock()
	l.pending++
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.mu.Unlock()
		return
	}
	n := l.pending
	l.pending, l.last = 0, now
	l.mu.Unlock()
	l.log.Log(context.Background(), l.level, l.msg, append([]any{"count", n}, attrs...)...)
}

// flush logs the events counted since the last line, if a line is due.
func (l *sampledLog) flush(now time.Time) {
	l.mu.Lock()
	if l.pending == 0 || now.Sub(l.last) < l.every {
		l.mu.Unlock()
		return
	}
	n := l.pending
	l.pending, l.last = 0, now
	l.mu.Unlock()
	l.log.Log(context.Background(), l.level, l.msg, "count", n)
}
