package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/dendrite"
	"github.com/presence-bridge/presence-bridge/internal/prosody"
	"github.com/presence-bridge/presence-bridge/internal/sandbox"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
)

// Timeouts. They only matter when something is broken.
const (
	buildTimeout  = 3 * time.Minute
	bannerTimeout = 3 * time.Minute  // first start: Dendrite's databases, the bridge, the link
	crossTimeout  = 30 * time.Second // one presence change across the bridge
	stopTimeout   = 90 * time.Second // SIGINT to exit: the bridge's grace, then both servers
)

// TestSandbox runs the sandbox as a newcomer would (the built binary, as a
// process), logs in with the credentials it prints as an XMPP client and
// as a Matrix client, changes presence on each side and sees it arrive on
// the other (and in the sandbox's own presence lines), checks that its
// three programs listen on 127.0.0.1 only, stops it with SIGINT and checks
// that no process is left. Then it runs it again on the same directory:
// same users, same passwords, still linked.
func TestSandbox(t *testing.T) {
	dendriteBin := requirePrograms(t)
	bin := buildBinaries(t)
	dir := filepath.Join(t.TempDir(), "sandbox")

	first := startSandbox(t, bin, dir, dendriteBin)
	creds := first.credentials()
	t.Logf("credentials: %+v", creds.redacted())
	first.checkChildren(true)
	presenceBothWays(t, first, creds, "first")
	askTheBridge(t, bin, first, creds)
	first.interrupt()

	second := startSandbox(t, bin, dir, dendriteBin)
	again := second.credentials()
	// Ports are kept too, unless something else took one meanwhile.
	same := again
	same.XMPPPort, same.Homeserver = creds.XMPPPort, creds.Homeserver
	if same != creds {
		t.Errorf("second run prints other users or passwords:\n%+v\nwant\n%+v", again.redacted(), creds.redacted())
	}
	presenceBothWays(t, second, again, "second")
	second.interrupt()
}

// askTheBridge runs the command the banner gives for asking the bridge
// itself (the operations CLI), as a newcomer would copy it.
func askTheBridge(t *testing.T, bin string, r *sandboxRun, c credentials) {
	t.Helper()
	const prefix = "Ask the bridge itself: .build/bin/presence-bridge watch -config "
	line := r.waitLine(5*time.Second, "how to ask the bridge", func(l string) bool { return strings.HasPrefix(l, prefix) })
	cfg := strings.TrimPrefix(line, prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "presence-bridge"), "presence", "-config", cfg, "-json", c.XMPPUser).CombinedOutput()
	if err != nil || !strings.Contains(string(out), c.XMPPUser) {
		t.Errorf("presence-bridge presence %s, as the banner says: %v\n%s", c.XMPPUser, err, out)
	}
}

// requirePrograms returns the directory of the Dendrite binaries, skipping
// the test (failing it when CI=true) if Prosody or Dendrite is missing.
func requirePrograms(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("DENDRITE_BIN_DIR")
	if dir == "" {
		root, err := dendritetest.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, ".build", "bin")
	}
	var missing []string
	if _, _, err := prosody.LookPath(); err != nil {
		missing = append(missing, fmt.Sprintf("%v", err))
	}
	if err := dendrite.CheckBinaries(dir); err != nil {
		missing = append(missing, fmt.Sprintf("in %s: %v", dir, err))
	}
	if len(missing) > 0 {
		msg := "the sandbox needs Prosody and Dendrite (make run or make test installs both): " + strings.Join(missing, "; ")
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

// buildBinaries builds the sandbox and the bridge into one directory, as
// make build does.
func buildBinaries(t *testing.T) string {
	t.Helper()
	root, err := dendritetest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "bin")
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator), "./cmd/sandbox", "./cmd/presence-bridge")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// sandboxRun is one run of the sandbox binary.
type sandboxRun struct {
	t    *testing.T
	dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and its output is read
	err  error         // cmd.Wait's result, valid after done
	errb bytes.Buffer  // stderr

	mu     sync.Mutex
	lines  []string // stdout
	notify chan struct{}
}

func startSandbox(t *testing.T, bin, dir, dendriteBin string) *sandboxRun {
	t.Helper()
	r := &sandboxRun{t: t, dir: dir, done: make(chan struct{}), notify: make(chan struct{})}
	r.cmd = exec.Command(filepath.Join(bin, "sandbox"), "-dir", dir)
	r.cmd.Env = append(os.Environ(), "DENDRITE_BIN_DIR="+dendriteBin)
	r.cmd.Stderr = &r.errb
	// Were the test binary to die, the kernel kills the sandbox, which
	// takes its children with it the same way.
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			r.mu.Lock()
			r.lines = append(r.lines, sc.Text())
			close(r.notify)
			r.notify = make(chan struct{})
			r.mu.Unlock()
		}
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = r.cmd.Process.Kill()
			<-r.done
		}
		if t.Failed() {
			r.dump()
		}
	})
	r.waitLine(bannerTimeout, "the end of the login instructions", func(l string) bool { return l == sandbox.BannerEnd })
	return r
}

