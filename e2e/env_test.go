package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	"github.com/presence-bridge/presence-bridge/internal/testenv/natscluster"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Timeouts of the environment. They only matter when something is broken.
const (
	buildTimeout    = 3 * time.Minute
	readyTimeout    = 30 * time.Second
	stopTimeout     = 30 * time.Second
	pollEvery       = 25 * time.Millisecond
	coalesceWindow  = 250 * time.Millisecond
	password        = "password-e2e"
	logTailOnFailed = 400
)

var (
	binDir    string // temporary directory of the bridge binary, made by TestMain
	buildOnce sync.Once
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "presence-bridge-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// bridgeBinary builds ./cmd/presence-bridge once per test binary run.
func bridgeBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(binDir, "presence-bridge")
	buildOnce.Do(func() {
		root, err := dendritetest.ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/presence-bridge")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/presence-bridge: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

// options changes the environment of one test.
type options struct {
	// policy is xmpp.subscription_policy; "" is ask.
	policy string
	// homeserverURL, if set, returns the homeserver_url the bridge uses,
	// given Dendrite's real URL (to put a proxy in between).
	homeserverURL func(t testing.TB, real string) string
	// offlineGrace, if set, is xmpp.offline_grace and matrix.offline_grace:
	// how long a server may be gone before the other side sees its users
	// offline.
	offlineGrace time.Duration
	// cluster runs the bridge split by role over a three-node NATS
	// cluster (see cluster_test.go): e.bridge is then the core instance.
	cluster bool
}

// env is one test's world: Prosody, Dendrite, the bridge process and a tap
// on the bridge's bus.
type env struct {
	t    testing.TB
	xmpp *prosodytest.Server
	hs   *dendritetest.Server
	ns   mapping.Namespace
	dir  string

	cfgPath  string
	natsURL  string
	listen   string // the appservice listener
	asToken  string
	hsToken  string
	opts     options
	readyCli *prosodytest.Client // an XMPP client that only asks the component whether it is up

	bridge *bridgeProc
	tap    *busTap

	cluster   *natscluster.Cluster // with options.cluster
	instances []*instance          // the xmpp and matrix instances, with options.cluster
}

// newEnv starts Prosody and Dendrite, then the bridge, and waits until the
// bridge is ready.
func newEnv(t testing.TB, opts options) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), opts: opts}
	e.xmpp = prosodytest.Start(t, prosodytest.Options{}) // skips (or fails on CI) without Prosody
	if opts.cluster {
		e.cluster = natscluster.Start(t, 3)
	}
	bin := bridgeBinary(t)
	e.ns = mapping.Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: "localhost", ComponentDomain: e.xmpp.ComponentDomain}
	e.listen = fmt.Sprintf("127.0.0.1:%d", prosodytest.FreePort(t))
	e.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", prosodytest.FreePort(t))
	e.asToken = randomToken()
	hsToken := randomToken()
	e.hsToken = hsToken
	policy := opts.policy
	if policy == "" {
		policy = "ask"
	}

	// The registration only depends on what is known before Dendrite
	// runs; the homeserver URL is filled in afterwards.
	e.cfgPath = filepath.Join(e.dir, "config.yaml")
	e.writeConfig(policy, "http://127.0.0.1:1", hsToken)
	regPath := filepath.Join(e.dir, "registration.yaml")
	out, err := exec.Command(bin, "generate-registration", "-config", e.cfgPath, "-out", regPath).CombinedOutput()
	if err != nil {
		t.Fatalf("generate-registration: %v\n%s", err, out)
	}
	reg, err := os.ReadFile(regPath)
	if err != nil {
		t.Fatal(err)
	}
	e.hs = dendritetest.Start(t, dendritetest.Options{AppServiceRegistration: string(reg)})
	hsURL := e.hs.URL
	if opts.homeserverURL != nil {
		hsURL = opts.homeserverURL(t, e.hs.URL)
	}
	e.writeConfig(policy, hsURL, hsToken)

	e.xmpp.Register(t, "ready", password)
	e.readyCli = e.xmpp.Login(t, "ready", password, "probe")
	e.bridge = &bridgeProc{bin: bin, cfgPath: e.cfgPath, logPath: filepath.Join(e.dir, "bridge.log")}
	t.Cleanup(func() {
		e.bridge.stop(stopTimeout)
		if t.Failed() || os.Getenv("E2E_LOG") != "" {
			t.Logf("bridge log (%s), last %d lines:\n%s", e.bridge.logPath, logTailOnFailed, e.bridge.logTail(logTailOnFailed))
		}
	})
	if opts.cluster {
		e.startCluster(bin, policy, hsURL, hsToken)
		return e
	}
	e.startBridge()
	e.tap = newBusTap(t, e.natsURL, filepath.Join(e.dir, "nats", bridge.TokenFile))
	return e
}

