package matrixside

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// The operations capabilities (bridge/ports_ops.go): a presence read on
// request, and whether the homeserver answers for the health check.

var (
	_ bridge.PresenceRequester = (*Side)(nil)
	_ bridge.DeliveryReporter  = (*Side)(nil)
)

// OnDelivered makes delivered see every ghost presence the homeserver
// accepted (a PUT answered 2xx), with the ObservedAt of the command that
// asked for it ([bridge.DeliveryReporter]): once per delivered state,
// the latest asked for when several were (only the latest is sent).
// Presences without an ObservedAt, those shown before a membership change
// and the periodic refresh report nothing. Call it before Run; delivered
// must not block.
func (s *Side) OnDelivered(delivered func(observedAt time.Time)) {
	s.out.delivered = delivered
}

// Healthy reports whether the homeserver answered the last request or
// probe: nil, or [ErrHomeserverDown].
func (s *Side) Healthy() error {
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	if s.health.down || s.health.lastFail.After(s.health.lastOK) {
		return ErrHomeserverDown
	}
	return nil
}

// RequestPresence reads a Matrix user's presence from the homeserver; it
// is reported through the observer if it changed. It blocks for one
// request.
func (s *Side) RequestPresence(ctx context.Context, r bridge.PresenceRequest) error {
	u, err := mapping.NewUserID(r.User)
	if err != nil {
		return fmt.Errorf("%w: %v", mapping.ErrUnknownValue, err)
	}
	// An explicit request is answered even when nothing changed since the
	// last report (which the core may have dropped).
	s.in.forget(u)
	if err := s.readPresence(ctx, id.UserID(u)); err != nil {
		if unreachable(err) {
			return fmt.Errorf("%w: %v", bridge.ErrDisconnected, err)
		}
		return err
	}
	return nil
}

// InstrumentRequests makes observe see every request to the homeserver
// (the bot's, the ghosts', the health probe's) with its outcome and how
// long it took: "ok" (2xx), "rate_limited" (429), "unreachable" (no
// answer, or 502-504), "error" (any other status). Call it before Run.
// observe must not block.
// Only requests that reach the network are seen: those the homeserver
// gate holds back are counted by [Side.Counts].
func (s *Side) InstrumentRequests(observe func(outcome string, took time.Duration)) {
	s.transport.base = timedTransport{next: s.transport.base, observe: observe}
}

type timedTransport struct {
	next    http.RoundTripper
	observe func(string, time.Duration)
}

func (t timedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(r)
	outcome := "ok"
	switch {
	case err != nil:
		if r.Context().Err() != nil {
			return resp, err // our own cancellation says nothing about the homeserver
		}
		outcome = "unreachable"
	case resp.StatusCode == http.StatusTooManyRequests:
		outcome = "rate_limited"
	case resp.StatusCode >= 502 && resp.StatusCode <= 504:
		outcome = "unreachable"
	case resp.StatusCode >= 400:
		outcome = "error"
	}
	t.observe(outcome, time.Since(start))
	return resp, err
}
