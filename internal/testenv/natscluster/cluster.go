// Package natscluster runs a real NATS cluster for tests: n nats-server
// processes with JetStream, clustered over loopback routes, each in its
// own temporary directory, each killable (SIGKILL, as a crash) and
// restartable on the same ports and data.
//
// The binary is nats-server v2.15.2 built by the tool module in
// tools/natsserver into <module root>/.build/bin (make natsserver), or
// $NATS_SERVER_BIN. Without it the tests using this package are skipped,
// or fail when CI=true. (Debian's nats-server 2.9 is too old for the
// per-key revisions and clustering behaviour the bridge relies on.)
package natscluster

import (
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
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presence-bridge/presence-bridge/internal/proc"
)

// BuildHint tells how to build the binary.
const BuildHint = "make natsserver"

// Cluster is a running cluster.
type Cluster struct {
	t     testing.TB
	bin   string
	mu    sync.Mutex
	nodes []*node
}

type node struct {
	name       string
	dir        string
	clientPort int
	routePort  int
	monPort    int // the monitoring port: /healthz
	routes     []string
	proc       *proc.Process
	log        *os.File
}

// Binary returns the nats-server binary, skipping the test (failing it
// when CI=true) if it is missing.
func Binary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("NATS_SERVER_BIN")
	if bin == "" {
		root, err := moduleRoot()
		if err == nil {
			bin = filepath.Join(root, ".build", "bin", "nats-server")
		}
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("natscluster: nats-server v2.15.2 not found at %q (build it with: %s, or set NATS_SERVER_BIN)", bin, BuildHint)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// Start starts n nodes and waits until every one accepts clients and the
// cluster has a JetStream meta leader. They are killed when the test ends;
// if it failed, their logs' tails are printed.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, bin: Binary(t)}
	for i := range n {
		c.nodes = append(c.nodes, &node{name: fmt.Sprintf("n%d", i), dir: t.TempDir(), clientPort: freePort(t), routePort: freePort(t), monPort: freePort(t)})
	}
	var routes []string
	for _, nd := range c.nodes {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", nd.routePort))
	}
	for _, nd := range c.nodes {
		nd.routes = routes
	}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, nd := range c.nodes {
			if nd.proc != nil {
				_ = nd.proc.Stop(syscall.SIGTERM, 5*time.Second)
			}
			if nd.log != nil {
				nd.log.Close()
			}
			if t.Failed() {
				t.Logf("nats node %s log tail:\n%s", nd.name, tail(filepath.Join(nd.dir, "nats.log"), 30))
			}
		}
	})
	for i := range c.nodes {
		c.start(i)
	}
	c.WaitReady(60 * time.Second)
	return c
}

// URLs are the client URLs of every node.
func (c *Cluster) URLs() []string {
	var urls []string
	for _, nd := range c.nodes {
		urls = append(urls, nd.url())
	}
	return urls
}

// URL is node i's client URL.
func (c *Cluster) URL(i int) string { return c.nodes[i].url() }

func (nd *node) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", nd.clientPort) }

func (c *Cluster) start(i int) {
	c.t.Helper()
	nd := c.nodes[i]
	logf, err := os.OpenFile(filepath.Join(nd.dir, "nats.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	args := []string{
		"-a", "127.0.0.1", "-p", fmt.Sprint(nd.clientPort), "-n", nd.name, "-m", fmt.Sprint(nd.monPort),
		"-js", "-sd", filepath.Join(nd.dir, "js"),
		"--cluster_name", "pbtest", "--cluster", fmt.Sprintf("nats://127.0.0.1:%d", nd.routePort),
		"--routes", strings.Join(nd.routes, ","),
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := proc.Start(cmd)
	if err != nil {
		logf.Close()
		c.t.Fatal(err)
	}
	c.mu.Lock()
	nd.proc, nd.log = p, logf
	c.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", nd.clientPort), time.Second)
		if err == nil {
			conn.Close()
			return
		}
		if p.Exited() || time.Now().After(deadline) {
			c.t.Fatalf("natscluster: node %s did not start: %v\n%s", nd.name, err, tail(filepath.Join(nd.dir, "nats.log"), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill kills node i with SIGKILL, as a crash would.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	p := c.nodes[i].proc
	c.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// Restart starts node i again (after Kill) on the same ports and data,
// and waits until it accepts clients.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.Kill(i)
	c.mu.Lock()
	if c.nodes[i].log != nil {
		c.nodes[i].log.Close()
	}
	c.mu.Unlock()
	c.start(i)
}

// WaitReady waits until every running node is healthy for JetStream
// (/healthz: its streams and consumers are current), as an operator
// waits between the steps of a rolling restart.
func (c *Cluster) WaitReady(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	for i, nd := range c.nodes {
		if nd.proc == nil || nd.proc.Exited() {
			continue
		}
		var last error
		for {
			if last = jsReady(nd.url()); last == nil {
				last = healthy(hc, nd.monPort)
			}
			if last == nil {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("natscluster: node %d not healthy after %v: %v", i, timeout, last)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func healthy(hc *http.Client, port int) error {
	resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthz %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

func jsReady(url string) error {
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second), nats.MaxReconnects(0))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := js.AccountInfo(ctx)
	if err != nil {
		return err
	}
	if info == nil {
		return errors.New("no account info")
	}
	return nil
}

// StreamReplicas returns how many peers (leader and followers) the
// stream has, and how many of them are current, as seen through url.
func StreamReplicas(ctx context.Context, url, stream string) (peers, current int, err error) {
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second), nats.MaxReconnects(0))
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, 0, err
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, 0, err
	}
	info := s.CachedInfo()
	if info.Cluster == nil {
		return 1, 1, nil
	}
	peers, current = 1, 1
	for _, r := range info.Cluster.Replicas {
		peers++
		if r.Current {
			current++
		}
	}
	return peers, current, nil
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// moduleRoot walks up from the working directory to the presence-bridge
// go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/presence-bridge/presence-bridge\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("natscluster: module root not found")
		}
		dir = parent
	}
}