// writeConfig writes the bridge's config.yaml.
func (e *env) writeConfig(policy, homeserverURL, hsToken string) {
	e.t.Helper()
	e.writeConfigSecret(policy, homeserverURL, hsToken, e.xmpp.ComponentSecret)
}

// writeConfigSecret is writeConfig with the component secret given.
func (e *env) writeConfigSecret(policy, homeserverURL, hsToken, secret string) {
	e.t.Helper()
	_, port, _ := net.SplitHostPort(e.xmpp.ComponentAddr)
	grace := ""
	if e.opts.offlineGrace > 0 {
		grace = e.opts.offlineGrace.String()
	}
	cfg := fmt.Sprintf(`xmpp:
  host: 127.0.0.1
  port: %s
  component_domain: %s
  secret: %s
  subscription_policy: %s
  reconnect_min: 100ms
  reconnect_max: 2s
  shutdown_timeout: 5s
  max_auth_failures: 2
%s
matrix:
  homeserver_url: %s
  homeserver_domain: %s
  as_token: %s
  hs_token: %s
  listen: %s
  ghost_prefix: %s
  # poll_interval stays at its default (30s): Matrix presence must reach
  # the bridge through the bot's /sync, the bot being in every direct chat
  # a ghost opens, not by polling.
%s
%s
core:
  coalesce_window: %s
logging:
  level: debug
`, port, e.xmpp.ComponentDomain, secret, policy, graceLine(grace),
		homeserverURL, e.ns.HomeserverDomain, e.asToken, hsToken, e.listen, e.ns.GhostPrefix, graceLine(grace)+e.appserviceURLLine(),
		e.natsSection(), coalesceWindow)
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// natsSection is the config's nats section: the embedded server, or
// with options.cluster the three-node cluster and the lease timings.
func (e *env) natsSection() string {
	if e.cluster != nil {
		return fmt.Sprintf("nats:\n  urls: [%s]\n  replicas: 3\ncluster:\n  lease_ttl: %v\n  lease_renew: %v",
			strings.Join(e.cluster.URLs(), ", "), leaseTTL, leaseRenew)
	}
	return fmt.Sprintf("nats:\n  embedded:\n    data_dir: %s\n    listen: %s", filepath.Join(e.dir, "nats"), strings.TrimPrefix(e.natsURL, "nats://"))
}

func graceLine(grace string) string {
	if grace == "" {
		return ""
	}
	return "  offline_grace: " + grace
}

// startBridge starts the bridge process and waits until it is ready.
func (e *env) startBridge() {
	e.t.Helper()
	if err := e.bridge.start(); err != nil {
		e.t.Fatal(err)
	}
	e.waitReady()
}

// waitReady polls until the appservice port accepts connections and the
// component answers disco#info.
func (e *env) waitReady() {
	e.t.Helper()
	begin := time.Now()
	i := 0
	poll(e.t, readyTimeout, "bridge ready", func() error {
		if e.bridge.exited() {
			e.t.Fatalf("bridge exited during start: %v", e.bridge.exitErr())
		}
		i++
		return e.checkReady(i)
	})
	e.t.Logf("bridge ready after %v", time.Since(begin).Round(time.Millisecond))
}

// poll calls check every pollEvery until it returns nil, failing the test
// with its last error after timeout.
func poll(t testing.TB, timeout time.Duration, desc string, check func() error) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("%s: not done after %v: %v", desc, timeout, err)
		case <-tick.C:
		}
	}
}