// dump logs what the sandbox printed and the end of the three logs.
func (r *sandboxRun) dump() {
	r.mu.Lock()
	out := strings.Join(r.lines, "\n")
	r.mu.Unlock()
	r.t.Logf("sandbox stdout:\n%s\nsandbox stderr:\n%s", out, r.errb.String())
	for _, f := range []string{"prosody/prosody.log", "dendrite/dendrite.log", "bridge/bridge.log"} {
		data, err := os.ReadFile(filepath.Join(r.dir, f))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		r.t.Logf("%s, last lines:\n%s", f, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
}

// waitLine waits for a line of stdout matching pred and returns it.
func (r *sandboxRun) waitLine(timeout time.Duration, desc string, pred func(string) bool) string {
	r.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for _, l := range r.lines {
			if pred(l) {
				r.mu.Unlock()
				return l
			}
		}
		notify := r.notify
		r.mu.Unlock()
		select {
		case <-notify:
		case <-r.done:
			r.t.Fatalf("sandbox exited (%v) before printing %s", r.err, desc)
		case <-deadline.C:
			r.t.Fatalf("sandbox did not print %s within %v", desc, timeout)
		}
	}
}

// credentials are what the login instructions tell a newcomer.
type credentials struct {
	XMPPServer, XMPPPort, XMPPUser, XMPPPassword, XMPPContact string
	Homeserver, MatrixUser, MatrixPassword, MatrixContact     string
}

func (c credentials) redacted() credentials {
	c.XMPPPassword, c.MatrixPassword = "…", "…"
	return c
}

// credentials parses the "key: value" lines under the "XMPP:" and
// "Matrix:" headings of the login instructions.
func (r *sandboxRun) credentials() credentials {
	r.t.Helper()
	r.mu.Lock()
	lines := append([]string(nil), r.lines...)
	r.mu.Unlock()
	values := map[string]string{}
	section := ""
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "XMPP:"):
			section = "xmpp."
		case strings.HasPrefix(l, "Matrix:"):
			section = "matrix."
		case l == "":
			section = ""
		case section != "" && strings.HasPrefix(l, "  "):
			key, value, ok := strings.Cut(strings.TrimSpace(l), ":")
			if f := strings.Fields(value); ok && len(f) > 0 {
				values[section+key] = f[0] // the value; what follows is explanation
			}
		}
	}
	c := credentials{
		XMPPServer: values["xmpp.server"], XMPPPort: values["xmpp.port"],
		XMPPUser: values["xmpp.user"], XMPPPassword: values["xmpp.password"], XMPPContact: values["xmpp.contact"],
		Homeserver: values["matrix.homeserver"], MatrixUser: values["matrix.user"],
		MatrixPassword: values["matrix.password"], MatrixContact: values["matrix.contact"],
	}
	if c.XMPPServer != "127.0.0.1" || c.XMPPPort == "" || !strings.Contains(c.XMPPUser, "@") || c.XMPPPassword == "" || c.XMPPContact == "" ||
		!strings.HasPrefix(c.Homeserver, "http://127.0.0.1:") || !strings.HasPrefix(c.MatrixUser, "@") || c.MatrixPassword == "" || c.MatrixContact == "" {
		r.t.Fatalf("incomplete login instructions: %+v\n%s", c.redacted(), strings.Join(lines, "\n"))
	}
	if v := values["xmpp.TLS"] + values["matrix.TLS"]; v != "offoff" {
		r.t.Errorf("the instructions should say that TLS is off on both sides, got %q", v)
	}
	return c
}

