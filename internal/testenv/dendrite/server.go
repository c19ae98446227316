package dendritetest

import (
	"bufio"
	"bytes"
	"context"
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

	"gopkg.in/yaml.v3"
)

const (
	modulePath   = "github.com/presence-bridge/presence-bridge"
	startTimeout = 60 * time.Second
	stopTimeout  = 15 * time.Second
)

// Options configures Start.
type Options struct {
	ServerName string // default "localhost"
	// AppServiceRegistration is the YAML text of an appservice registration
	// file to load (optional; empty = none).
	AppServiceRegistration string
}

// Server is a running Dendrite homeserver.
type Server struct {
	ServerName string
	URL        string // "http://127.0.0.1:PORT"
	Dir        string

	binDir     string
	configPath string
	addr       string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	log  lockedBuffer
}

// Start creates a fresh Dendrite (SQLite, federation off, presence on,
// registration only through the shared secret or an appservice) in a temp
// dir, starts it on a free loopback port and waits until the client API
// answers. The server is stopped by t.Cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	begin := time.Now()
	if opts.ServerName == "" {
		opts.ServerName = "localhost"
	}
	s := &Server{
		ServerName: opts.ServerName,
		Dir:        t.TempDir(),
		binDir:     binDir(t),
	}
	s.addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	s.URL = "http://" + s.addr
	s.writeConfig(t, opts)
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("dendrite log (%s):\n%s", s.Dir, tail(s.Log(), 60))
		}
	})
	s.launch(t)
	t.Logf("dendrite %s started in %v (data in %s)", s.URL, time.Since(begin).Round(time.Millisecond), s.Dir)
	return s
}

// binDir finds the directory with the Dendrite binaries, skipping the test
// (or failing it in CI) when they have not been built.
func binDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("DENDRITE_BIN_DIR")
	if dir == "" {
		if root, err := ModuleRoot(); err == nil {
			dir = filepath.Join(root, ".build", "bin")
		}
	}
	for _, name := range []string{"dendrite", "generate-keys", "generate-config", "create-account"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			msg := fmt.Sprintf("dendrite binaries not found in %q (set DENDRITE_BIN_DIR or build with: make dendrite): %v", dir, err)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return dir
}

// ModuleRoot walks up from the working directory to this module's go.mod
// (the one declaring the presence-bridge module) and returns its directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			sc := bufio.NewScanner(bytes.NewReader(data))
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == modulePath {
					return dir, nil
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root not found")
		}
		dir = parent
	}
}

// writeConfig generates the signing key and dendrite.yaml in s.Dir.
func (s *Server) writeConfig(t testing.TB, opts Options) {
	t.Helper()
	data := filepath.Join(s.Dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil { // Dendrite does not create it
		t.Fatal(err)
	}
	key := filepath.Join(s.Dir, "matrix_key.pem")
	s.run(t, "generate-keys", "--private-key", key)
	out := s.run(t, "generate-config", "-dir", data, "-server", s.ServerName, "-ci")

	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatalf("parse generated config: %v", err)
	}
	set := func(path string, v any) {
		keys := strings.Split(path, ".")
		m := cfg
		for _, k := range keys[:len(keys)-1] {
			next, ok := m[k].(map[string]any)
			if !ok {
				t.Fatalf("generated config has no section %q (for %s)", k, path)
			}
			m = next
		}
		m[keys[len(keys)-1]] = v
	}
	set("global.private_key", key)
	set("global.disable_federation", true)
	set("global.presence.enable_inbound", true) // else PUT presence is a silent no-op
	set("global.presence.enable_outbound", true)
	// Open registration is refused at start unless reCAPTCHA is configured;
	// create-account (shared secret) and appservices still work.
	set("client_api.registration_disabled", true)
	set("logging", []any{map[string]any{"type": "std", "level": "info"}})
	if opts.AppServiceRegistration != "" {
		reg := filepath.Join(s.Dir, "registration.yaml")
		if err := os.WriteFile(reg, []byte(opts.AppServiceRegistration), 0o600); err != nil {
			t.Fatal(err)
		}
		set("app_service_api.config_files", []any{reg})
	}
	checkPaths(t, s.Dir, "", cfg)

	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.configPath = filepath.Join(s.Dir, "dendrite.yaml")
	if err := os.WriteFile(s.configPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkPaths fails if any absolute path (or sqlite "file:" URI) in the
// config points outside dir.
func checkPaths(t testing.TB, dir, at string, v any) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			checkPaths(t, dir, at+"."+k, e)
		}
	case []any:
		for i, e := range v {
			checkPaths(t, dir, fmt.Sprintf("%s[%d]", at, i), e)
		}
	case string:
		p := strings.TrimPrefix(v, "file:")
		if filepath.IsAbs(p) && !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("config %s = %q is outside %s", at, v, dir)
		}
	}
}

