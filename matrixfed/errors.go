package matrixfed

import "errors"

// The errors of the gateway.
var (
	// ErrConfig wraps configuration problems found by New.
	ErrConfig = errors.New("matrixfed: bad configuration")
	// ErrKey is returned by New when the signing key cannot be read or made.
	ErrKey = errors.New("matrixfed: signing key")
	// ErrBadCommand wraps a command of the core that can never be carried
	// out (logged and acknowledged).
	ErrBadCommand = errors.New("matrixfed: bad command")
	// ErrNotInRoom is returned for a membership command about a room the
	// gateway knows nothing of.
	ErrNotInRoom = errors.New("matrixfed: room unknown to the gateway")
)
