package matrixside

import (
	"context"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
)

func answer(status int, header http.Header, resp *mautrix.RespError) error {
	if header == nil {
		header = http.Header{}
	}
	return mautrix.HTTPError{Response: &http.Response{StatusCode: status, Header: header}, RespError: resp}
}

func TestErrorClassification(t *testing.T) {
	limited := &mautrix.RespError{ErrCode: "M_LIMIT_EXCEEDED", ExtraData: map[string]any{"retry_after_ms": float64(400)}}
	tests := []struct {
		name        string
		err         error
		retry       bool
		after       time.Duration
		unreachable bool
	}{
		{"none", nil, false, 0, false},
		{"refused", mautrix.HTTPError{Message: "request error", WrappedError: syscall.ECONNREFUSED}, true, 0, true},
		{"timed out", fmt.Errorf("put: %w", context.DeadlineExceeded), true, 0, true},
		{"429 retry_after_ms", answer(429, nil, limited), true, 400 * time.Millisecond, false},
		{"429 Retry-After", answer(429, http.Header{"Retry-After": {"2"}}, nil), true, 2 * time.Second, false},
		{"500", answer(500, nil, nil), true, 0, false},
		{"502 from a proxy", answer(502, nil, nil), true, 0, true},
		{"403", answer(403, nil, &mautrix.RespError{ErrCode: "M_FORBIDDEN"}), false, 0, false},
		{"wrapped 404", fmt.Errorf("failed to ensure registered: %w", answer(404, nil, nil)), false, 0, false},
		{"bad command", fmt.Errorf("%w: no ghost", ErrBadCommand), false, 0, false},
	}
	for _, tt := range tests {
		retry, after := retryable(tt.err)
		if retry != tt.retry || after != tt.after || unreachable(tt.err) != tt.unreachable {
			t.Errorf("%s: retryable %v %v, unreachable %v; want %v %v, %v", tt.name, retry, after, unreachable(tt.err), tt.retry, tt.after, tt.unreachable)
		}
	}
}
