package e2e

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
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// newFedEnv is newEnv in federation mode: Dendrite federates over TLS
// on loopback, with no appservice; the bridge is a federation gateway
// named 127.0.0.1:<port> (an explicit port: no .well-known or SRV) with
// a self-signed certificate, allowed to reach loopback.
func newFedEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir()}
	e.xmpp = prosodytest.Start(t, prosodytest.Options{})
	bin := bridgeBinary(t)
	e.listen = fmt.Sprintf("127.0.0.1:%d", prosodytest.FreePort(t))
	e.ns = mapping.Namespace{HomeserverDomain: e.listen, ComponentDomain: e.xmpp.ComponentDomain, OwnServer: true}
	e.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", prosodytest.FreePort(t))
	e.hs = dendritetest.Start(t, dendritetest.Options{Federation: true})
	cert, key := selfSignedCert(t, e.dir)
	_, port, _ := net.SplitHostPort(e.xmpp.ComponentAddr)
	cfg := fmt.Sprintf(`xmpp:
  host: 127.0.0.1
  port: %s
  component_domain: %s
  secret: %s
  subscription_policy: ask
  reconnect_min: 100ms
  reconnect_max: 2s
  shutdown_timeout: 5s
matrix:
  mode: federation
  federation:
    server_name: %s
    listen: %s
    tls_cert: %s
    tls_key: %s
    data_dir: %s
    retry_min: 200ms
    retry_max: 2s
    allow_private_addresses: true
    insecure_skip_verify: true
nats:
  embedded:
    data_dir: %s
    listen: %s
core:
  coalesce_window: %s
logging:
  level: debug
`, port, e.xmpp.ComponentDomain, e.xmpp.ComponentSecret, e.listen, e.listen, cert, key,
		filepath.Join(e.dir, "federation"), filepath.Join(e.dir, "nats"), strings.TrimPrefix(e.natsURL, "nats://"), coalesceWindow)
	e.cfgPath = filepath.Join(e.dir, "config.yaml")
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.xmpp.Register(t, "ready", password)
	e.readyCli = e.xmpp.Login(t, "ready", password, "probe")
	e.bridge = &bridgeProc{bin: bin, cfgPath: e.cfgPath, logPath: filepath.Join(e.dir, "bridge.log")}
	t.Cleanup(func() {
		e.bridge.stop(stopTimeout)
		if t.Failed() || os.Getenv("E2E_LOG") != "" {
			t.Logf("bridge log (%s), last %d lines:\n%s", e.bridge.logPath, logTailOnFailed, e.bridge.logTail(logTailOnFailed))
		}
	})
	e.startBridge()
	e.tap = newBusTap(t, e.natsURL, filepath.Join(e.dir, "nats", bridge.TokenFile))
	return e
}

