package prosody

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/proc"
)

// Timeouts of the server's life cycle. They are generous because CI
// machines can be slow; they only matter when something is broken.
const (
	startTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
	dialTimeout  = 500 * time.Millisecond
	pollInterval = 20 * time.Millisecond
)

// InstallHint tells how to install Prosody on Debian.
const InstallHint = "apt-get install -y prosody"

var (
	// ErrNotInstalled is returned (wrapped) by LookPath and Start when
	// prosody or prosodyctl is not in PATH.
	ErrNotInstalled = errors.New("prosody: not installed (" + InstallHint + ")")
	// ErrPortInUse is returned (wrapped) by Start when Prosody could not
	// listen on one of its ports.
	ErrPortInUse = errors.New("prosody: could not listen on its ports (in use?)")
)

// Config describes one Prosody. Zero values get the defaults shown.
type Config struct {
	Dir             string // holds prosody.cfg.lua, data/, certs/ and the logs; required
	Domain          string // the VirtualHost; default "localhost"
	ComponentDomain string // the XEP-0114 component; default "matrix.localhost"
	ComponentSecret string // required
	C2SPort         int    // client port on 127.0.0.1; required
	ComponentPort   int    // component port on 127.0.0.1; required
	// ExtraComponents are more XEP-0114 components on the same port, for
	// tests that play a hostile server: a component may send from any JID
	// on its own domain (see DialComponent).
	ExtraComponents []Component
}

// Component is an XEP-0114 component domain declared on the server.
type Component struct {
	Domain string
	Secret string
}

// Server is a running (or stopped) Prosody.
type Server struct {
	Domain          string
	ComponentDomain string
	ComponentSecret string
	ExtraComponents []Component
	C2SAddr         string // "127.0.0.1:PORT"
	ComponentAddr   string // "127.0.0.1:PORT"
	Dir             string

	prosody, prosodyctl string
	cfgPath             string

	mu sync.Mutex
	p  *proc.Process // nil when stopped
}

// LookPath returns the paths of prosody and prosodyctl, or an error
// wrapping ErrNotInstalled.
func LookPath() (prosody, prosodyctl string, err error) {
	var missing []string
	prosody, err = exec.LookPath("prosody")
	if err != nil {
		missing = append(missing, "prosody")
	}
	prosodyctl, err = exec.LookPath("prosodyctl")
	if err != nil {
		missing = append(missing, "prosodyctl")
	}
	if len(missing) > 0 {
		return "", "", fmt.Errorf("%s not found in PATH: %w", strings.Join(missing, ", "), ErrNotInstalled)
	}
	return prosody, prosodyctl, nil
}

// Start writes the configuration into cfg.Dir (creating it; existing data
// is kept), starts Prosody and waits until both ports accept connections.
func Start(cfg Config) (*Server, error) {
	prosody, prosodyctl, err := LookPath()
	if err != nil {
		return nil, err
	}
	if cfg.Domain == "" {
		cfg.Domain = "localhost"
	}
	if cfg.ComponentDomain == "" {
		cfg.ComponentDomain = "matrix.localhost"
	}
	if cfg.Dir == "" || cfg.ComponentSecret == "" || cfg.C2SPort == 0 || cfg.ComponentPort == 0 {
		return nil, errors.New("prosody: Config needs Dir, ComponentSecret, C2SPort and ComponentPort")
	}
	for _, c := range cfg.ExtraComponents {
		if c.Domain == "" || c.Secret == "" || c.Domain == cfg.ComponentDomain || c.Domain == cfg.Domain {
			return nil, fmt.Errorf("prosody: extra component %q needs its own domain and a secret", c.Domain)
		}
	}
	s := &Server{
		Domain:          cfg.Domain,
		ComponentDomain: cfg.ComponentDomain,
		ComponentSecret: cfg.ComponentSecret,
		ExtraComponents: cfg.ExtraComponents,
		C2SAddr:         fmt.Sprintf("127.0.0.1:%d", cfg.C2SPort),
		ComponentAddr:   fmt.Sprintf("127.0.0.1:%d", cfg.ComponentPort),
		Dir:             cfg.Dir,
		prosody:         prosody,
		prosodyctl:      prosodyctl,
		cfgPath:         filepath.Join(cfg.Dir, "prosody.cfg.lua"),
	}
	// "certs" only exists to keep certmanager from logging an error.
	for _, d := range []string{"data", "certs"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o750); err != nil {
			return nil, fmt.Errorf("prosody: %w", err)
		}
	}
	if err := os.WriteFile(s.cfgPath, []byte(s.config(cfg.C2SPort, cfg.ComponentPort)), 0o640); err != nil {
		return nil, fmt.Errorf("prosody: writing config: %w", err)
	}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
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
		luaString(s.LogPath()),
		c2sPort, compPort,
		luaString(s.Domain),
		luaString(s.ComponentDomain),
		luaString(s.ComponentSecret),
	)
	for _, c := range s.ExtraComponents {
		fmt.Fprintf(&b, "\nComponent %s\n    component_secret = %s\n", luaString(c.Domain), luaString(c.Secret))
	}
	return b.String()
}