// presenceBothWays logs in as the two users, checks that they are linked,
// and changes presence on each side.
func presenceBothWays(t *testing.T, r *sandboxRun, c credentials, tag string) {
	t.Helper()
	ctx := t.Context()
	user, domain, _ := strings.Cut(c.XMPPUser, "@")
	x, err := prosody.Dial(ctx, c.XMPPServer+":"+c.XMPPPort, user, domain, c.XMPPPassword, "newcomer")
	if err != nil {
		t.Fatalf("XMPP login as %s: %v", c.XMPPUser, err)
	}
	defer x.Close()
	roster, err := x.Roster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sub := roster[c.XMPPContact]; sub != "both" {
		t.Fatalf("%s's roster has %s as %q, want both (roster %v)", c.XMPPUser, c.XMPPContact, sub, roster)
	}
	localpart, _, _ := strings.Cut(strings.TrimPrefix(c.MatrixUser, "@"), ":")
	m, err := dendrite.Login(ctx, c.Homeserver, localpart, c.MatrixPassword)
	if err != nil {
		t.Fatalf("Matrix login as %s: %v", c.MatrixUser, err)
	}
	if m.UserID != c.MatrixUser {
		t.Fatalf("logged in as %s, the instructions say %s", m.UserID, c.MatrixUser)
	}
	mx := &matrixWatcher{t: t, c: m}

	// XMPP → Matrix: away with a status, on a resource of higher priority
	// than the sandbox's own.
	status := tag + "-from-xmpp-" + token()
	if err := x.SendPresence(ctx, "", "", "away", status, 0); err != nil {
		t.Fatal(err)
	}
	mx.waitPresence(c.MatrixContact, "unavailable", status)
	r.waitLine(crossTimeout, "the XMPP → Matrix line", func(l string) bool {
		return strings.Contains(l, "XMPP → Matrix") && strings.Contains(l, `unavailable "`+status+`"`)
	})

	// Matrix → XMPP: unavailable, then online again.
	for _, step := range []struct{ presence, show string }{{"unavailable", "away"}, {"online", ""}} {
		status := tag + "-from-matrix-" + step.presence + "-" + token()
		if err := m.SetPresence(ctx, step.presence, status); err != nil {
			t.Fatal(err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, crossTimeout)
		got, err := x.Wait(waitCtx, func(s prosody.Stanza) bool {
			return s.Name == "presence" && bareJID(s.From) == c.XMPPContact && s.Type == "" && s.Show == step.show && s.Status == status
		})
		cancel()
		if err != nil {
			t.Fatalf("XMPP: no presence %q %q from %s: %v; received: %v", step.show, status, c.XMPPContact, err, x.Received())
		}
		t.Logf("%s: %s sees %s", tag, c.XMPPUser, got.Raw)
		want := "available"
		if step.show != "" {
			want = step.show
		}
		r.waitLine(crossTimeout, "the Matrix → XMPP line", func(l string) bool {
			return strings.Contains(l, "Matrix → XMPP") && strings.Contains(l, want+` "`+status+`"`)
		})
	}
}

// matrixWatcher syncs as a Matrix client that never makes its user online
// by itself.
type matrixWatcher struct {
	t     *testing.T
	c     *dendrite.Client
	since string
	seen  []string
}

func (w *matrixWatcher) waitPresence(sender, presence, status string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.t.Context(), crossTimeout)
	defer cancel()
	for {
		resp, err := w.c.Sync(ctx, dendrite.SyncOptions{Since: w.since, Timeout: time.Second, SetPresence: "offline"})
		if err != nil {
			w.t.Fatalf("Matrix: no presence %s %q from %s: %v; seen %v", presence, status, sender, err, w.seen)
		}
		w.since = resp.NextBatch
		for _, ev := range resp.Presence {
			if ev.Sender != sender {
				continue
			}
			w.seen = append(w.seen, string(ev.Raw))
			if ev.Content.Presence == presence && ev.Content.StatusMsg != nil && *ev.Content.StatusMsg == status {
				return
			}
		}
	}
}

// interrupt sends SIGINT, as Ctrl-C does, and checks that the sandbox
// exits cleanly and leaves no process behind.
func (r *sandboxRun) interrupt() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(os.Interrupt); err != nil {
		r.t.Fatal(err)
	}
	select {
	case <-r.done:
	case <-time.After(stopTimeout):
		r.t.Fatalf("sandbox still running %v after SIGINT", stopTimeout)
	}
	if r.err != nil {
		r.t.Errorf("sandbox exited with %v after SIGINT", r.err)
	}
	r.checkChildren(false)
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, l := range r.lines {
		if l == sandbox.BannerEnd {
			r.t.Logf("the sandbox printed:\n%s", strings.Join(r.lines[i:], "\n"))
		}
	}
}

// checkChildren checks the processes started by the sandbox (all have its
// directory on their command line): while it runs, Prosody, Dendrite and
// the bridge, each listening on 127.0.0.1 only; after it stopped, none.
func (r *sandboxRun) checkChildren(running bool) {
	r.t.Helper()
	procs, err := processesMentioning(r.dir, r.cmd.Process.Pid)
	if err != nil {
		r.t.Logf("cannot list processes, not checked: %v", err)
		return
	}
	if !running {
		for pid, args := range procs {
			r.t.Errorf("left behind after SIGINT: pid %d: %s", pid, args)
		}
		return
	}
	for _, name := range []string{"prosody", "dendrite", "presence-bridge"} {
		found := false
		for pid, args := range procs {
			// The program, or for Prosody the Lua script, by base name.
			if !slices.ContainsFunc(args, func(a string) bool { return filepath.Base(a) == name }) {
				continue
			}
			found = true
			addrs, err := listening(pid)
			if err != nil {
				r.t.Errorf("%s (pid %d): %v", name, pid, err)
				continue
			}
			if len(addrs) == 0 {
				r.t.Errorf("%s (pid %d) listens on nothing", name, pid)
			}
			for _, a := range addrs {
				if !strings.HasPrefix(a, "127.0.0.1:") {
					r.t.Errorf("%s (pid %d) listens on %s, not on loopback only", name, pid, a)
				}
			}
			r.t.Logf("%s (pid %d) listens on %v", name, pid, addrs)
		}
		if !found {
			r.t.Errorf("no %s process running; processes: %v", name, procs)
		}
	}
}

func bareJID(j string) string {
	b, _, _ := strings.Cut(j, "/")
	return b
}

func token() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