func selfSignedCert(t testing.TB, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
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

// fedLink: bob (Dendrite) opens a direct chat with alice's ghost; the
// gateway gets the invite over federation and the core asks alice (a
// subscribe from bob's puppet); alice approves and asks back, as XMPP
// clients do; the gateway joins. bob's client starts syncing after the
// join (see dendritetest: Dendrite v0.15.2 can miss a federated join for
// a device already syncing).
func (e *env) fedLink(alice *prosodytest.Client, bob *mxUser) string {
	e.t.Helper()
	puppet, ghost := e.puppet(bob.UserID), e.ghost(alice.JID.Bare().String())
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	room, err := bob.CreateRoom(ctx, []string{ghost}, true)
	if err != nil {
		e.t.Fatalf("bob invites the ghost: %v", err)
	}
	alice.Wait(e.t, flowTimeout, "subscribe from "+puppet, subscriptionFrom(puppet, "subscribe"))
	sendPresence(e.t, alice, "subscribed", puppet, "", "")
	sendPresence(e.t, alice, "subscribe", puppet, "", "")
	alice.Wait(e.t, flowTimeout, "subscribed from "+puppet, subscriptionFrom(puppet, "subscribed"))
	return room
}

// TestFederationStoryInviteApproveBothWays is story 1 over federation:
// a Dendrite user opens a direct chat with an XMPP user's ghost, the XMPP
// user approves in their client, the gateway joins, and each then sees
// the other's presence and status within a second; the XMPP user's idle
// time reaches the Matrix user's /sync as last_active_ago.
func TestFederationStoryInviteApproveBothWays(t *testing.T) {
	e := newFedEnv(t)
	alice := e.xmppUser("alice")
	bob := e.matrixUser("bob")
	puppet, ghost := e.puppet(bob.UserID), e.ghost(alice.JID.Bare().String())
	sendPresence(t, alice, "", "", "", "hello")
	e.fedLink(alice, bob)
	bob.waitPresence(flowTimeout, ghost, "alice after the approval", is("online", "hello"))

	start := time.Now()
	sendPresence(t, alice, "", "", "dnd", "busy-1")
	got := bob.waitPresence(waitLatency, ghost, "alice dnd", is("unavailable", "busy-1"))
	within(t, "XMPP→Matrix over federation", got.At.Sub(start), sloLatency)

	// Dendrite v0.15.2's incremental /sync shows only presence whose last
	// activity is under 5 minutes old (GetPresenceAfter): the idle time
	// stays under that.
	idle := 3 * time.Minute
	start = time.Now()
	send(t, alice, `<presence><show>away</show><status>idle-2</status><idle xmlns='urn:xmpp:idle:1' since='`+
		time.Now().Add(-idle).UTC().Format(time.RFC3339)+`'/></presence>`)
	got = bob.waitPresence(waitLatency, ghost, "alice idle", is("unavailable", "idle-2"))
	within(t, "XMPP idle→Matrix over federation", got.At.Sub(start), sloLatency)
	if ago := time.Duration(got.LastActiveAgo) * time.Millisecond; ago < idle || ago > idle+time.Minute {
		t.Errorf("last_active_ago = %v in bob's /sync, want about %v (alice's XEP-0319 idle)", ago, idle)
	} else {
		t.Logf("alice idle for %v shows as last_active_ago %v", idle, ago)
	}

	start, am := time.Now(), markX(alice)
	bob.put("unavailable", "bob-away")
	am.wait(t, waitLatency, "bob away", presenceFrom(puppet, func(s prosodytest.Stanza) bool { return s.Show == "away" && s.Status == "bob-away" }))
	within(t, "Matrix→XMPP over federation", time.Since(start), sloLatency)
}

// TestFederationStoryKilled is story 5 over federation: the gateway is
// killed (SIGKILL) and started again; its key and memberships survive
// and presence flows both ways again without anyone acting.
func TestFederationStoryKilled(t *testing.T) {
	e := newFedEnv(t)
	alice := e.xmppUser("alice")
	bob := e.matrixUser("bob")
	puppet, ghost := e.puppet(bob.UserID), e.ghost(alice.JID.Bare().String())
	sendPresence(t, alice, "", "", "", "alice-here")
	e.fedLink(alice, bob)
	bob.waitPresence(flowTimeout, ghost, "alice linked", is("online", "alice-here"))
	keyPath := filepath.Join(e.dir, "federation", "signing.key")
	key, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}

	if _, inTime := e.bridge.signal(syscall.SIGKILL, stopTimeout); !inTime {
		t.Fatal("bridge did not die of SIGKILL")
	}
	e.startBridge()
	if again, err := os.ReadFile(keyPath); err != nil || string(again) != string(key) {
		t.Fatalf("signing key changed across the restart (%v)", err)
	}
	start := time.Now()
	sendPresence(t, alice, "", "", "away", "after-kill")
	got := bob.waitPresence(recoverTimeout, ghost, "alice after the restart", is("unavailable", "after-kill"))
	within(t, "XMPP→Matrix after the restart", got.At.Sub(start), sloLatency)
	start, am := time.Now(), markX(alice)
	bob.put("unavailable", "bob-after-kill")
	am.wait(t, recoverTimeout, "bob after the restart", presenceFrom(puppet, withStatus("bob-after-kill")))
	within(t, "Matrix→XMPP after the restart", time.Since(start), sloLatency)
	if n := len(bob.invitesSeen()); n != 0 {
		t.Errorf("bob got %d invites; nobody should be asked again", n)
	}
}
