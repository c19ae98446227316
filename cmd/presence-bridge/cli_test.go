package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
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

// TestOpsCommandsNoBridge: with no bridge running, each command says so
// clearly and exits 1; bad arguments exit 2.
func TestOpsCommandsNoBridge(t *testing.T) {
	dir := t.TempDir()
	cfg := func(listen string) string {
		return writeFile(t, fmt.Sprintf("nats:\n  embedded:\n    data_dir: %s\n    listen: %q\n", dir, listen))
	}
	noListen, live := cfg(""), cfg(fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	code, _, errs := runCLI(t, "presence", "-config", live, "alice@xmpp.example")
	if code != 1 || !strings.Contains(errs, "no bridge has run with this config") {
		t.Errorf("no token: exit %d: %s", code, errs)
	}
	if err := os.WriteFile(filepath.Join(dir, "client.token"), []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"presence", "alice@xmpp.example"}, {"statuses"}, {"subscriptions", "@bob:example.org"}, {"watch"}} {
		code, _, errs := runCLI(t, append([]string{args[0], "-config", live}, args[1:]...)...)
		if code != 1 || !strings.Contains(errs, "no bridge is running at nats://127.0.0.1:") {
			t.Errorf("%v: exit %d: %s", args, code, errs)
		}
	}
	code, _, errs = runCLI(t, "statuses", "-config", noListen)
	if code != 1 || !strings.Contains(errs, "nats.embedded.listen is empty") {
		t.Errorf("no listener: exit %d: %s", code, errs)
	}
	for _, args := range [][]string{{"presence"}, {"subscriptions"}, {"subscriptions", "a@b.c", "d@e.f"}, {"statuses", "x"}} {
		if code, _, _ := runCLI(t, append([]string{args[0], "-config", live}, args[1:]...)...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// TestDefaultNATSListen: with no nats section the bridge listens on
// loopback, so that the operator's commands reach it.
func TestDefaultNATSListen(t *testing.T) {
	if got := defaults().NATS.Embedded.Listen; got != "127.0.0.1:4222" {
		t.Fatalf("default listen %q", got)
	}
}