// luaString quotes s as a Lua string literal.
func luaString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`)
	return `"` + r.Replace(s) + `"`
}

// LogPath is Prosody's own log file.
func (s *Server) LogPath() string    { return filepath.Join(s.Dir, "prosody.log") }
func (s *Server) stdoutPath() string { return filepath.Join(s.Dir, "prosody.stdout") }

// Start starts a stopped server again with the same ports, config and data,
// and waits until its ports accept connections.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p != nil {
		return errors.New("prosody: already running")
	}

	var logOffset int64 // only log lines written by this run count for readiness
	if fi, err := os.Stat(s.LogPath()); err == nil {
		logOffset = fi.Size()
	}
	out, err := os.OpenFile(s.stdoutPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("prosody: %w", err)
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(s.prosody, "--config", s.cfgPath, "-F")
	cmd.Dir = s.Dir
	cmd.Stdout = out
	cmd.Stderr = out
	p, err := proc.Start(cmd)
	if err != nil {
		return err
	}
	s.p = p

	if err := s.waitReady(p, logOffset); err != nil {
		s.stopLocked()
		return fmt.Errorf("%w; see %s", err, s.LogPath())
	}
	return nil
}

// waitReady polls until Prosody is listening on both ports, the process exits
// or startTimeout expires. A port counts as ready when it accepts a TCP
// connection and the part of the log written since logOffset shows Prosody
// listening on it: Prosody keeps running when a port is taken by another
// program, and a successful dial alone would not notice that.
func (s *Server) waitReady(p *proc.Process, logOffset int64) error {
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
			return ErrPortInUse
		}
		select {
		case <-p.Done():
			return fmt.Errorf("prosody: exited before it was ready: %v", p.Err())
		case <-deadline.C:
			return fmt.Errorf("prosody: not ready after %v: %v", startTimeout, err)
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
	data, _ := os.ReadFile(s.LogPath())
	if int64(len(data)) < offset {
		return ""
	}
	return string(data[offset:])
}

// Done returns a channel closed when the running Prosody exits, or nil
// when it is stopped.
func (s *Server) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return nil
	}
	return s.p.Done()
}

// Pid returns the process ID of the running Prosody, or 0.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return 0
	}
	return s.p.Pid()
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
	if s.p == nil {
		return
	}
	_ = s.p.Stop(syscall.SIGTERM, stopTimeout)
	s.p = nil
}

// Kill ends Prosody without a goodbye (SIGKILL), as a crash or a cut
// network would: nobody connected to it is told anything. Start or
// Restart brings it back.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return
	}
	_ = s.p.Stop(syscall.SIGKILL, stopTimeout)
	s.p = nil
}

// Restart stops Prosody and starts it again with the same ports, config and
// data directory, waiting until the ports accept connections again.
// Existing client connections are dropped by the restart.
func (s *Server) Restart() error {
	s.Stop()
	return s.Start()
}

// Register creates (or overwrites) an account user@Domain. It works whether
// the server is running or not.
func (s *Server) Register(user, password string) error {
	cmd := exec.Command(s.prosodyctl, "--config", s.cfgPath, "register", user, s.Domain, password)
	cmd.Dir = s.Dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("prosody: register %s@%s: %v\n%s", user, s.Domain, err, out)
	}
	return nil
}

// Log returns the contents of prosody.log, followed by anything Prosody
// printed on stdout/stderr, for failure diagnostics.
func (s *Server) Log() string {
	var b strings.Builder
	logData, err := os.ReadFile(s.LogPath())
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

// DialComponent connects to this server's component port as domain, one
// of the components it declares; see the package function DialComponent.
func (s *Server) DialComponent(ctx context.Context, domain, secret string, opts ...Option) (*Client, error) {
	return DialComponent(ctx, s.ComponentAddr, domain, secret, opts...)
}

// Dial logs in to this server as user@Domain; see the package function Dial.
func (s *Server) Dial(ctx context.Context, user, password, resource string, opts ...Option) (*Client, error) {
	return Dial(ctx, s.C2SAddr, user, s.Domain, password, resource, opts...)
}
