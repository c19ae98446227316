package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge/opsapi"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
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
	if p := got.Presences[0]; p.State != mapping.StateBusy || p.Status != "ops-check" || p.Side != mapping.NetworkXMPP ||
		len(p.Resources) != 1 || p.Resources[0].Aggregate || p.Resources[0].Name == "" || p.Resources[0].State != mapping.StateBusy {
		t.Errorf("presence -json: %+v", p)
	}
	if out := e.opsCommand("subscriptions", alice); !strings.Contains(out, "puppet of "+l.bob.UserID+" ↔ "+alice+": both") || !strings.Contains(out, "link") {
		t.Errorf("subscriptions:\n%s", out)
	}
	// request: the XMPP side probes alice from bob's puppet, the Matrix
	// side reads bob's presence from Dendrite.
	if out := e.opsCommand("request", alice, l.bob.UserID); strings.Count(out, "\tasked") != 2 {
		t.Errorf("request:\n%s", out)
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

// withMetrics turns the metrics listener on (the harness's config has
// none) and restarts the bridge with it; it returns the base URL.
func (e *env) withMetrics() string {
	e.t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", prosodytest.FreePort(e.t))
	f, err := os.OpenFile(e.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	_, err = fmt.Fprintf(f, "metrics:\n  listen: %s\n", addr)
	f.Close()
	if err != nil {
		e.t.Fatal(err)
	}
	if exitErr, inTime := e.bridge.signal(syscall.SIGTERM, stopTimeout); !inTime || exitErr != nil {
		e.t.Fatalf("bridge restart for metrics: %v (in time: %v)", exitErr, inTime)
	}
	e.startBridge()
	return "http://" + addr
}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// scrape reads the metric samples: "name{labels}" → value.
func scrape(t testing.TB, base string) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// TestOpsMetricsAndReadiness: after a known sequence (alice changes her
// presence three times, each seen by bob before the next), the counters
// moved by exactly that; /readyz turns not ready when Prosody stops, naming
// the XMPP stream, and ready again after it returns.
func TestOpsMetricsAndReadiness(t *testing.T) {
	e := newEnv(t, options{})
	base := e.withMetrics()
	l := e.linkedPair()

	const (
		in       = `presence_bridge_events_total{direction="in",kind="presence",network="xmpp"}`
		out      = `presence_bridge_events_total{direction="out",kind="presence",network="matrix"}`
		e2eCount = `presence_bridge_end_to_end_seconds_count{from="xmpp"}`
		links    = `presence_bridge_links{state="approved"}`
		subsBoth = `presence_bridge_subscriptions{state="both"}`
	)
	before := scrape(t, base)
	for i, show := range []string{"away", "xa", "dnd"} {
		status := fmt.Sprintf("metrics-%d", i)
		sendPresence(t, l.alice, "", "", show, status)
		l.bob.waitPresence(waitLatency, l.ghost, status, func(p dendritetest.Presence) bool { return statusOf(p) == status })
	}
	// One end-to-end sample per change: each is delivered (its PUT
	// answered 2xx) once, and bob saw each before the next was sent. The
	// side observes it after the homeserver's answer, which may come after
	// bob saw the presence: poll for it too.
	var after map[string]float64
	poll(t, 10*time.Second, "counters", func() error {
		after = scrape(t, base)
		for _, name := range []string{out, e2eCount} {
			if d := after[name] - before[name]; d != 3 {
				return fmt.Errorf("%s moved by %v, want 3", name, d)
			}
		}
		return nil
	})
	for name, want := range map[string]float64{in: 3, e2eCount: 3} {
		if d := after[name] - before[name]; d != want {
			t.Errorf("%s moved by %v, want %v", name, d, want)
		}
	}
	for name, want := range map[string]float64{links: 1, subsBoth: 1, `presence_bridge_xmpp_stream_up`: 1, `presence_bridge_homeserver_up`: 1, `presence_bridge_nats_connected`: 1} {
		if after[name] != want {
			t.Errorf("%s = %v, want %v", name, after[name], want)
		}
	}
	if after[`presence_bridge_homeserver_requests_total{outcome="ok"}`] == 0 {
		t.Error("no successful homeserver request counted")
	}

	if code, body := httpGet(t, base+"/readyz"); code != 200 {
		t.Fatalf("readyz before: %d %s", code, body)
	}
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	connects := after[`presence_bridge_xmpp_stream_connects_total`]
	e.xmpp.Stop()
	poll(t, recoverTimeout, "not ready while Prosody is stopped", func() error {
		code, body := httpGet(t, base+"/readyz")
		if code != 503 || !strings.Contains(body, "xmpp:") || strings.Contains(body, "homeserver:") {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Errorf("healthz while Prosody is stopped: %d", code)
	}
	e.xmpp.Restart(t)
	poll(t, recoverTimeout, "ready after Prosody returned", func() error {
		if code, body := httpGet(t, base+"/readyz"); code != 200 {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if got := scrape(t, base)[`presence_bridge_xmpp_stream_connects_total`]; got != connects+1 {
		t.Errorf("stream connects %v after one reconnect, want %v", got, connects+1)
	}
}