func (e *env) checkReady(i int) error {
	conn, err := net.DialTimeout("tcp", e.listen, time.Second)
	if err != nil {
		return fmt.Errorf("appservice port: %w", err)
	}
	conn.Close()
	return e.componentUp(e.readyCli, fmt.Sprintf("ready-%d", i))
}

// componentUp asks the component for disco#info through c; any answer but
// a result (Prosody bounces stanzas while the component is away) is an error.
func (e *env) componentUp(c *prosodytest.Client, id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id += "-" + randomToken()[:6]
	err := c.Send(ctx, `<iq type='get' id='`+id+`' to='`+e.xmpp.ComponentDomain+`'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`)
	if err != nil {
		return err
	}
	s := c.Wait(e.t, 10*time.Second, "disco#info answer "+id, func(s prosodytest.Stanza) bool { return s.Name == "iq" && s.ID == id })
	if s.Type != "result" {
		return fmt.Errorf("component not connected: %s", s.Raw)
	}
	return nil
}

// waitComponent polls through c until the component answers again.
func (e *env) waitComponent(c *prosodytest.Client, timeout time.Duration) {
	e.t.Helper()
	i := 0
	poll(e.t, timeout, "component connected", func() error {
		i++
		return e.componentUp(c, fmt.Sprintf("up-%d", i))
	})
}

// puppet returns the puppet JID of a Matrix user.
func (e *env) puppet(mxid string) string {
	e.t.Helper()
	jTyped, err := e.ns.PuppetJID(mapping.UserID(mxid))
	j := string(jTyped)
	if err != nil {
		e.t.Fatal(err)
	}
	return j
}

// ghost returns the ghost MXID of an XMPP user.
func (e *env) ghost(bareJID string) string {
	e.t.Helper()
	gTyped, err := e.ns.GhostMXID(mapping.BareJID(bareJID))
	g := string(gTyped)
	if err != nil {
		e.t.Fatal(err)
	}
	return g
}

