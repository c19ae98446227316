package matrixside

import (
	"errors"
	"strconv"
	"time"

	"maunium.net/go/mautrix"
)

// Errors returned by this package. Test for them with errors.Is. Errors
// of the homeserver are mautrix.HTTPError values (errors.Is works with
// mautrix's errcodes, e.g. mautrix.MForbidden).
var (
	// ErrConfig wraps every problem found by [Config.Validate] and [New].
	ErrConfig = errors.New("matrixside: invalid config")
	// ErrBadTransaction is returned for an appservice transaction body that
	// is not JSON or not shaped like a transaction.
	ErrBadTransaction = errors.New("matrixside: malformed transaction")
	// ErrBadCommand wraps the problem of a command from the core that can
	// never be carried out as given (bad address, missing room).
	ErrBadCommand = errors.New("matrixside: bad command")
	// ErrAlreadyRunning is returned by [Side.Run] when called twice.
	ErrAlreadyRunning = errors.New("matrixside: already running")
)

// httpStatus returns the status of a homeserver answer, 0 if there was
// none (network error).
func httpStatus(err error) int {
	var he mautrix.HTTPError
	if errors.As(err, &he) && he.Response != nil {
		return he.Response.StatusCode
	}
	return 0
}

// retryable says whether a failed request may succeed later, and how long
// the homeserver asked to wait (0: choose a backoff): 429 with
// retry_after_ms or Retry-After, 5xx, and network errors (anything that
// is not an answer of the homeserver, nor ErrBadCommand) are retryable.
func retryable(err error) (bool, time.Duration) {
	if err == nil || errors.Is(err, ErrBadCommand) {
		return false, 0
	}
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil {
		// The network: refused, reset, timed out.
		return true, 0
	}
	switch st := he.Response.StatusCode; {
	case st == 429:
		if he.RespError != nil {
			if ms, ok := he.RespError.ExtraData["retry_after_ms"].(float64); ok && ms > 0 {
				return true, time.Duration(ms) * time.Millisecond
			}
		}
		if s, err := strconv.Atoi(he.Response.Header.Get("Retry-After")); err == nil && s > 0 {
			return true, time.Duration(s) * time.Second
		}
		return true, 0
	case st >= 500:
		return true, 0
	}
	return false, 0
}

// unreachable reports whether err says the homeserver is not there: a
// network error or a gateway's 502/503/504. Other answers, errors
// included, show it is up.
func unreachable(err error) bool {
	if err == nil || errors.Is(err, ErrBadCommand) {
		return false
	}
	switch httpStatus(err) {
	case 0, 502, 503, 504:
		return true
	}
	return false
}
