package dendrite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/presence-bridge/presence-bridge/internal/proc"
)

const (
	startTimeout = 60 * time.Second
	stopTimeout  = 15 * time.Second
	pollInterval = 50 * time.Millisecond
)

// BuildHint tells how to build the Dendrite binaries.
const BuildHint = "make dendrite"

// Binaries are the programs Start needs, all from the tool module in
// tools/dendrite.
var Binaries = []string{"dendrite", "generate-keys", "generate-config", "create-account"}

// ErrNotBuilt is returned (wrapped) by CheckBinaries and Start when a
// Dendrite binary is missing.
var ErrNotBuilt = errors.New("dendrite: binaries not built (" + BuildHint + ")")

// Config describes one Dendrite.
type Config struct {
	Dir        string // holds dendrite.yaml, the signing key and data/; required
	BinDir     string // where the Binaries are; required
	Addr       string // the client API listener, "127.0.0.1:PORT"; required
	ServerName string // default "localhost"
	// AppServiceRegistration is the path of an appservice registration
	// file to load (optional).
	AppServiceRegistration string
	// Log receives Dendrite's stdout and stderr (optional).
	Log io.Writer
	// FederationAddr, if set ("127.0.0.1:PORT"), turns federation on: a
	// self-signed TLS certificate is generated (once), the server name
	// becomes "localhost:PORT" (an explicit port: no .well-known or SRV
	// lookups) unless ServerName is set, federation is served over HTTPS
	// there, remote certificates are not checked, and loopback peers are
	// allowed (generate-config -ci empties the deny lists).
	FederationAddr string
}

// Server is a running (or stopped) Dendrite.
type Server struct {
	ServerName string
	URL        string // "http://127.0.0.1:PORT"
	Dir        string

	// FederationURL is "https://127.0.0.1:PORT" when federation is on.
	FederationURL string

	binDir     string
	configPath string
	addr       string
	fedAddr    string
	log        io.Writer

	mu sync.Mutex
	p  *proc.Process // nil when stopped
}

// CheckBinaries returns an error wrapping ErrNotBuilt unless every one of
// Binaries is in dir.
func CheckBinaries(dir string) error {
	for _, name := range Binaries {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("%w: %v", ErrNotBuilt, err)
		}
	}
	return nil
}

// Start writes the configuration into cfg.Dir (a signing key is generated
// the first time and kept; the SQLite databases in data/ survive), starts
// Dendrite and waits until its client API answers.
//
// The configuration is generate-config -ci (presence in and out on, rate
// limits off) with: every file inside Dir, federation off, open
// registration off (accounts come from create-account's shared secret or
// an appservice), and the appservice registration if given.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Dir == "" || cfg.BinDir == "" || cfg.Addr == "" {
		return nil, errors.New("dendrite: Config needs Dir, BinDir and Addr")
	}
	if err := CheckBinaries(cfg.BinDir); err != nil {
		return nil, err
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "localhost"
		if cfg.FederationAddr != "" {
			_, port, err := net.SplitHostPort(cfg.FederationAddr)
			if err != nil {
				return nil, fmt.Errorf("dendrite: federation address: %w", err)
			}
			cfg.ServerName = "localhost:" + port
		}
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	s := &Server{
		ServerName: cfg.ServerName,
		URL:        "http://" + cfg.Addr,
		Dir:        cfg.Dir,
		binDir:     cfg.BinDir,
		addr:       cfg.Addr,
		log:        cfg.Log,
		configPath: filepath.Join(cfg.Dir, "dendrite.yaml"),
		fedAddr:    cfg.FederationAddr,
	}
	if cfg.FederationAddr != "" {
		s.FederationURL = "https://" + cfg.FederationAddr
	}
	if err := s.writeConfig(ctx, cfg); err != nil {
		return nil, err
	}
	if err := s.Start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// writeConfig generates the signing key (once) and dendrite.yaml in s.Dir.
func (s *Server) writeConfig(ctx context.Context, cfg Config) error {
	data := filepath.Join(s.Dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil { // Dendrite does not create it
		return fmt.Errorf("dendrite: %w", err)
	}
	key := filepath.Join(s.Dir, "matrix_key.pem")
	if _, err := os.Stat(key); err != nil {
		if _, err := s.run(ctx, "generate-keys", "--private-key", key); err != nil {
			return err
		}
	}
	if s.fedAddr != "" {
		if _, err := os.Stat(filepath.Join(s.Dir, "server.crt")); err != nil {
			if _, err := s.run(ctx, "generate-keys", "--tls-cert", "server.crt", "--tls-key", "server.key", "--server", "localhost", "--keysize", "2048"); err != nil {
				return err
			}
		}
	}
	out, err := s.run(ctx, "generate-config", "-dir", data, "-server", s.ServerName, "-ci")
	if err != nil {
		return err
	}

	var conf map[string]any
	if err := yaml.Unmarshal([]byte(out), &conf); err != nil {
		return fmt.Errorf("dendrite: parse generated config: %w", err)
	}
	var problems []string
	set := func(path string, v any) {
		keys := strings.Split(path, ".")
		m := conf
		for _, k := range keys[:len(keys)-1] {
			next, ok := m[k].(map[string]any)
			if !ok {
				problems = append(problems, fmt.Sprintf("generated config has no section %q (for %s)", k, path))
				return
			}
			m = next
		}
		m[keys[len(keys)-1]] = v
	}
	set("global.private_key", key)
	set("global.disable_federation", s.fedAddr == "")
	if s.fedAddr != "" {
		set("federation_api.disable_tls_validation", true)
	}
	set("global.presence.enable_inbound", true) // else PUT presence is a silent no-op
	set("global.presence.enable_outbound", true)
	// Open registration is refused at start unless reCAPTCHA is configured;
	// create-account (shared secret) and appservices still work.
	set("client_api.registration_disabled", true)
	set("logging", []any{map[string]any{"type": "std", "level": "info"}})
	checkPaths(s.Dir, "", conf, &problems)
	if cfg.AppServiceRegistration != "" {
		set("app_service_api.config_files", []any{cfg.AppServiceRegistration})
	}
	if len(problems) > 0 {
		return fmt.Errorf("dendrite: %s", strings.Join(problems, "; "))
	}

	b, err := yaml.Marshal(conf)
	if err != nil {
		return fmt.Errorf("dendrite: %w", err)
	}
	if err := os.WriteFile(s.configPath, b, 0o600); err != nil {
		return fmt.Errorf("dendrite: %w", err)
	}
	return nil
}

// checkPaths adds a problem for every absolute path (or sqlite "file:"
// URI) in the config outside dir: everything Dendrite writes stays there.
func checkPaths(dir, at string, v any, problems *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			checkPaths(dir, at+"."+k, e, problems)
		}
	case []any:
		for i, e := range v {
			checkPaths(dir, fmt.Sprintf("%s[%d]", at, i), e, problems)
		}
	case string:
		p := strings.TrimPrefix(v, "file:")
		if filepath.IsAbs(p) && !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			*problems = append(*problems, fmt.Sprintf("config %s = %q is outside %s", at, v, dir))
		}
	}
}

