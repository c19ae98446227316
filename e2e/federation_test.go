package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/exhttp"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation"

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
	// The first change each way may wait for Dendrite: if it tried to
	// reach the gateway while it was dead, it backs off, and wakes up early
	// for a server that contacts it at most once a minute.
	start := time.Now()
	sendPresence(t, alice, "", "", "away", "after-kill")
	bob.waitPresence(recoverTimeout, ghost, "alice after the restart", is("unavailable", "after-kill"))
	t.Logf("XMPP→Matrix after the restart: %v", time.Since(start).Round(time.Millisecond))
	start, am := time.Now(), markX(alice)
	bob.put("unavailable", "bob-after-kill")
	am.wait(t, recoverTimeout, "bob after the restart", presenceFrom(puppet, withStatus("bob-after-kill")))
	t.Logf("Matrix→XMPP after the restart: %v", time.Since(start).Round(time.Millisecond))
	// Then each is within a second again.
	start = time.Now()
	sendPresence(t, alice, "", "", "", "again")
	got := bob.waitPresence(waitLatency, ghost, "alice again", is("online", "again"))
	within(t, "XMPP→Matrix after the restart", got.At.Sub(start), sloLatency)
	start, am = time.Now(), markX(alice)
	bob.put("online", "bob-again")
	am.wait(t, waitLatency, "bob again", presenceFrom(puppet, withStatus("bob-again")))
	within(t, "Matrix→XMPP after the restart", time.Since(start), sloLatency)
	if n := len(bob.invitesSeen()); n != 0 {
		t.Errorf("bob got %d invites; nobody should be asked again", n)
	}
}

// fedLinked is alice (XMPP) and bob (Dendrite) after fedLink, each having
// seen the other's presence.
func (e *env) fedLinkedPair(xname, mname string) linked {
	e.t.Helper()
	l := linked{alice: e.xmppUser(xname), bob: e.matrixUser(mname)}
	l.puppet, l.ghost = e.puppet(l.bob.UserID), e.ghost(l.alice.JID.Bare().String())
	sendPresence(e.t, l.alice, "", "", "", xname+"-here")
	l.room = e.fedLink(l.alice, l.bob)
	l.bob.waitPresence(flowTimeout, l.ghost, xname+" linked", is("online", xname+"-here"))
	l.bob.put("online", mname+"-here")
	l.alice.Wait(e.t, waitLatency, mname+" at "+xname, presenceFrom(l.puppet, withStatus(mname+"-here")))
	return l
}

// TestFederationStoryStrangerSeesNothing is story 2 over federation: a
// Dendrite user who shares no room with the ghost sees nothing of it,
// and their presence does not reach the XMPP user.
func TestFederationStoryStrangerSeesNothing(t *testing.T) {
	e := newFedEnv(t)
	l := e.fedLinkedPair("alice", "bob")
	eve := e.matrixUser("eve")
	eve.put("online", "eve-here")
	am := markX(l.alice)
	sendPresence(t, l.alice, "", "", "away", "only-for-bob")
	l.bob.waitPresence(waitLatency, l.ghost, "alice's change at bob", is("unavailable", "only-for-bob"))
	quietMx(t, eve, quiet, l.ghost, "the ghost at a stranger", func(dendritetest.Presence) bool { return true })
	quietX(t, am, quiet, "a stranger's presence at alice", presenceFrom(e.puppet(eve.UserID), nil))
}

