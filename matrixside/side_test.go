package matrixside

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

func TestDetectBusy(t *testing.T) {
	for _, tt := range []struct {
		name     string
		features string
		want     bool
	}{
		{"advertised", `{"org.matrix.msc3026.busy_presence":true}`, true},
		{"switched off", `{"org.matrix.msc3026.busy_presence":false}`, false},
		{"absent", `{}`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/_matrix/client/versions" {
					http.NotFound(w, r)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"versions":["v1.11"],"unstable_features":` + tt.features + `}`))
			}))
			defer hs.Close()
			got, err := DetectBusy(t.Context(), hs.URL)
			if err != nil || got != tt.want {
				t.Fatalf("DetectBusy = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	hs := httptest.NewServer(http.NotFoundHandler())
	hs.Close()
	if _, err := DetectBusy(t.Context(), hs.URL); err == nil {
		t.Error("DetectBusy of a closed server: no error")
	}
}

func TestNewRefusesMissingParts(t *testing.T) {
	cfg := testConfig("http://127.0.0.1:8008")
	tr := mapping.NewTranslator(mapping.DefaultTable(), false)
	_, err := New(cfg, mapping.Namespace{GhostPrefix: "_other_", HomeserverDomain: "elsewhere"}, nil, nil, nil, nil)
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("New: %v, want ErrConfig", err)
	}
	for _, want := range []string{"ghost_prefix", "homeserver_domain", "no translator", "no store", "no observer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New's error lacks %q: %v", want, err)
		}
	}
	if _, err := New(cfg, testNS, tr, &bridge.Store{}, &fakeObserver{}, nil); err != nil {
		t.Fatalf("New: %v", err)
	}
}
