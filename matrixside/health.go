package matrixside

import (
	"context"
	"errors"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// health tells whether the homeserver answers. Every request the side
// makes, and every transaction it gets, is observed; when nothing
// succeeded for a while, a probe (GET /versions) asks. When the
// homeserver has been unreachable for longer than the grace period, every
// Matrix user the side believed online is reported offline (their puppets
// must not look present while nobody can tell); when it answers again,
// their real presence is read and reported.
type health struct {
	grace time.Duration // 0: never report offline
	every time.Duration // probe period
	probe func(context.Context) error

	mu       sync.Mutex
	lastOK   time.Time
	lastFail time.Time
	down     bool
}

func newHealth(grace time.Duration, probe func(context.Context) error) *health {
	every := 5 * time.Second
	if grace > 0 {
		every = min(max(grace/4, 25*time.Millisecond), every)
	}
	return &health{grace: grace, every: every, probe: probe, lastOK: time.Now()}
}

// observe records the outcome of a request to the homeserver. Answers,
// errors included, show it is up; network errors and gateway errors
// (502-504) that it is not. Cancellations say nothing.
func (h *health) observe(err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	now := time.Now()
	h.mu.Lock()
	if unreachable(err) {
		h.lastFail = now
	} else {
		h.lastOK = now
	}
	h.mu.Unlock()
}

// check probes the homeserver if nothing succeeded within a probe period,
// and returns the transition that is due: goneDown when it has been
// unreachable for the grace period, back when it answers again after
// that.
func (h *health) check(ctx context.Context, now time.Time) (goneDown, back bool) {
	h.mu.Lock()
	quiet := now.Sub(h.lastOK) >= h.every
	h.mu.Unlock()
	if quiet {
		pctx, cancel := context.WithTimeout(ctx, max(h.every, time.Second))
		err := h.probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return false, false
		}
		h.observe(err) // a timeout counts as unreachable
		now = time.Now()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !h.down && h.grace > 0 && h.lastFail.After(h.lastOK) && now.Sub(h.lastOK) >= h.grace:
		h.down = true
		return true, false
	case h.down && h.lastOK.After(h.lastFail):
		h.down = false
		return false, true
	}
	return false, false
}

// runHealth watches the homeserver until ctx ends.
func (s *Side) runHealth(ctx context.Context) {
	t := time.NewTicker(s.health.every)
	defer t.Stop()
	var wentOffline map[mapping.UserID]mapping.Presence
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
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
	}
}
