package matrixside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// health is the side's view of its one dependency, the homeserver, and
// the gate in front of it. Every request the side makes goes through
// gatedTransport, which asks the gate first and reports the outcome:
//
//   - up: requests go out;
//   - down (a network error, a timeout or a 5xx): nothing goes out but one
//     trial request per back-off step (doubling from minBackoff to
//     maxBackoff); every other request fails at once with
//     ErrHomeserverDown, which is retryable. The first answer opens the
//     gate again. runHealth makes the trial when nobody else does;
//   - rate-limited (429): nothing goes out until retry_after_ms (or
//     Retry-After, or the back-off) has passed.
//
// So a dead homeserver gets at most one request per back-off step, however
// many ghosts and commands wait, and the log gets one line per change of
// state, not one per request.
//
// On a longer time scale, when the homeserver has been unreachable for the
// grace period, runHealth reports every Matrix user the side believed
// online as offline (their puppets must not look present while nobody can
// tell); when it answers again, their real presence is read and reported.
type health struct {
	grace      time.Duration // 0: never report offline
	every      time.Duration // probe period while nothing else succeeds
	minBackoff time.Duration
	maxBackoff time.Duration
	probe      func(context.Context) error
	log        *slog.Logger
	gated      *atomic.Uint64 // Counts.HomeserverGated

	mu       sync.Mutex
	lastOK   time.Time
	lastFail time.Time
	// The gate.
	down         bool
	downSince    time.Time
	retryAt      time.Time // down: the next trial
	trial        bool      // a trial request is in flight
	backoff      time.Duration
	limited      bool      // in a rate-limit episode
	limitedUntil time.Time // nothing goes out before
	refused      uint64    // requests refused in the current episode
	changed      chan struct{}
	// The grace period.
	reportedOffline bool
}

func newHealth(grace time.Duration, probe func(context.Context) error, log *slog.Logger, gated *atomic.Uint64) *health {
	every := 5 * time.Second
	if grace > 0 {
		every = min(max(grace/4, 25*time.Millisecond), every)
	}
	return &health{
		grace: grace, every: every, minBackoff: 250 * time.Millisecond, maxBackoff: 10 * time.Second,
		probe: probe, log: log, gated: gated, lastOK: time.Now(), changed: make(chan struct{}),
	}
}

// ErrHomeserverDown is returned, without a request being made, while the
// homeserver is known to be down or rate-limiting the bridge. It is
// retryable: commands that fail with it come again.
var ErrHomeserverDown = errors.New("matrixside: homeserver down or rate-limiting: request not sent")

// gateError is ErrHomeserverDown with the time until the gate may open.
type gateError struct {
	retryIn time.Duration // 0: unknown (a trial is in flight)
	limited bool
}

func (e *gateError) Error() string {
	what := "down"
	if e.limited {
		what = "rate-limiting"
	}
	return fmt.Sprintf("matrixside: homeserver %s: request not sent (retry in %v)", what, e.retryIn)
}

func (e *gateError) Unwrap() error { return ErrHomeserverDown }

// outcome is what a request said about the homeserver.
type outcome uint8

const (
	outcomeNone     outcome = iota // cancelled by the caller: says nothing
	outcomeAnswered                // up (whatever the answer, 429 and 5xx aside)
	outcomeFailed                  // network error, timeout, 5xx
	outcomeLimited                 // 429
)

// noTrialKey marks a context whose requests must never be the trial: the
// bot's /sync long poll, which would hold every other request back for
// its 30 s while the homeserver is up again.
type noTrialKey struct{}

func withoutTrial(ctx context.Context) context.Context {
	return context.WithValue(ctx, noTrialKey{}, true)
}

// admit decides whether a request may go out now; trial is true when it
// is the one request allowed while the homeserver is down. It never
// blocks.
func (h *health) admit(ctx context.Context, now time.Time) (trial bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.closedLocked(now, ctx.Value(noTrialKey{}) != nil); err != nil {
		h.refused++
		h.gated.Add(1)
		return false, err
	}
	if h.down {
		h.trial = true
		return true, nil
	}
	return false, nil
}

// closedLocked returns the error of a request refused at now, nil if it
// may go (as the trial if the homeserver is down).
func (h *health) closedLocked(now time.Time, noTrial bool) error {
	if now.Before(h.limitedUntil) {
		return &gateError{retryIn: h.limitedUntil.Sub(now), limited: true}
	}
	if h.down && (noTrial || h.trial || now.Before(h.retryAt)) {
		var in time.Duration
		if !h.trial {
			in = max(h.retryAt.Sub(now), 0)
		}
		return &gateError{retryIn: in}
	}
	return nil
}