// busyPresence is the Matrix presence a dnd XMPP user gets: busy where
// Dendrite advertises MSC3026, else unavailable (DESIGN-NOTES §2).
func (e *env) busyPresence() string {
	e.t.Helper()
	resp, err := http.Get(e.hs.URL + "/_matrix/client/versions")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Unstable map[string]bool `json:"unstable_features"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		e.t.Fatal(err)
	}
	if v.Unstable["org.matrix.msc3026.busy_presence"] || v.Unstable["org.matrix.msc3026.busy"] {
		return "org.matrix.msc3026.busy"
	}
	return "unavailable"
}

// bridgeProc is the bridge running as its own process.
type bridgeProc struct {
	bin, cfgPath, logPath string
	args                  []string // after -config, e.g. -role xmpp

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (b *bridgeProc) start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd != nil {
		return errors.New("e2e: bridge already running")
	}
	logf, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== e2e: bridge started at %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(b.bin, append([]string{"-config", b.cfgPath}, b.args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("e2e: start bridge: %w", err)
	}
	done := make(chan struct{})
	b.cmd, b.done, b.err = cmd, done, nil
	go func() {
		err := cmd.Wait()
		logf.Close()
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
		close(done)
	}()
	return nil
}

func (b *bridgeProc) exited() bool {
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

func (b *bridgeProc) exitErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// signal sends sig and waits up to timeout for the process to exit; it
// kills it after that. It returns the exit error and whether the process
// exited in time by itself. A stopped bridge is a no-op.
func (b *bridgeProc) signal(sig syscall.Signal, timeout time.Duration) (exitErr error, inTime bool) {
	b.mu.Lock()
	cmd, done := b.cmd, b.done
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return nil, true
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		inTime = true
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
	}
	return b.exitErr(), inTime
}

func (b *bridgeProc) stop(timeout time.Duration) { b.signal(syscall.SIGTERM, timeout) }

// logTail returns the last n lines of the bridge's log.
func (b *bridgeProc) logTail(n int) string {
	data, err := os.ReadFile(b.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logLines returns the lines of the bridge's log containing every one of
// substrs.
func (b *bridgeProc) logLines(substrs ...string) []string {
	f, err := os.Open(b.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		for _, s := range substrs {
			if !strings.Contains(sc.Text(), s) {
				continue next
			}
		}
		out = append(out, sc.Text())
	}
	return out
}

// busTap records every event on the bridge's bus, to know what the bridge
// has seen. It follows the bridge across restarts (nats.go reconnects).
type busTap struct {
	t  testing.TB
	nc *nats.Conn

	mu     sync.Mutex
	events []tapped
	notify chan struct{}
}

type tapped struct {
	Subject string
	Dir     bridge.Direction
	Event   *bridge.Event
	At      time.Time
}

func newBusTap(t testing.TB, url, tokenFile string) *busTap {
	t.Helper()
	tap := &busTap{t: t, notify: make(chan struct{})}
	opts := []nats.Option{nats.Name("e2e-tap"), nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}
	// The bridge's listener wants the token it keeps in its data dir (a
	// test's own cluster has none: tokenFile "").
	if tokenFile != "" {
		tok, err := os.ReadFile(tokenFile)
		if err != nil {
			t.Fatalf("e2e: the bridge's nats token: %v", err)
		}
		opts = append(opts, nats.Token(strings.TrimSpace(string(tok))))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("e2e: connect to the bridge's nats: %v", err)
	}
	tap.nc = nc
	t.Cleanup(nc.Close)
	if _, err := nc.Subscribe("pb.v1.>", tap.record); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return tap
}

func (b *busTap) record(m *nats.Msg) {
	ev, err := bridge.DecodeEvent(m.Data)
	if err != nil {
		return
	}
	dir, _, _, _, err := bridge.ParseSubject(m.Subject)
	if err != nil {
		return
	}
	b.mu.Lock()
	b.events = append(b.events, tapped{Subject: m.Subject, Dir: dir, Event: ev, At: time.Now()})
	close(b.notify)
	b.notify = make(chan struct{})
	b.mu.Unlock()
}

// mark returns a position: wait looks only at events after it.
func (b *busTap) mark() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.events)
}

// wait returns the first event after mark matching pred, waiting up to
// timeout; it fails the test on timeout.
func (b *busTap) wait(from int, timeout time.Duration, desc string, pred func(tapped) bool) tapped {
	b.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		for _, ev := range b.events[min(from, len(b.events)):] {
			if pred(ev) {
				b.mu.Unlock()
				return ev
			}
		}
		notify := b.notify
		b.mu.Unlock()
		select {
		case <-notify:
		case <-deadline.C:
			b.t.Fatalf("bus: no %s within %v", desc, timeout)
		}
	}
}

// has reports whether an event after mark matches pred.
func (b *busTap) has(from int, pred func(tapped) bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, ev := range b.events[min(from, len(b.events)):] {
		if pred(ev) {
			return true
		}
	}
	return false
}

// inPresence matches presence about user that a side observed.
func inPresence(net mapping.Network, user string, pred func(mapping.Presence) bool) func(tapped) bool {
	return func(ev tapped) bool {
		return ev.Dir == bridge.In && ev.Event.Kind == bridge.KindPresence && ev.Event.Origin == net &&
			ev.Event.User == user && (pred == nil || pred(*ev.Event.Presence))
	}
}

// outPresence matches a presence command of the core about user.
func outPresence(net mapping.Network, user string, pred func(mapping.Presence) bool) func(tapped) bool {
	return func(ev tapped) bool {
		return ev.Dir == bridge.Out && ev.Event.Kind == bridge.KindPresence && ev.Event.Origin == net &&
			ev.Event.User == user && (pred == nil || pred(*ev.Event.Presence))
	}
}

func randomToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}