// ConfigPath is the path of dendrite.yaml.
func (s *Server) ConfigPath() string { return s.configPath }

// run runs a helper binary in s.Dir and returns its stdout.
func (s *Server) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, name), args...)
	cmd.Dir = s.Dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// Not the arguments: create-account's include a password.
		return "", fmt.Errorf("dendrite: %s: %v\n%s%s", name, err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// Start starts a stopped server again on the same address with the same
// data, and waits until it serves requests. Existing access tokens stay
// valid.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p != nil {
		return errors.New("dendrite: already running")
	}
	args := []string{"-config", s.configPath, "-http-bind-address", s.addr}
	if s.fedAddr != "" {
		args = append(args, "-https-bind-address", s.fedAddr,
			"-tls-cert", filepath.Join(s.Dir, "server.crt"), "-tls-key", filepath.Join(s.Dir, "server.key"))
	}
	cmd := exec.Command(filepath.Join(s.binDir, "dendrite"), args...)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = s.log, s.log
	p, err := proc.Start(cmd)
	if err != nil {
		return err
	}
	s.p = p

	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for !s.ready(ctx) {
		select {
		case <-p.Done():
			s.p = nil
			return fmt.Errorf("dendrite: exited during start: %v", p.Err())
		case <-deadline.C:
			s.stopLocked()
			return fmt.Errorf("dendrite: not answering after %v", startTimeout)
		case <-ctx.Done():
			s.stopLocked()
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func (s *Server) ready(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/_matrix/client/versions", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Done returns a channel closed when the running Dendrite exits, or nil
// when it is stopped.
func (s *Server) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return nil
	}
	return s.p.Done()
}

// Pid returns the process ID of the running Dendrite, or 0.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return 0
	}
	return s.p.Pid()
}

// Stop sends SIGTERM, waits a bounded time, then kills. It is idempotent.
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

// Restart stops the server and starts it again on the same address with
// the same data.
func (s *Server) Restart(ctx context.Context) error {
	s.Stop()
	return s.Start(ctx)
}

// CreateAccount creates an account with the create-account tool
// (shared-secret registration). The password must have at least 8
// characters; an existing account is an error.
func (s *Server) CreateAccount(ctx context.Context, localpart, password string) error {
	// create-account exits 1 without printing anything on invalid input.
	if len(password) < 8 {
		return fmt.Errorf("dendrite: create account %q: passwords need at least 8 characters", localpart)
	}
	_, err := s.run(ctx, "create-account", "-config", s.configPath,
		"-username", localpart, "-password", password, "-url", s.URL)
	return err
}

// Login logs in with a password and returns a client with a new device.
func (s *Server) Login(ctx context.Context, localpart, password string) (*Client, error) {
	return Login(ctx, s.URL, localpart, password)
}

// AppServiceClient returns a client of this server authenticating with an
// as_token; see the package function AppServiceClient.
func (s *Server) AppServiceClient(asToken, userID string) *Client {
	return AppServiceClient(s.URL, asToken, userID)
}