// run runs a helper binary in s.Dir and returns its stdout.
func (s *Server) run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(s.binDir, name), args...)
	cmd.Dir = s.Dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// launch starts the dendrite process and waits until it serves requests.
func (s *Server) launch(t testing.TB) {
	t.Helper()
	begin := time.Now()
	cmd := exec.Command(filepath.Join(s.binDir, "dendrite"),
		"-config", s.configPath, "-http-bind-address", s.addr)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = &s.log, &s.log
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dendrite: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.ready() {
			t.Logf("dendrite process answering after %v", time.Since(begin).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dendrite not ready after %v; log:\n%s", startTimeout, tail(s.Log(), 60))
		}
		select {
		case <-done:
			t.Fatalf("dendrite exited during start (%v); log:\n%s", cmd.ProcessState, tail(s.Log(), 60))
		case <-tick.C:
		}
	}
}

func (s *Server) ready() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/_matrix/client/versions", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Stop sends SIGTERM, waits a bounded time, then kills. It is idempotent.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart stops the server and starts it again on the same port with the
// same data. Existing access tokens stay valid.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.launch(t)
}

// Log returns everything Dendrite has written to stdout/stderr so far
// (across restarts).
func (s *Server) Log() string { return s.log.String() }

// CreateUser creates an account with the create-account tool (shared-secret
// registration) and returns a client logged in as it.
func (s *Server) CreateUser(t testing.TB, localpart, password string) *Client {
	t.Helper()
	// create-account exits 1 without printing anything on invalid input.
	if len(password) < 8 {
		t.Fatalf("CreateUser(%q): Dendrite requires passwords of at least 8 characters", localpart)
	}
	s.run(t, "create-account", "-config", s.configPath,
		"-username", localpart, "-password", password, "-url", s.URL)
	return s.Login(t, localpart, password)
}

// Login logs in with a password and returns a client with a new device.
func (s *Server) Login(t testing.TB, localpart, password string) *Client {
	t.Helper()
	c := s.newClient()
	var resp struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	err := c.Do(t.Context(), http.MethodPost, "/_matrix/client/v3/login", map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": localpart},
		"password":   password,
	}, &resp)
	if err != nil {
		t.Fatalf("login %s: %v", localpart, err)
	}
	c.UserID, c.AccessToken, c.DeviceID = resp.UserID, resp.AccessToken, resp.DeviceID
	return c
}

// AppServiceClient returns a client authenticating with the appservice's
// as_token. If userID is not empty, requests are made as that user
// (?user_id=), which must be in the appservice's namespace and, for most
// endpoints, registered first (see RegisterAppServiceUser).
func (s *Server) AppServiceClient(asToken, userID string) *Client {
	c := s.newClient()
	c.UserID, c.AccessToken, c.asUser = userID, asToken, userID
	return c
}

func (s *Server) newClient() *Client {
	return &Client{baseURL: s.URL, http: &http.Client{Timeout: 30 * time.Second}, presence: map[string]Presence{}}
}

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
