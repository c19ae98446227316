package metrics_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/metrics"
	"github.com/presence-bridge/presence-bridge/bridge/transport"
	"github.com/presence-bridge/presence-bridge/mapping"
)

type health struct{ down atomic.Bool }

func (h *health) Healthy() error {
	if h.down.Load() {
		return errors.New("stream down")
	}
	return nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// poll calls check until it returns "" or the deadline passes.
func poll(t *testing.T, desc string, check func() string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		msg := check()
		if msg == "" {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("%s: %s", desc, msg)
		case <-tick.C:
		}
	}
}

func TestMetricsAndHealth(t *testing.T) {
	cfg := bridge.Default()
	cfg.Embedded.DataDir = t.TempDir()
	bus, err := bridge.Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	x, mx := &health{}, &health{}
	m, err := metrics.New(metrics.Sources{NATS: bus.Conn(), Store: bus.Store(), XMPP: x, Matrix: mx,
		XMPPConnects: func() int64 { return 3 }, Coalesced: func() int64 { return 7 }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, "127.0.0.1:0", func(a net.Addr) { addr <- a }) }()
	defer func() { cancel(); <-done }()
	base := "http://" + (<-addr).String()

	if _, err := bus.Store().Subscriptions.Put(t.Context(), bridge.PairKey("@b:example.org", "a@x.example"), bridge.Subscription{To: true, From: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Store().Links.Put(t.Context(), bridge.PairKey("@b:example.org", "a@x.example"), bridge.Link{State: bridge.LinkApproved}); err != nil {
		t.Fatal(err)
	}
	pub := transport.NewPublisher(bus)
	for range 3 {
		_ = pub.XMPPPresence(t.Context(), bridge.XMPPPresence{User: "a@x.example", Presence: mapping.Presence{State: mapping.StateAway}})
	}
	_ = pub.ShowGhost(t.Context(), bridge.GhostPresence{User: "a@x.example", Presence: mapping.Presence{State: mapping.StateAway}})
	// Deliveries as the sides report them: the command on the bus alone
	// is no delivery, and a zero observation time is not observed.
	m.Delivered(mapping.NetworkXMPP)(time.Now().Add(-20 * time.Millisecond))
	m.Delivered(mapping.NetworkMatrix)(time.Time{})
	m.ObserveHomeserverRequest("rate_limited", 30*time.Millisecond)
	m.ObserveHomeserverRequest("rate_limited", 40*time.Millisecond)
	m.ObserveHomeserverRequest("ok", 10*time.Millisecond)
	w := m.Watcher(nil)
	w.PresenceChanged(mapping.NetworkXMPP, "a@x.example", bridge.PresenceRecord{Seq: 9}, true)
	w.PresenceChanged(mapping.NetworkXMPP, "a@x.example", bridge.PresenceRecord{}, true) // the opt-out itself: no drop
	w.(bridge.PresenceDropWatcher).PresenceDropped(mapping.NetworkXMPP, bridge.DropStale)

	want := []string{
		`presence_bridge_events_total{direction="in",kind="presence",network="xmpp"} 3`,
		`presence_bridge_events_total{direction="out",kind="presence",network="matrix"} 1`,
		`presence_bridge_end_to_end_seconds_count{from="xmpp"} 1`,
		`presence_bridge_end_to_end_seconds_bucket{from="xmpp",le="0.01"} 0`,
		`presence_bridge_end_to_end_seconds_count{from="matrix"} 0`,
		`presence_bridge_dropped_total{reason="opt_out"} 1`,
		`presence_bridge_dropped_total{reason="stale"} 1`,
		`presence_bridge_dropped_total{reason="loop"} 0`,
		`presence_bridge_coalesced_total 7`,
		`presence_bridge_homeserver_requests_total{outcome="rate_limited"} 2`,
		`presence_bridge_homeserver_requests_total{outcome="unreachable"} 0`,
		`presence_bridge_homeserver_request_seconds_count{outcome="ok"} 1`,
		`presence_bridge_subscriptions{state="both"} 1`,
		`presence_bridge_links{state="approved"} 1`,
		`presence_bridge_xmpp_stream_connects_total 3`,
		`presence_bridge_xmpp_stream_up 1`,
		`presence_bridge_nats_connected 1`,
	}
	poll(t, "metrics", func() string {
		_, body := get(t, base+"/metrics")
		for _, w := range want {
			if !strings.Contains(body, w) {
				return "missing " + w
			}
		}
		return ""
	})
	_, body := get(t, base+"/metrics")
	if strings.Contains(body, "a@x.example") || strings.Contains(body, "@b:example.org") {
		t.Error("a user identifier in the metrics")
	}

	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("healthz %d", code)
	}
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Errorf("readyz %d %s", code, body)
	}
	x.down.Store(true)
	mx.down.Store(true)
	code, body := get(t, base+"/readyz")
	if code != 503 || !strings.Contains(body, "xmpp: stream down") || !strings.Contains(body, "homeserver: stream down") || strings.Contains(body, "nats:") {
		t.Errorf("readyz with both sides down: %d %s", code, body)
	}
	x.down.Store(false)
	mx.down.Store(false)
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Errorf("readyz after recovery %d %s", code, body)
	}
}
