package bridge

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNATSCluster runs n separate nats-server processes (Debian's package)
// clustered with JetStream, and returns their client URLs.
func startNATSCluster(t *testing.T, n int) []string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nats-server not installed (CI=true): apt-get install -y nats-server")
		}
		t.Skip("nats-server not installed; install with: apt-get install -y nats-server")
	}
	clientPorts, routePorts := make([]int, n), make([]int, n)
	var routes []string
	for i := range n {
		clientPorts[i], routePorts[i] = freePort(t), freePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", routePorts[i]))
	}
	var urls []string
	for i := range n {
		dir := t.TempDir()
		args := []string{"-a", "127.0.0.1", "-p", fmt.Sprint(clientPorts[i]), "-js", "-sd", dir, "-n", fmt.Sprintf("n%d", i)}
		if n > 1 {
			args = append(args, "--cluster_name", "pbtest", "--cluster", routes[i], "--routes", strings.Join(routes, ","))
		}
		cmd := exec.Command(bin, args...)
		logf, _ := os.Create(filepath.Join(dir, "nats.log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() })
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[i]))
	}
	return urls
}

// openExternal retries while the cluster elects its JetStream leader.
func openExternal(t *testing.T, urls []string, replicas int) *Bus {
	t.Helper()
	cfg := Default()
	cfg.URLs, cfg.Replicas = urls, replicas
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		b, err := Open(ctx, cfg, nil)
		cancel()
		if err == nil {
			t.Cleanup(func() { b.Close() })
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("external nats never became usable: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestExternalClusterMode: two bridge processes' worth of buses on
// different servers of one three-node cluster share events and state.
func TestExternalClusterMode(t *testing.T) {
	urls := startNATSCluster(t, 3)
	a := openExternal(t, urls[:1], 3)
	b := openExternal(t, urls[2:], 3)
	ctx := context.Background()

	// State written through one server is read through another. KV reads
	// are direct gets, which any replica may answer: a replica that has
	// not applied the write yet answers "not found" for a moment.
	if _, err := a.Store().Settings.Put(ctx, PresenceKey(mapping.NetworkXMPP, "alice@example.com"), UserSettings{OptOut: true}); err != nil {
		t.Fatal(err)
	}
	var s UserSettings
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		s, _, err = b.Store().Settings.Get(ctx, PresenceKey(mapping.NetworkXMPP, "alice@example.com"))
		if err == nil && s.OptOut {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("read through another server: %+v %v", s, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A durable event published on one server is consumed on another.
	var got atomic.Int32
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(cctx, "ext-test", SubjectFilter(Out, mapping.NetworkMatrix, KindSubscription), nil, func(_ context.Context, ev *Event) error {
			if ev.Peer == "@bob:example.org" {
				got.Add(1)
			}
			return nil
		})
	}()
	if err := a.Publish(ctx, Out, &Event{Kind: KindSubscription, Origin: mapping.NetworkXMPP, User: "alice@example.com", Peer: "@bob:example.org", Subscription: &SubscriptionPayload{Type: Subscribe}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "durable event across the cluster", func() bool { return got.Load() == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestExternalConnectErrorIsClear(t *testing.T) {
	cfg := Default()
	cfg.URLs = []string{fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Open(ctx, cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "connect to nats") {
		t.Fatalf("err = %v", err)
	}
}
