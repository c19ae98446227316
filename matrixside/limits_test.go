package matrixside

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// floodConn is one connection of a hostile peer to the appservice
// listener; closed is closed once the side has closed it.
type floodConn struct {
	c      net.Conn
	closed chan struct{}
}

func dialFlood(t *testing.T, addr, send string) *floodConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if send != "" {
		if _, err := io.WriteString(c, send); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	f := &floodConn{c: c, closed: make(chan struct{})}
	go func() {
		_, _ = io.Copy(io.Discard, c) // until the side closes it (or the test does)
		close(f.closed)
	}()
	return f
}

func stillOpen(fs []*floodConn) int {
	n := 0
	for _, f := range fs {
		select {
		case <-f.closed:
		default:
			n++
		}
	}
	return n
}

// TestConnectionFloodBounded: 3,000 connections that send nothing, or
// headers with a bad token and a body that never comes, or (a few) the
// right token and no body, are not held: the side never has more open
// than matrix.max_connections, sheds the idle ones at once to make room,
// closes the rest after the timeouts, and meanwhile serves a real
// transaction from the homeserver.
func TestConnectionFloodBounded(t *testing.T) {
	hs := newFakeHS(t)
	cfg := testConfig(hs.URL)
	cfg.PresenceSource = SourceEphemeral
	cfg.MaxConnections = 64
	obs := &fakeObserver{}
	s := newTestSide(t, cfg, nil, obs)
	s.limits.readHeader, s.limits.read, s.limits.idle = time.Second, 2*time.Second, 2*time.Second
	ln := freeListener(t)
	addr := ln.Addr().String()
	runSide(t, s, ln)

	// The side's own count, sampled while the flood lasts.
	var maxOpen atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			if c := s.conns.Load(); c != nil {
				if n := int64(c.openConns()); n > maxOpen.Load() {
					maxOpen.Store(n)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	defer func() { close(stop); sampler.Wait() }()

	const silent, badToken, rightTokenNoBody = 1500, 1490, 10
	bodyless := func(token string) string {
		return "PUT /_matrix/app/v1/transactions/flood HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
			"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
	}
	var flood []*floodConn
	for i := range silent + badToken + rightTokenNoBody {
		switch {
		case i%2 == 0 && i < 2*silent:
			flood = append(flood, dialFlood(t, addr, ""))
		case i >= silent+badToken:
			flood = append(flood, dialFlood(t, addr, bodyless(testHS)))
		default:
			flood = append(flood, dialFlood(t, addr, bodyless("wrong")))
		}
	}
	flooded := time.Now()

	// The homeserver still gets through.
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/_matrix/app/v1/transactions/real",
		strings.NewReader(inviteTxn(ghostOf(t, "alice@example.com"), "$real")))
	req.Header.Set("Authorization", "Bearer "+testHS)
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("real transaction during the flood: %v", err)
	}
	t.Logf("real transaction during the flood answered in %v", time.Since(t0).Round(time.Microsecond))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("real transaction during the flood: %d", resp.StatusCode)
	}
	obs.waitMembership(t, 5*time.Second, "the real transaction's invite", func(r bridge.MatrixMembership) bool { return r.RoomID == "!r:localhost" })

	// Held connections do not pile up: within well under the header
	// timeout of the last ones, no more than the cap are open.
	waitFor(t, 5*time.Second, "the flood shed down to the cap", func() bool { return stillOpen(flood) <= cfg.MaxConnections })
	t.Logf("%d of %d flood connections open %v after the flood", stillOpen(flood), len(flood), time.Since(flooded).Round(time.Millisecond))
	// And none stays open forever.
	waitFor(t, 15*time.Second, "every flood connection closed by the side", func() bool { return stillOpen(flood) == 0 })
	if m := maxOpen.Load(); m > int64(cfg.MaxConnections) {
		t.Errorf("the side had %d connections open at once, cap %d", m, cfg.MaxConnections)
	}
	// The silent ones are shed at once (some may reach the header timeout
	// first on a slow machine); the others are answered and closed.
	if shed := s.Counts().ConnectionsShed; shed < silent/2 {
		t.Errorf("ConnectionsShed = %d, want most of the %d silent connections", shed, silent)
	}
}

// TestBadTokenFloodLogBounded: requests with a bad token are refused with
// 403 and their connection closed without waiting for a body; a flood of
// them is counted, and logged in a bounded number of lines carrying the
// count, not one line per request.
func TestBadTokenFloodLogBounded(t *testing.T) {
	hs := newFakeHS(t)
	cfg := testConfig(hs.URL)
	cfg.PresenceSource = SourceEphemeral
	logs, log := newLogRecords(t)
	s := newTestSideLog(t, cfg, nil, &fakeObserver{}, log)
	ln := freeListener(t)
	addr := ln.Addr().String()
	runSide(t, s, ln)

	// One body-less request: the answer and the end of the connection
	// come at once, not after the read timeout (60 s).
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "PUT /_matrix/app/v1/transactions/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 1000\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	answer, err := io.ReadAll(bufio.NewReader(c))
	if err != nil {
		t.Errorf("body-less bad-token request: connection not closed by the side: %v (read %q)", err, answer)
	}
	if !strings.HasPrefix(string(answer), "HTTP/1.1 403") {
		t.Errorf("body-less bad-token request answered %q", answer)
	}

	const flood = 2000
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for i := range flood {
		req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/_matrix/app/v1/transactions/x", strings.NewReader("{}"))
		if i%2 == 0 {
			req.Header.Set("Authorization", "Bearer wrong")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("request %d: %d, want 403", i, resp.StatusCode)
		}
	}
	lines := logs.count(slog.LevelDebug, "refused: bad hs_token")
	t.Logf("%d requests with a bad token: %d log lines", flood+1, lines)
	if lines > 2 {
		t.Errorf("%d log lines for %d refused requests, want at most 2 (one per 10 s)", lines, flood+1)
	}
	if n := s.Counts().BadToken; n != flood+1 {
		t.Errorf("Counts().BadToken = %d, want %d", n, flood+1)
	}
}

// TestHeaderSizeLimited: request headers are bounded (16 KiB): a peer
// cannot make the side buffer more before it even reads the token.
func TestHeaderSizeLimited(t *testing.T) {
	hs := newFakeHS(t)
	cfg := testConfig(hs.URL)
	cfg.PresenceSource = SourceEphemeral
	s := newTestSide(t, cfg, nil, &fakeObserver{})
	ln := freeListener(t)
	runSide(t, s, ln)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for _, tt := range []struct {
		size int
		want int
	}{{1 << 10, http.StatusForbidden}, {32 << 10, http.StatusRequestHeaderFieldsTooLarge}} {
		req, _ := http.NewRequest(http.MethodPut, "http://"+ln.Addr().String()+"/_matrix/app/v1/transactions/h", strings.NewReader("{}"))
		req.Header.Set("X-Padding", strings.Repeat("a", tt.size))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%d bytes of headers: %d, want %d", tt.size, resp.StatusCode, tt.want)
		}
	}
}
