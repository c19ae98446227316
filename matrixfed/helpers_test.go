package matrixfed

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/internal/testenv/bustest"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and
// localhost into dir and returns the paths of the certificate and key.
func selfSigned(t testing.TB, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// recorder is a MatrixObserver that remembers every report.
type recorder struct {
	mu          sync.Mutex
	presence    []bridge.MatrixPresence
	memberships []bridge.MatrixMembership
	failMember  error
}

func (r *recorder) MatrixPresence(_ context.Context, p bridge.MatrixPresence) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.presence = append(r.presence, p)
	return nil
}

func (r *recorder) MatrixMembership(_ context.Context, m bridge.MatrixMembership) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failMember != nil {
		return r.failMember
	}
	r.memberships = append(r.memberships, m)
	return nil
}

func (r *recorder) MatrixOptOut(context.Context, bridge.OptOut[mapping.UserID]) error { return nil }

func (r *recorder) lastPresence(u mapping.UserID) (mapping.Presence, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.presence) - 1; i >= 0; i-- {
		if r.presence[i].User == u {
			return r.presence[i].Presence, true
		}
	}
	return mapping.Presence{}, false
}

func (r *recorder) findMembership(pred func(bridge.MatrixMembership) bool) (bridge.MatrixMembership, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.memberships {
		if pred(m) {
			return m, true
		}
	}
	return bridge.MatrixMembership{}, false
}

func (r *recorder) presenceCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.presence)
}

// testGateway is a running gateway on 127.0.0.1 with a self-signed
// certificate, allowed to talk to loopback peers.
type testGateway struct {
	*Gateway
	cfg    Config
	ns     mapping.Namespace
	store  *bridge.Store
	obs    *recorder
	cancel context.CancelFunc
	done   chan error
}

func gatewayConfig(t testing.TB, dataDir string) Config {
	cfg := Default()
	port := dendritetest.FreePort(t)
	cfg.ServerName = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.Listen = cfg.ServerName
	cfg.TLSCert, cfg.TLSKey = selfSigned(t, t.TempDir())
	cfg.DataDir = dataDir
	cfg.AllowPrivateAddresses, cfg.InsecureSkipVerify = true, true
	cfg.RetryMin, cfg.RetryMax = 100*time.Millisecond, time.Second
	return cfg
}

func startGateway(t testing.TB, cfg Config, store *bridge.Store, obs *recorder) *testGateway {
	t.Helper()
	ns := mapping.Namespace{GhostPrefix: cfg.GhostPrefix, HomeserverDomain: cfg.ServerName, ComponentDomain: "matrix.xmpp.test", OwnServer: true}
	tr := mapping.NewTranslator(mapping.DefaultTable(), false)
	g, err := New(cfg, ns, tr, store, obs, bustest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tg := &testGateway{Gateway: g, cfg: cfg, ns: ns, store: store, obs: obs, cancel: cancel, done: make(chan error, 1)}
	go func() { tg.done <- g.Run(ctx) }()
	select {
	case <-g.Ready():
	case err := <-tg.done:
		t.Fatalf("gateway stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway not ready")
	}
	t.Cleanup(tg.stop)
	return tg
}

func (tg *testGateway) stop() {
	if tg.cancel == nil {
		return
	}
	tg.cancel()
	tg.cancel = nil
	<-tg.done
}

func (tg *testGateway) ghost(t testing.TB, jid mapping.BareJID) string {
	t.Helper()
	g, err := tg.ns.GhostMXID(jid)
	if err != nil {
		t.Fatal(err)
	}
	return string(g)
}

var zerologNop = zerolog.Nop()