// ready returns ErrHomeserverDown (a *gateError) if a request made now
// would be refused. Membership commands ask first, so that while the
// homeserver is down they fail at once, before any work.
func (h *health) ready(now time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.closedLocked(now, false); err != nil {
		h.refused++
		h.gated.Add(1)
		return err
	}
	return nil
}

// wait returns how long to wait before a request may go out (0: now; -1:
// until the channel is closed), and a channel closed when the gate
// changes.
func (h *health) wait(now time.Time) (time.Duration, <-chan struct{}) {
	return h.waitFor(now, false)
}

// waitFor is wait for a request that may (noTrial false) or may not be the
// trial.
func (h *health) waitFor(now time.Time, noTrial bool) (time.Duration, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case now.Before(h.limitedUntil):
		return h.limitedUntil.Sub(now), h.changed
	case h.down && (h.trial || noTrial):
		return -1, h.changed
	case h.down && now.Before(h.retryAt):
		return h.retryAt.Sub(now), h.changed
	}
	return 0, h.changed
}

// waitOpen waits until a request that is never the trial may go out, the
// gate changes, at most max, or ctx ends. The bot's /sync waits so rather
// than with a back-off of its own, which would keep it away long after the
// homeserver is back.
func (h *health) waitOpen(ctx context.Context, max time.Duration) {
	d, ch := h.waitFor(time.Now(), true)
	if d == 0 {
		return
	}
	if d < 0 || d > max {
		d = max
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
	}
}

func (h *health) broadcastLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// observe records the outcome of a request (trial: it was the trial).
// err is for the log: the first failure of an episode is logged.
func (h *health) observe(trial bool, o outcome, retryAfter time.Duration, err error, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if trial {
		h.trial = false
		defer h.broadcastLocked() // the next trial may be someone else's
	}
	switch o {
	case outcomeAnswered, outcomeLimited:
		h.lastOK = now
		if h.down {
			h.down, h.backoff = false, 0
			h.log.Info("homeserver answers again; requests resume", "down_for", now.Sub(h.downSince).Round(time.Millisecond), "requests_held_back", h.refused)
			h.refused = 0
			h.broadcastLocked()
		}
		if o == outcomeAnswered {
			if h.limited && !now.Before(h.limitedUntil) {
				h.limited, h.backoff = false, 0
				h.log.Info("homeserver rate limit over; requests resume", "requests_held_back", h.refused)
				h.refused = 0
			}
			if !h.limited {
				h.backoff = 0
			}
			return
		}
		if retryAfter <= 0 {
			h.backoff = min(max(h.backoff*2, h.minBackoff), h.maxBackoff)
			retryAfter = h.backoff
		}
		if until := now.Add(retryAfter); until.After(h.limitedUntil) {
			h.limitedUntil = until
		}
		if !h.limited {
			h.limited = true
			h.log.Warn("homeserver rate-limits the bridge; requests to it paused", "retry_in", retryAfter)
		}
	case outcomeFailed:
		h.lastFail = now
		switch {
		case !h.down:
			h.down, h.downSince, h.backoff, h.refused = true, now, h.minBackoff, 0
			h.retryAt = now.Add(h.backoff)
			h.log.Warn("homeserver unreachable; requests to it paused, one trial per back-off step", "retry_in", h.backoff, "err", err)
			h.broadcastLocked()
		case trial:
			h.backoff = min(h.backoff*2, h.maxBackoff)
			h.retryAt = now.Add(h.backoff)
			h.log.Debug("homeserver still unreachable", "retry_in", h.backoff, "err", err)
		}
		// A failure of a request sent before the gate closed changes nothing.
	}
}

// hint records that the homeserver pushed a request to the side: it is
// there, so a trial may go at once.
func (h *health) hint(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastOK = now
	if h.down && !h.trial && now.Before(h.retryAt) {
		h.retryAt = now
		h.broadcastLocked()
	}
}

// nextCheck returns how long runHealth may sleep.
func (h *health) nextCheck(now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.every
	if h.down && !h.trial {
		d = min(d, h.retryAt.Sub(now))
	}
	return max(d, 10*time.Millisecond)
}

