package matrixfed

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// FuzzInbound feeds what a peer controls (a PDU of a transaction, the
// content of an m.presence EDU) to the gateway: it must never panic, and
// never report presence for a user of another server than the origin.
func FuzzInbound(f *testing.F) {
	f.Add([]byte(`{"type":"m.room.member","state_key":"@a:o.test","sender":"@a:o.test","room_id":"!r:o.test","content":{"membership":"join"}}`),
		[]byte(`{"push":[{"user_id":"@a:o.test","presence":"online","status_msg":"hi","last_active_ago":5}],"poll":["@x:gw.test"]}`))
	f.Add([]byte(`{}`), []byte(`{"push":[{"user_id":"@a:elsewhere.test","presence":"unavailable"}]}`))
	f.Add([]byte(`[`), []byte(`null`))
	cfg := Default()
	cfg.ServerName, cfg.TLSCert, cfg.TLSKey, cfg.DataDir = "gw.test", "/c", "/k", f.TempDir()
	obs := &recorder{}
	ns := mapping.Namespace{HomeserverDomain: cfg.ServerName, ComponentDomain: "matrix.xmpp.test", OwnServer: true}
	g, err := New(cfg, ns, mapping.NewTranslator(mapping.DefaultTable(), false), bridge.NewMemoryStore(), obs, nil)
	if err != nil {
		f.Fatal(err)
	}
	// No network: key fetches fail at once (the signatures never verify).
	g.client.HTTP.Transport = noNetwork{}
	ghost := id.UserID("@bob=40xmpp.test:gw.test")
	_, _, err = g.rooms.update(context.Background(), "!r:o.test", true, func(r *room) bool {
		r.Version, r.Via = "10", "o.test"
		r.Ghosts[ghost] = "join"
		r.Members["@a:o.test"] = "join"
		return true
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, pduJSON, eduJSON []byte) {
		ctx := context.Background()
		_, _, _ = g.handlePDU(ctx, "o.test", pduJSON)
		g.handlePresenceEDU(ctx, "o.test", eduJSON)
		obs.mu.Lock()
		defer obs.mu.Unlock()
		for _, p := range obs.presence {
			if _, server, _ := mapping.ParseMXID(string(p.User)); server != "o.test" {
				t.Fatalf("presence reported for %s from origin o.test", p.User)
			}
		}
	})
}

type noNetwork struct{}

func (noNetwork) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("no network in this test")
}
