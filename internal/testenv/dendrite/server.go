package dendritetest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/dendrite"
)

const modulePath = "github.com/presence-bridge/presence-bridge"

// Options configures Start.
type Options struct {
	ServerName string // default "localhost"
	// AppServiceRegistration is the YAML text of an appservice registration
	// file to load (optional; empty = none).
	AppServiceRegistration string
	// Federation turns federation on, over HTTPS on a second free port,
	// with the server name "localhost:<that port>" (see
	// dendrite.Config.FederationAddr).
	Federation bool
}

// Server is a running Dendrite homeserver.
type Server struct {
	ServerName string
	URL        string // "http://127.0.0.1:PORT"
	Dir        string
	// FederationURL is "https://127.0.0.1:PORT" with Options.Federation.
	FederationURL string

	srv *dendrite.Server
	log lockedBuffer
}

// Start creates a fresh Dendrite (SQLite, federation off, presence on,
// registration only through the shared secret or an appservice) in a temp
// dir, starts it on a free loopback port and waits until the client API
// answers. The server is stopped by t.Cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	begin := time.Now()
	s := &Server{Dir: t.TempDir()}
	cfg := dendrite.Config{
		Dir:        s.Dir,
		BinDir:     binDir(t),
		Addr:       fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		ServerName: opts.ServerName,
		Log:        &s.log,
	}
	if opts.Federation {
		cfg.FederationAddr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	}
	if opts.AppServiceRegistration != "" {
		cfg.AppServiceRegistration = filepath.Join(s.Dir, "registration.yaml")
		if err := os.WriteFile(cfg.AppServiceRegistration, []byte(opts.AppServiceRegistration), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := dendrite.Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("%v; log:\n%s", err, tail(s.Log(), 60))
	}
	s.srv, s.ServerName, s.URL, s.FederationURL = srv, srv.ServerName, srv.URL, srv.FederationURL
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("dendrite log (%s):\n%s", s.Dir, tail(s.Log(), 60))
		}
	})
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
	if err := dendrite.CheckBinaries(dir); err != nil {
		msg := fmt.Sprintf("dendrite binaries not found in %q (set DENDRITE_BIN_DIR or build with: %s): %v", dir, dendrite.BuildHint, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
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

// Stop sends SIGTERM, waits a bounded time, then kills. It is idempotent.
func (s *Server) Stop() { s.srv.Stop() }

// Restart stops the server and starts it again on the same port with the
// same data. Existing access tokens stay valid.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.srv.Restart(t.Context()); err != nil {
		t.Fatalf("%v; log:\n%s", err, tail(s.Log(), 60))
	}
}

// Start starts a stopped server again on the same ports with the same
// data (after Stop: a homeserver that was down for a while).
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if err := s.srv.Start(t.Context()); err != nil {
		t.Fatalf("%v; log:\n%s", err, tail(s.Log(), 60))
	}
}

// Log returns everything Dendrite has written to stdout/stderr so far
// (across restarts).
func (s *Server) Log() string { return s.log.String() }

// CreateUser creates an account with the create-account tool (shared-secret
// registration) and returns a client logged in as it.
func (s *Server) CreateUser(t testing.TB, localpart, password string) *Client {
	t.Helper()
	if err := s.srv.CreateAccount(t.Context(), localpart, password); err != nil {
		t.Fatal(err)
	}
	return s.Login(t, localpart, password)
}

// Login logs in with a password and returns a client with a new device.
func (s *Server) Login(t testing.TB, localpart, password string) *Client {
	t.Helper()
	c, err := s.srv.Login(t.Context(), localpart, password)
	if err != nil {
		t.Fatal(err)
	}
	return wrap(c)
}

// AppServiceClient returns a client authenticating with the appservice's
// as_token. If userID is not empty, requests are made as that user
// (?user_id=), which must be in the appservice's namespace and, for most
// endpoints, registered first (see RegisterAppServiceUser).
func (s *Server) AppServiceClient(asToken, userID string) *Client {
	return wrap(s.srv.AppServiceClient(asToken, userID))
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
