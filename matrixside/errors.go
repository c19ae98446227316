package matrixside

import (
	"errors"
	"fmt"
	"time"
)

// Errors returned by this package. Test for them with errors.Is.
var (
	// ErrConfig wraps every problem found by [Config.Validate] and [New].
	ErrConfig = errors.New("matrixside: invalid config")
	// ErrHomeserver is wrapped by every [*HTTPError]: the homeserver
	// answered a request with an error status.
	ErrHomeserver = errors.New("matrixside: homeserver error")
	// ErrBadTransaction is returned for an appservice transaction body that
	// is not JSON or not shaped like a transaction.
	ErrBadTransaction = errors.New("matrixside: malformed transaction")
	// ErrBadCommand is returned for a command from the core that cannot be
	// carried out as given (unknown membership, missing room, bad address).
	ErrBadCommand = errors.New("matrixside: bad command")
	// ErrAlreadyRunning is returned by [Side.Run] when called twice.
	ErrAlreadyRunning = errors.New("matrixside: already running")
)

// HTTPError is a non-2xx answer of the homeserver. It never contains a
// token: Path has no query string.
type HTTPError struct {
	Method  string
	Path    string
	Status  int
	ErrCode string // Matrix errcode, e.g. M_FORBIDDEN
	Message string
	// RetryAfter is retry_after_ms (or the Retry-After header) of a 429.
	RetryAfter time.Duration
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("matrixside: %s %s: HTTP %d %s: %s", e.Method, e.Path, e.Status, e.ErrCode, e.Message)
}

// Unwrap makes errors.Is(err, ErrHomeserver) true.
func (e *HTTPError) Unwrap() error { return ErrHomeserver }

// retryable says whether a failed request may succeed later, and how long
// the homeserver asked to wait (0: choose a backoff).
func retryable(err error) (bool, time.Duration) {
	var he *HTTPError
	if errors.As(err, &he) {
		switch {
		case he.Status == 429:
			return true, he.RetryAfter
		case he.Status >= 500:
			return true, 0
		}
		return false, 0
	}
	// Anything else is the network: refused, reset, timed out.
	return err != nil, 0
}
