package matrixside

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestZerologToSlog: mautrix's zerolog records arrive in slog with their
// level, message and attributes; request bodies are dropped, per-request
// records come at DEBUG, and what slog would drop is not even formatted.
func TestZerologToSlog(t *testing.T) {
	var buf bytes.Buffer
	z := zerologFor(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if z.GetLevel() != zerolog.InfoLevel {
		t.Errorf("zerolog level %v, want info (what the slog handler enables)", z.GetLevel())
	}
	z.Warn().Str("room_id", "!r:x").Int("n", 3).Str("req_body", "secret status").Msg("Something odd")
	z.Error().Err(errors.New("refused")).Str("url", "http://hs/x").Msg("Request failed")
	z.Debug().Msg("Not shown")
	out := buf.String()
	for _, want := range []string{"level=WARN", `msg="Something odd"`, "lib=mautrix", "room_id=!r:x", "n=3"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in %q", want, out)
		}
	}
	for _, unwanted := range []string{"secret status", "Request failed", "Not shown"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("%q should not be logged at info: %q", unwanted, out)
		}
	}
	buf.Reset()
	z = zerologFor(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	z.Error().Err(errors.New("refused")).Msg("Request failed")
	if out := buf.String(); !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "error=refused") {
		t.Errorf("request record %q, want it at DEBUG with its error", out)
	}
}
