package matrixside

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// zerologFor returns a zerolog logger that writes into h: mautrix logs
// with zerolog, the project with slog (a gap of the library). Records are
// parsed back from zerolog's JSON, so the logger only produces what h
// would keep (its level is the lowest one h enables), and mautrix's own
// attributes come through as slog attributes, under "lib=mautrix".
// mautrix's per-request records ("Request failed" at ERROR for every
// refused connection while the homeserver is away) come at DEBUG: the
// side logs the outcomes it acts on itself.
func zerologFor(h slog.Handler) zerolog.Logger {
	ctx := context.Background()
	level := zerolog.Disabled
	for _, l := range []struct {
		s slog.Level
		z zerolog.Level
	}{{slog.LevelError, zerolog.ErrorLevel}, {slog.LevelWarn, zerolog.WarnLevel}, {slog.LevelInfo, zerolog.InfoLevel}, {slog.LevelDebug, zerolog.DebugLevel}} {
		if h.Enabled(ctx, l.s) {
			level = l.z
		}
	}
	return zerolog.New(slogWriter{h: h}).Level(level)
}

// slogWriter is the zerolog.LevelWriter behind zerologFor.
type slogWriter struct{ h slog.Handler }

func (w slogWriter) Write(p []byte) (int, error) { return w.WriteLevel(zerolog.NoLevel, p) }

// droppedKeys are zerolog fields that are not passed on: the level and
// message become the record's, and request bodies (presence status
// messages, registration requests) stay out of the logs.
var droppedKeys = map[string]bool{zerolog.LevelFieldName: true, zerolog.MessageFieldName: true, zerolog.TimestampFieldName: true, "req_body": true}

func (w slogWriter) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	level := slog.LevelDebug
	switch {
	case l >= zerolog.ErrorLevel && l <= zerolog.PanicLevel:
		level = slog.LevelError
	case l == zerolog.WarnLevel:
		level = slog.LevelWarn
	case l == zerolog.InfoLevel:
		level = slog.LevelInfo
	}
	ctx := context.Background()
	if !w.h.Enabled(ctx, level) {
		return len(p), nil
	}
	var fields map[string]any
	if err := json.Unmarshal(p, &fields); err != nil {
		fields = map[string]any{zerolog.MessageFieldName: string(p)}
	}
	msg, _ := fields[zerolog.MessageFieldName].(string)
	if strings.HasPrefix(msg, "Request ") {
		level = slog.LevelDebug
		if !w.h.Enabled(ctx, level) {
			return len(p), nil
		}
	}
	r := slog.NewRecord(time.Now(), level, msg, 0)
	r.AddAttrs(slog.String("lib", "mautrix"))
	for k, v := range fields {
		if !droppedKeys[k] {
			r.AddAttrs(slog.Any(k, v))
		}
	}
	// A logging failure must not fail mautrix's request handling.
	_ = w.h.Handle(ctx, r)
	return len(p), nil
}
