package e2e

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge/opsapi"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// opsCommand runs one of the operator's commands against the running
// bridge, with the bridge's own config file.
func (e *env) opsCommand(args ...string) string {
	e.t.Helper()
	full := append([]string{args[0], "-config", e.cfgPath}, args[1:]...)
	out, err := exec.Command(e.bridge.bin, full...).Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		e.t.Fatalf("presence-bridge %s: %v\n%s%s", strings.Join(full, " "), err, out, stderr)
	}
	return string(out)
}

// watcher is a running `presence-bridge watch`, its lines in a channel.
type watcher struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan error
}

func (e *env) startWatch(users ...string) *watcher {
	e.t.Helper()
	cmd := exec.Command(e.bridge.bin, append([]string{"watch", "-config", e.cfgPath}, users...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	w := &watcher{cmd: cmd, lines: make(chan string, 100), done: make(chan error, 1)}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case ready <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
		w.done <- cmd.Wait()
	}()
	e.t.Cleanup(func() { _ = cmd.Process.Kill() })
	select {
	case line := <-ready:
		if !strings.Contains(line, "watching") {
			e.t.Fatalf("watch: %s", line)
		}
	case <-time.After(readyTimeout):
		e.t.Fatal("watch did not start")
	}
	return w
}

// TestOpsCLIPresenceAndWatch: a presence change made by a real XMPP client
// shows in `presence` (human and JSON) and as exactly one line in `watch`;
// `subscriptions` and `statuses` answer from the running bridge.
func TestOpsCLIPresenceAndWatch(t *testing.T) {
	e := newEnv(t, options{})
	l := e.linkedPair()
	alice := l.alice.JID.Bare().String()

	w := e.startWatch(alice)
	sendPresence(t, l.alice, "", "", "dnd", "ops-check")

	var line string
	deadline := time.After(waitLatency)
	for line == "" {
		select {
		case s, ok := <-w.lines:
			if !ok {
				t.Fatalf("watch ended: %v", <-w.done)
			}
			if strings.Contains(s, "ops-check") {
				line = s
			}
		case <-deadline:
			t.Fatal("the change did not show in watch")
		}
	}
	if !strings.Contains(line, "xmpp "+alice+` busy "ops-check"`) {
		t.Errorf("watch line %q", line)
	}

	out := e.opsCommand("presence", alice, l.bob.UserID)
	if !strings.Contains(out, alice+"\txmpp\tbusy \"ops-check\"") || !strings.Contains(out, l.bob.UserID+"\tmatrix\tavailable \"bob-here\"") {
		t.Errorf("presence:\n%s", out)
	}
	var got opsapi.GetResponse
	if err := json.Unmarshal([]byte(e.opsCommand("presence", "-json", alice)), &got); err != nil {
		t.Fatal(err)
	}
	if p := got.Presences[0]; p.State != mapping.StateBusy || p.Status != "ops-check" || p.Side != mapping.NetworkXMPP || len(p.Resources) != 1 {
		t.Errorf("presence -json: %+v", p)
	}
	if out := e.opsCommand("subscriptions", alice); !strings.Contains(out, "puppet of "+l.bob.UserID+" ↔ "+alice+": both") || !strings.Contains(out, "link") {
		t.Errorf("subscriptions:\n%s", out)
	}
	if out := e.opsCommand("statuses"); !strings.Contains(out, "away") || !strings.Contains(out, "unavailable") {
		t.Errorf("statuses:\n%s", out)
	}

	// One change, one line: nothing more about it arrived meanwhile.
	_ = w.cmd.Process.Signal(syscall.SIGINT)
	for s := range w.lines {
		if strings.Contains(s, "ops-check") {
			t.Errorf("a second watch line for one change: %q", s)
		}
	}
	if err := <-w.done; err != nil {
		t.Errorf("watch after Ctrl-C: %v", err)
	}
}
