package prosodytest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Timeouts used by the harness. They are generous because CI machines can be
// slow; they only matter when something is broken.
const (
	startTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
	dialTimeout  = 500 * time.Millisecond
	pollInterval = 20 * time.Millisecond
)

// Server is a running Prosody for one test.
type Server struct {
	Domain          string // "localhost"
	ComponentDomain string // e.g. "matrix.localhost"
	ComponentSecret string
	C2SAddr         string // "127.0.0.1:PORT"
	ComponentAddr   string // "127.0.0.1:PORT"
	Dir             string // temporary directory holding config, data and logs

	prosody    string // path of the prosody binary
	prosodyctl string // path of the prosodyctl binary
	cfgPath    string

	mu   sync.Mutex
	proc *process // nil when stopped
}

// Options configures Start. Zero values get defaults.
type Options struct {
	ComponentDomain string // default "matrix.localhost"
	ComponentSecret string // default "secret"
}

// process is one run of the prosody binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // result of cmd.Wait, valid after done is closed
}

// Start starts Prosody in a temporary directory, waits until both the c2s
// and the component port accept connections and registers t.Cleanup to stop
// it (printing the Prosody log first if the test failed).
//
// If Prosody is not installed the test is skipped, or fails when the
// environment variable CI is "true".
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	prosody, prosodyctl := requireProsody(t)
	if opts.ComponentDomain == "" {
		opts.ComponentDomain = "matrix.localhost"
	}
	if opts.ComponentSecret == "" {
		opts.ComponentSecret = "secret"
	}

	dir := t.TempDir()
	c2sPort := FreePort(t)
	compPort := FreePort(t)
	for compPort == c2sPort {
		compPort = FreePort(t)
	}
	s := &Server{
		Domain:          "localhost",
		ComponentDomain: opts.ComponentDomain,
		ComponentSecret: opts.ComponentSecret,
		C2SAddr:         fmt.Sprintf("127.0.0.1:%d", c2sPort),
		ComponentAddr:   fmt.Sprintf("127.0.0.1:%d", compPort),
		Dir:             dir,
		prosody:         prosody,
		prosodyctl:      prosodyctl,
		cfgPath:         filepath.Join(dir, "prosody.cfg.lua"),
	}
	// "certs" only exists to keep certmanager from logging an error.
	for _, d := range []string{"data", "certs"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatalf("prosodytest: %v", err)
		}
	}
	if err := os.WriteFile(s.cfgPath, []byte(s.config(c2sPort, compPort)), 0o640); err != nil {
		t.Fatalf("prosodytest: writing config: %v", err)
	}

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prosodytest: Prosody log (%s):\n%s", s.Dir, s.Log())
		}
		s.Stop()
	})
	s.start(t)
	return s
}

