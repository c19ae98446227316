package matrixside

import (
	"context"
	"errors"
	"fmt"

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
