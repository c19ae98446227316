package matrixside

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// The operations capabilities (bridge/ports_ops.go): a presence read on
// request, and whether the homeserver answers for the health check.

var _ bridge.PresenceRequester = (*Side)(nil)

// ErrHomeserverDown is what [Side.Healthy] returns while the homeserver
// does not answer.
var ErrHomeserverDown = errors.New("matrixside: homeserver unreachable")

// Healthy reports whether the homeserver answered the last request or
// probe.
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
	if err := s.readPresence(ctx, id.UserID(u)); err != nil {
		if unreachable(err) {
			return fmt.Errorf("%w: %v", bridge.ErrDisconnected, err)
		}
		return err
	}
	return nil
}

// requestOutcomes counts the homeserver requests by outcome.
type requestOutcomes struct {
	ok, rateLimited, failed, unreachable atomic.Int64
}

func (o *requestOutcomes) count(err error) {
	switch {
	case err == nil:
		o.ok.Add(1)
	case httpStatus(err) == 429:
		o.rateLimited.Add(1)
	case unreachable(err):
		o.unreachable.Add(1)
	default:
		o.failed.Add(1)
	}
}

// HomeserverRequests returns how many requests to the homeserver (and
// transactions from it) ended in each outcome: "ok", "rate_limited"
// (429), "error" (any other answer that is an error), "unreachable"
// (network errors, 502-504). Monotonic.
func (s *Side) HomeserverRequests() map[string]int64 {
	o := &s.health.outcomes
	return map[string]int64{"ok": o.ok.Load(), "rate_limited": o.rateLimited.Load(), "error": o.failed.Load(), "unreachable": o.unreachable.Load()}
}