// check probes the homeserver if the gate is due for a trial or, while it
// is up and a grace period is set, if nothing succeeded within a probe
// period; it returns the
// transition of the grace period that is due: goneDown when the
// homeserver has been unreachable for the grace period, back when it
// answers again after that.
func (h *health) check(ctx context.Context, now time.Time) (goneDown, back bool) {
	h.mu.Lock()
	// Quiet probes are for the grace period; the gate's trial is always
	// made, or a gate closed while nothing else asks would stay closed.
	probe := h.closedLocked(now, false) == nil && (h.down || h.grace > 0 && now.Sub(h.lastOK) >= h.every)
	h.mu.Unlock()
	if probe {
		pctx, cancel := context.WithTimeout(ctx, max(h.every, time.Second))
		_ = h.probe(pctx) // observed by the transport; a timeout counts as unreachable
		cancel()
		if ctx.Err() != nil {
			return false, false
		}
		now = time.Now()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !h.reportedOffline && h.grace > 0 && h.lastFail.After(h.lastOK) && now.Sub(h.lastOK) >= h.grace:
		h.reportedOffline = true
		return true, false
	case h.reportedOffline && h.lastOK.After(h.lastFail):
		h.reportedOffline = false
		return false, true
	}
	return false, false
}

// gatedTransport is the http.RoundTripper of every request the side makes
// to the homeserver: it asks the gate, and tells it the outcome. It also
// bounds each request, body included, by timeout: an http.Client with a
// Timeout would do so with a goroutine and a timer per request for a
// RoundTripper it does not know.
type gatedTransport struct {
	h       *health
	base    http.RoundTripper
	timeout time.Duration
}

func (t *gatedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	trial, err := t.h.admit(r.Context(), time.Now())
	if err != nil {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), t.timeout)
	resp, err := t.base.RoundTrip(r.WithContext(ctx))
	o, after := outcomeOf(ctx, resp, err)
	logErr := err
	if err == nil && o != outcomeAnswered {
		logErr = fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	t.h.observe(trial, o, after, logErr, time.Now())
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelOnClose ends a request's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// outcomeOf classifies a request's result, with the wait a 429 asks for.
func outcomeOf(ctx context.Context, resp *http.Response, err error) (outcome, time.Duration) {
	switch {
	case err != nil && (errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled)):
		return outcomeNone, 0
	case err != nil:
		return outcomeFailed, 0
	case resp.StatusCode == http.StatusTooManyRequests:
		return outcomeLimited, retryAfterOf(resp)
	case resp.StatusCode >= 500:
		return outcomeFailed, 0
	}
	return outcomeAnswered, 0
}

// retryAfterOf reads the wait a 429 asks for: retry_after_ms in the
// Matrix error body, else the Retry-After header (seconds); 0 if neither.
// The body stays readable for the caller.
func retryAfterOf(resp *http.Response) time.Duration {
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
	var body struct {
		RetryAfterMS int64 `json:"retry_after_ms"`
	}
	if json.Unmarshal(head, &body) == nil && body.RetryAfterMS > 0 {
		return time.Duration(body.RetryAfterMS) * time.Millisecond
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 0
}

// runHealth watches the homeserver until ctx ends: it makes the gate's
// trial when nobody else does, probes when nothing succeeded for a while,
// reports Matrix users offline after the grace period, and flushes the
// sampled logs and the ghost presence accepted by the homeserver.
func (s *Side) runHealth(ctx context.Context) {
	timer := time.NewTimer(s.health.nextCheck(time.Now()))
	defer timer.Stop()
	var wentOffline map[mapping.UserID]mapping.Presence
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		goneDown, back := s.health.check(ctx, time.Now())
		switch {
		case goneDown:
			wentOffline = s.in.goOffline()
			s.log.Warn("homeserver unreachable for longer than the grace period; reporting Matrix users offline",
				"grace", s.cfg.OfflineGrace, "users", len(wentOffline))
			for u, p := range wentOffline {
				if err := s.obs.MatrixPresence(ctx, bridge.MatrixPresence{User: u, Presence: p}); err != nil {
					s.log.Warn("reporting matrix presence failed", "user", u, "err", err)
				}
			}
		case back:
			s.log.Info("homeserver answers again; reading Matrix presence", "users", len(wentOffline))
			for u := range wentOffline {
				if err := s.readPresence(ctx, id.UserID(u)); err != nil && ctx.Err() == nil {
					s.log.Debug("reading presence after the outage failed", "user", u, "err", err)
				}
			}
			wentOffline = nil
		}
		now := time.Now()
		for _, l := range s.sampled {
			l.flush(now)
		}
		s.state.flush(ctx, now) // ghost presence accepted, written behind (sidestate.go)
		timer.Reset(s.health.nextCheck(now))
	}
}