// requireProsody returns the paths of prosody and prosodyctl, or skips (or
// fails, on CI) the test if they are not installed.
func requireProsody(t testing.TB) (prosody, prosodyctl string) {
	t.Helper()
	var missing []string
	prosody, err := exec.LookPath("prosody")
	if err != nil {
		missing = append(missing, "prosody")
	}
	prosodyctl, err = exec.LookPath("prosodyctl")
	if err != nil {
		missing = append(missing, "prosodyctl")
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("prosodytest: %s not found in PATH; install with: apt-get install -y prosody", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return prosody, prosodyctl
}

// config renders the Prosody configuration file.
func (s *Server) config(c2sPort, compPort int) string {
	var b strings.Builder
	if os.Geteuid() == 0 {
		// Prosody refuses to run as root unless told to (containers, CI).
		b.WriteString("run_as_root = true\n")
	}
	fmt.Fprintf(&b, `pidfile = %[1]s
data_path = %[2]s
certificates = %[3]s
log = { { levels = { min = "info" }, to = "file", filename = %[4]s } }
interfaces = { "127.0.0.1" }
use_ipv6 = false
c2s_ports = { %[5]d }
component_ports = { %[6]d }
component_interfaces = { "127.0.0.1" }
modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping"; "lastactivity" }
modules_disabled = { "s2s" }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"

VirtualHost %[7]s

Component %[8]s
    component_secret = %[9]s
`,
		luaString(filepath.Join(s.Dir, "prosody.pid")),
		luaString(filepath.Join(s.Dir, "data")),
		luaString(filepath.Join(s.Dir, "certs")),
		luaString(s.logPath()),
		c2sPort, compPort,
		luaString(s.Domain),
		luaString(s.ComponentDomain),
		luaString(s.ComponentSecret),
	)
	return b.String()
}

// luaString quotes s as a Lua string literal.
func luaString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`)
	return `"` + r.Replace(s) + `"`
}

func (s *Server) logPath() string    { return filepath.Join(s.Dir, "prosody.log") }
func (s *Server) stdoutPath() string { return filepath.Join(s.Dir, "prosody.stdout") }

// start launches Prosody and waits until its ports accept connections.
func (s *Server) start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		t.Fatalf("prosodytest: Prosody is already running")
	}

	var logOffset int64 // only log lines written by this run count for readiness
	if fi, err := os.Stat(s.logPath()); err == nil {
		logOffset = fi.Size()
	}
	out, err := os.OpenFile(s.stdoutPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatalf("prosodytest: %v", err)
	}
	cmd := exec.Command(s.prosody, "--config", s.cfgPath, "-F")
	cmd.Dir = s.Dir
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("prosodytest: starting prosody: %v", err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	s.proc = p

	if err := s.waitReady(p, logOffset); err != nil {
		s.stopLocked()
		t.Fatalf("prosodytest: %v (the Prosody log is printed at cleanup)", err)
	}
}

// waitReady polls until Prosody is listening on both ports, the process exits
// or startTimeout expires. A port counts as ready when it accepts a TCP
// connection and the part of the log written since logOffset shows Prosody
// listening on it: Prosody keeps running when a port is taken by another
// program, and a successful dial alone would not notice that.
func (s *Server) waitReady(p *process, logOffset int64) error {
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		err := s.checkReady(logOffset)
		if err == nil {
			return nil
		}
		if strings.Contains(s.newLog(logOffset), "Failed to open server port") {
			return errors.New("prosody could not listen on its ports (in use?)")
		}
		select {
		case <-p.done:
			return fmt.Errorf("prosody exited before it was ready: %v", p.err)
		case <-deadline.C:
			return fmt.Errorf("prosody not ready after %v: %v", startTimeout, err)
		case <-tick.C:
		}
	}
}

func (s *Server) checkReady(logOffset int64) error {
	log := s.newLog(logOffset)
	for _, addr := range []string{s.C2SAddr, s.ComponentAddr} {
		_, port, _ := net.SplitHostPort(addr)
		if !strings.Contains(log, "[127.0.0.1]:"+port) {
			return fmt.Errorf("log does not show port %s activated yet", port)
		}
		conn, err := net.DialTimeout("tcp", addr, dialTimeout)
		if err != nil {
			return err
		}
		conn.Close()
	}
	return nil
}

// newLog returns prosody.log from byte offset on.
func (s *Server) newLog(offset int64) string {
	data, _ := os.ReadFile(s.logPath())
	if int64(len(data)) < offset {
		return ""
	}
	return string(data[offset:])
}

// Stop stops Prosody gracefully: SIGTERM, then wait for it to exit. If it has
// not exited after a while it is killed. Stop is a no-op if the server is not
// running, so it is safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	p := s.proc
	if p == nil {
		return
	}
	s.proc = nil
	select {
	case <-p.done:
		return // already exited
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Kill stops Prosody with SIGKILL, as a crash or the OOM killer would: it
// says goodbye to nobody, and the kernel drops its connections. It returns
// once the process has exited; Restart starts it again on the same data.
// Kill is a no-op if the server is not running.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil {
		return
	}
	s.proc = nil
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Restart stops Prosody (unless it is stopped or killed already) and starts
// it again with the same ports, config and data directory, waiting until the
// ports accept connections again. Existing client connections are dropped by
// the restart.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}

// Register creates (or overwrites) an account user@Domain. It works whether
// the server is running or not.
func (s *Server) Register(t testing.TB, user, password string) {
	t.Helper()
	cmd := exec.Command(s.prosodyctl, "--config", s.cfgPath, "register", user, s.Domain, password)
	cmd.Dir = s.Dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("prosodytest: register %s@%s: %v\n%s", user, s.Domain, err, out)
	}
}

// Log returns the contents of prosody.log, followed by anything Prosody
// printed on stdout/stderr, for failure diagnostics.
func (s *Server) Log() string {
	var b strings.Builder
	logData, err := os.ReadFile(s.logPath())
	if err != nil {
		fmt.Fprintf(&b, "(reading prosody.log: %v)\n", err)
	}
	b.Write(logData)
	if out, _ := os.ReadFile(s.stdoutPath()); len(out) > 0 {
		b.WriteString("--- prosody stdout/stderr ---\n")
		b.Write(out)
	}
	return b.String()
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("prosodytest: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
