package matrixfed

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// forger is a federation server of its own (a key server on loopback
// TLS) that can sign requests with its key, or with a key it does not
// publish.
type forger struct {
	name   string
	key    *federation.SigningKey
	client *federation.Client
}

func newForger(t *testing.T) *forger {
	t.Helper()
	key := federation.GenerateSigningKey()
	mux := http.NewServeMux()
	srv := httptest.NewUnstartedServer(mux)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	name := strings.TrimPrefix(srv.URL, "https://")
	ks := &federation.KeyServer{KeyProvider: &federation.StaticServerKey{ServerName: name, Key: key}}
	ks.Register(mux, zerologNop)
	return &forger{name: name, key: key, client: testClient(name, key)}
}

func testClient(name string, key *federation.SigningKey) *federation.Client {
	cfg := Default()
	cfg.ServerName, cfg.AllowPrivateAddresses, cfg.InsecureSkipVerify = name, true, true
	return newClient(cfg, key)
}

func status(err error) int {
	var he mautrix.HTTPError
	if errors.As(err, &he) && he.Response != nil {
		return he.Response.StatusCode
	}
	return 0
}

// TestKeyKeptAcrossRestarts: the signing key is generated on the first
// start, kept in the data dir, and served by the key server.
func TestKeyKeptAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	cfg := gatewayConfig(t, dir)
	gw := startGateway(t, cfg, bridge.NewMemoryStore(), &recorder{})
	first := gw.KeyID()
	f := newForger(t)
	keys, err := f.client.ServerKeys(t.Context(), cfg.ServerName)
	if err != nil {
		t.Fatal(err)
	}
	if !keys.HasKey(gw.key.ID) || keys.VerifySelfSignature() != nil {
		t.Fatalf("key server answered %+v", keys)
	}
	ver, err := f.client.Version(t.Context(), cfg.ServerName)
	if err != nil || ver.Server.Name != "presence-bridge" {
		t.Fatalf("version = %+v, %v", ver, err)
	}
	gw.stop()
	gw2 := startGateway(t, cfg, bridge.NewMemoryStore(), &recorder{})
	if gw2.KeyID() != first {
		t.Fatalf("key changed across restarts: %s then %s", first, gw2.KeyID())
	}
}

// TestRefusesUnauthenticatedRequests: no signature, a signature by a key
// the origin does not publish, a signature that does not match, an
// origin that claims another server's name: all 401, nothing reported.
func TestRefusesUnauthenticatedRequests(t *testing.T) {
	cfg := gatewayConfig(t, t.TempDir())
	obs := &recorder{}
	gw := startGateway(t, cfg, bridge.NewMemoryStore(), obs)
	f := newForger(t)
	txn := func(c *federation.Client, origin string) error {
		_, err := c.SendTransaction(t.Context(), &federation.ReqSendTransaction{
			Destination: cfg.ServerName, TxnID: "t" + time.Now().Format("150405.000000000"), Origin: origin,
			PDUs: []federation.PDU{}, EDUs: []federation.EDU{[]byte(`{"edu_type":"m.presence","content":{"push":[{"user_id":"@eve:` + origin + `","presence":"online","last_active_ago":0}]}}`)},
		})
		return err
	}
	// Properly signed: accepted (and ignored: eve shares no room).
	if err := txn(f.client, f.name); err != nil {
		t.Fatalf("signed transaction refused: %v", err)
	}
	cases := map[string]*federation.Client{
		// A key the forger never published.
		"unknown key": testClient(f.name, federation.GenerateSigningKey()),
		// The forger's key ID with other key material: a bad signature.
		"bad signature": testClient(f.name, &federation.SigningKey{ID: f.key.ID, Pub: f.key.Pub, Priv: federation.GenerateSigningKey().Priv}),
	}
	for name, c := range cases {
		if err := txn(c, f.name); status(err) != http.StatusUnauthorized {
			t.Errorf("%s: got %v, want 401", name, err)
		}
	}
	// No signature at all.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, "https://"+cfg.ServerName+"/_matrix/federation/v1/send/x", strings.NewReader(`{"pdus":[]}`))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	hc.CloseIdleConnections()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unsigned: %d, want 401", resp.StatusCode)
	}
	if n := obs.presenceCount(); n != 0 {
		t.Errorf("%d presence reports from refused or foreign transactions", n)
	}
	_ = gw
}

// TestBoundsAndRateLimit: a body over max_request_bytes is refused, and
// an origin over its budget gets 429 while another origin does not.
func TestBoundsAndRateLimit(t *testing.T) {
	cfg := gatewayConfig(t, t.TempDir())
	cfg.OriginRate, cfg.OriginBurst = 0.001, 5
	startGateway(t, cfg, bridge.NewMemoryStore(), &recorder{})
	f, other := newForger(t), newForger(t)
	big := bytes.Repeat([]byte("x"), int(cfg.MaxRequestBytes))
	_, err := f.client.SendTransaction(t.Context(), &federation.ReqSendTransaction{
		Destination: cfg.ServerName, TxnID: "big", Origin: f.name, PDUs: []federation.PDU{},
		EDUs: []federation.EDU{[]byte(`{"edu_type":"x","content":{"x":"` + string(big) + `"}}`)},
	})
	if st := status(err); st != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %v, want 413", err)
	}
	var limited bool
	for i := range 10 {
		_, err := f.client.QueryProfile(t.Context(), cfg.ServerName, id.UserID("@nobody:"+cfg.ServerName))
		if status(err) == http.StatusTooManyRequests {
			limited = i >= 4
			break
		}
	}
	if !limited {
		t.Error("an origin over its burst was never limited")
	}
	if _, err := other.client.QueryProfile(t.Context(), cfg.ServerName, id.UserID("@nobody:"+cfg.ServerName)); status(err) != http.StatusNotFound {
		t.Errorf("another origin: %v, want 404 (not limited)", err)
	}
}
