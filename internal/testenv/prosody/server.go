package prosodytest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/prosody"
)

// Stanza is a received stanza; see prosody.Stanza.
type Stanza = prosody.Stanza

// RosterItem is a roster entry; see prosody.RosterItem.
type RosterItem = prosody.RosterItem

// Server is a running Prosody for one test.
type Server struct {
	Domain          string // "localhost"
	ComponentDomain string // e.g. "matrix.localhost"
	ComponentSecret string
	C2SAddr         string // "127.0.0.1:PORT"
	ComponentAddr   string // "127.0.0.1:PORT"
	Dir             string // temporary directory holding config, data and logs

	srv *prosody.Server
}

// Options configures Start. Zero values get defaults.
type Options struct {
	ComponentDomain string // default "matrix.localhost"
	ComponentSecret string // default "secret"
	// ExtraComponents are more component domains on the same port, for
	// tests that play a hostile server (see Server.DialComponent).
	ExtraComponents []Component
}

// Component is an XEP-0114 component domain declared on the server.
type Component = prosody.Component

// Start starts Prosody in a temporary directory, waits until both the c2s
// and the component port accept connections and registers t.Cleanup to stop
// it (printing the Prosody log first if the test failed).
//
// If Prosody is not installed the test is skipped, or fails when the
// environment variable CI is "true".
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if _, _, err := prosody.LookPath(); err != nil {
		msg := "prosodytest: " + err.Error()
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if opts.ComponentSecret == "" {
		opts.ComponentSecret = "secret"
	}
	c2sPort := FreePort(t)
	compPort := FreePort(t)
	for compPort == c2sPort {
		compPort = FreePort(t)
	}
	dir := t.TempDir()
	srv, err := prosody.Start(prosody.Config{
		Dir:             dir,
		ComponentDomain: opts.ComponentDomain,
		ComponentSecret: opts.ComponentSecret,
		ExtraComponents: opts.ExtraComponents,
		C2SPort:         c2sPort,
		ComponentPort:   compPort,
	})
	if err != nil {
		t.Fatalf("prosodytest: %v\n%s", err, logOf(dir))
	}
	s := &Server{
		Domain:          srv.Domain,
		ComponentDomain: srv.ComponentDomain,
		ComponentSecret: srv.ComponentSecret,
		C2SAddr:         srv.C2SAddr,
		ComponentAddr:   srv.ComponentAddr,
		Dir:             srv.Dir,
		srv:             srv,
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prosodytest: Prosody log (%s):\n%s", s.Dir, s.Log())
		}
		s.Stop()
	})
	return s
}

// logOf returns what Prosody logged in dir, for a failed start.
func logOf(dir string) string {
	data, _ := os.ReadFile(filepath.Join(dir, "prosody.log"))
	out, _ := os.ReadFile(filepath.Join(dir, "prosody.stdout"))
	return string(data) + string(out)
}

// Stop stops Prosody gracefully: SIGTERM, then wait for it to exit. If it has
// not exited after a while it is killed. Stop is a no-op if the server is not
// running, so it is safe to call more than once.
func (s *Server) Stop() { s.srv.Stop() }

// Kill stops Prosody with SIGKILL, as a crash or the OOM killer would: it
// says goodbye to nobody, and the kernel drops its connections. It returns
// once the process has exited; Restart starts it again on the same data.
// Kill is a no-op if the server is not running.
func (s *Server) Kill() { s.srv.Kill() }

// Restart stops Prosody (unless it is stopped or killed already) and starts
// it again with the same ports, config and data directory, waiting until the
// ports accept connections again. Existing client connections are dropped by
// the restart.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.srv.Restart(); err != nil {
		t.Fatalf("prosodytest: %v (the Prosody log is printed at cleanup)", err)
	}
}

// Register creates (or overwrites) an account user@Domain. It works whether
// the server is running or not.
func (s *Server) Register(t testing.TB, user, password string) {
	t.Helper()
	if err := s.srv.Register(user, password); err != nil {
		t.Fatalf("prosodytest: %v", err)
	}
}

// Log returns the contents of prosody.log, followed by anything Prosody
// printed on stdout/stderr, for failure diagnostics.
func (s *Server) Log() string { return s.srv.Log() }

// Client is a logged-in XMPP client (see prosody.Client) whose Wait fails
// the test on timeout.
type Client struct {
	*prosody.Client
}

// Login connects to the server's c2s port and authenticates as
// user@Domain with SASL PLAIN over plain TCP, then binds a resource.
// Prosody ignores the requested resource, so use Client.JID to learn the
// bound full JID. No initial presence is sent; use SendPresence for that.
// The client is closed automatically when the test ends.
func (s *Server) Login(t testing.TB, user, password, resource string) *Client {
	t.Helper()
	c, err := s.login(user, password, resource)
	if err != nil {
		t.Fatalf("prosodytest: login %s@%s: %v", user, s.Domain, err)
	}
	t.Cleanup(c.Close)
	return c
}

func (s *Server) login(user, password, resource string) (*Client, error) {
	c, err := s.srv.Dial(context.Background(), user, password, resource)
	if err != nil {
		return nil, err
	}
	return &Client{c}, nil
}

// Wait returns the first received stanza, not yet returned by an earlier
// Wait, for which pred is true, waiting up to timeout for it to arrive.
// On timeout it fails the test with desc and everything received so far.
func (c *Client) Wait(t testing.TB, timeout time.Duration, desc string, pred func(Stanza) bool) Stanza {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := c.Client.Wait(ctx, pred)
	if err != nil {
		var b strings.Builder
		for i, s := range c.Received() {
			fmt.Fprintf(&b, "  %d: %s\n", i, s.Raw)
		}
		t.Fatalf("prosodytest: %s: waiting for %s: %v; received:\n%s", c.JID, desc, err, b.String())
	}
	return s
}

// DialComponent connects to the server's component port as domain, one of
// Options.ExtraComponents, and returns a Client that may send from any JID
// on that domain: a hostile server forging its users. It is closed when the
// test ends.
func (s *Server) DialComponent(t testing.TB, domain, secret string) *Client {
	t.Helper()
	c, err := s.srv.DialComponent(context.Background(), domain, secret)
	if err != nil {
		t.Fatalf("prosodytest: component %s: %v", domain, err)
	}
	t.Cleanup(c.Close)
	return &Client{c}
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
