package matrixfed

import (
	"log/slog"
	"sync"
	"time"
)

// maxOrigins bounds the rate limiter's table: past it, the buckets that
// are full again (idle origins) are forgotten; if none is, the whole
// table is, which only ever lets a burst through early.
const maxOrigins = 10000

// originLimiter is a token bucket per origin server.
type originLimiter struct {
	rate  float64
	burst float64

	mu      sync.Mutex
	buckets map[string]*tokenBucket
}

type tokenBucket struct {
	tokens float64
	at     time.Time
}

func newOriginLimiter(rate float64, burst int) *originLimiter {
	return &originLimiter{rate: rate, burst: float64(burst), buckets: map[string]*tokenBucket{}}
}

// allow takes a token from origin's bucket, if there is one.
func (l *originLimiter) allow(origin string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[origin]
	if b == nil {
		if len(l.buckets) >= maxOrigins {
			l.sweep(now)
		}
		b = &tokenBucket{tokens: l.burst, at: now}
		l.buckets[origin] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *originLimiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= maxOrigins {
		clear(l.buckets)
	}
}

// logLimiter lets one line per key through per period: for everything a
// remote server can trigger.
type logLimiter struct {
	every time.Duration

	mu   sync.Mutex
	last map[string]time.Time
}

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, last: map[string]time.Time{}}
}

func (l *logLimiter) ok(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, seen := l.last[key]; seen && now.Sub(t) < l.every {
		return false
	}
	if len(l.last) >= maxOrigins {
		clear(l.last)
	}
	l.last[key] = now
	return true
}

func (l *logLimiter) warn(log *slog.Logger, key, msg string, args ...any) {
	if l.ok(key, time.Now()) {
		log.Warn(msg, args...)
	}
}

func (l *logLimiter) debug(log *slog.Logger, key, msg string, args ...any) {
	if l.ok(key, time.Now()) {
		log.Debug(msg, args...)
	}
}