// TestFederationStoryLeaveEnds is story 3 over federation: the Matrix
// user leaving, and the XMPP user unsubscribing, each end the flow both
// ways; on unsubscribe the ghost shows offline, then leaves the room.
func TestFederationStoryLeaveEnds(t *testing.T) {
	e := newFedEnv(t)
	t.Run("MatrixUserLeaves", func(t *testing.T) {
		l := e.fedLinkedPair("alice", "bob")
		am := markX(l.alice)
		ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
		defer cancel()
		if err := l.bob.Leave(ctx, l.room); err != nil {
			t.Fatal(err)
		}
		am.wait(t, waitLatency, "bob's puppet unavailable", presenceFrom(l.puppet, unavailable))
		am.wait(t, waitLatency, "unsubscribed from bob's puppet", subscriptionFrom(l.puppet, "unsubscribed"))
		am = markX(l.alice)
		l.bob.put("unavailable", "bob-after-leave")
		quietX(t, am, quiet, "bob's presence after he left", presenceFrom(l.puppet, nil))
	})
	t.Run("XMPPUserUnsubscribes", func(t *testing.T) {
		l := e.fedLinkedPair("carol", "dan")
		l.bob.skipPresence()
		sendPresence(t, l.alice, "unsubscribed", l.puppet, "", "")
		l.bob.waitPresence(waitLatency, l.ghost, "carol's ghost offline", func(p dendritetest.Presence) bool { return p.Presence == "offline" })
		poll(t, flowTimeout, "the ghost left the room", func() error {
			var members struct {
				Joined map[string]any `json:"joined"`
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := l.bob.Do(ctx, "GET", "/_matrix/client/v3/rooms/"+l.room+"/joined_members", nil, &members); err != nil {
				return err
			}
			if _, in := members.Joined[l.ghost]; in {
				return fmt.Errorf("%s still joined", l.ghost)
			}
			return nil
		})
		cm := markX(l.alice)
		l.bob.put("unavailable", "dan-after-unsubscribed")
		quietX(t, cm, quiet, "dan's presence after carol revoked", presenceFrom(l.puppet, func(s prosodytest.Stanza) bool { return s.Type == "" }))
		sendPresence(t, l.alice, "", "", "away", "carol-after-unsubscribed")
		quietMx(t, l.bob, quiet, l.ghost, "carol's presence after she revoked", func(p dendritetest.Presence) bool { return p.Presence != "offline" })
	})
}

// TestFederationStoryDendriteDown is story 6 over federation, with a
// 15-second outage instead of a minute (the gateway's queue for the
// destination only backs off, up to retry_max, the same way for any
// length): what alice changed meanwhile reaches bob once Dendrite is
// back, the latest only.
func TestFederationStoryDendriteDown(t *testing.T) {
	e := newFedEnv(t)
	l := e.fedLinkedPair("alice", "bob")
	l.bob.skipPresence()
	e.hs.Stop()
	for _, s := range []string{"down-1", "down-2", "down-3"} {
		sendPresence(t, l.alice, "", "", "away", s)
		pingServer(t, l.alice)
	}
	outage := time.NewTimer(15 * time.Second)
	<-outage.C
	e.hs.Start(t)
	l.bob.waitPresence(recoverTimeout, l.ghost, "the latest presence after the outage", is("unavailable", "down-3"))
	for _, p := range l.bob.presenceOf(l.ghost) {
		if s := statusOf(p.Presence); s == "down-1" || s == "down-2" {
			t.Errorf("an intermediate presence arrived: %v", p)
		}
	}
}

// fedClient is a federation client for a forging server: loopback
// allowed, any certificate, and the Content-Type mautrix leaves out.
func fedClient(name string, key *federation.SigningKey) *federation.Client {
	settings := exhttp.SensibleClientSettings
	settings.InsecureTLS = true
	c := federation.NewClient(name, key, federation.NewInMemoryCache(), settings)
	c.AllowIP = func(net.IP) bool { return true }
	c.HTTP.Transport = contentTypeJSON{c.HTTP.Transport}
	return c
}

type contentTypeJSON struct{ next http.RoundTripper }

func (t contentTypeJSON) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		r = r.Clone(r.Context())
		r.Header.Set("Content-Type", "application/json")
	}
	return t.next.RoundTrip(r)
}

// TestFederationStoryForgedTransactions is story 4 over federation: a
// server of its own pushing presence for bob (a user of Dendrite), and a
// transaction claiming Dendrite's name signed with a key Dendrite does
// not publish, change nothing at alice; bob's real presence still does.
func TestFederationStoryForgedTransactions(t *testing.T) {
	e := newFedEnv(t)
	l := e.fedLinkedPair("alice", "bob")
	key := federation.GenerateSigningKey()
	mux := http.NewServeMux()
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	forger := strings.TrimPrefix(srv.URL, "https://")
	(&federation.KeyServer{KeyProvider: &federation.StaticServerKey{ServerName: forger, Key: key}}).Register(mux, zerolog.Nop())

	push := []byte(`{"edu_type":"m.presence","content":{"push":[{"user_id":"` + l.bob.UserID + `","presence":"online","status_msg":"forged","last_active_ago":0}]}}`)
	send := func(c *federation.Client, origin string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.SendTransaction(ctx, &federation.ReqSendTransaction{Destination: e.listen, TxnID: "forged-" + randomToken()[:8],
			Origin: origin, PDUs: []federation.PDU{}, EDUs: []federation.EDU{push}})
		return err
	}
	am := markX(l.alice)
	if err := send(fedClient(forger, key), forger); err != nil {
		t.Fatalf("a validly signed transaction from another server: %v (it is accepted, and ignored)", err)
	}
	err := send(fedClient(e.hs.ServerName, federation.GenerateSigningKey()), e.hs.ServerName)
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusUnauthorized {
		t.Errorf("a transaction claiming Dendrite's name: %v, want 401", err)
	}
	quietX(t, am, quiet, "forged presence at alice", presenceFrom(l.puppet, withStatus("forged")))
	l.bob.put("unavailable", "real")
	am.wait(t, waitLatency, "bob's real presence", presenceFrom(l.puppet, withStatus("real")))
}

// BenchmarkFederationLatency is BenchmarkLatency with the bridge as a
// federation gateway: XMPP→Matrix is alice's stanza → an m.presence EDU
// to Dendrite → bob's /sync; Matrix→XMPP is bob's PUT → Dendrite's EDU
// to the gateway → the puppet's presence at alice.
func BenchmarkFederationLatency(b *testing.B) {
	e := newFedEnv(b)
	l := e.fedLinkedPair("alice", "bob")
	measureLatency(b, l)
}
