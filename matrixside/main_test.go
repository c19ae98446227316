package matrixside

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

const countingServerEnv = "MATRIXSIDE_COUNTING_SERVER"

// TestMain checks that no test leaves a goroutine behind, and doubles as
// the counting homeserver of BenchmarkEventsToRequests, run in a child
// process so that the benchmark's CPU time is the bridge's alone.
func TestMain(m *testing.M) {
	if os.Getenv(countingServerEnv) == "1" {
		serveCounting()
		return
	}
	goleak.VerifyTestMain(m)
}

func serveCounting() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("error", err)
		return
	}
	var puts atomic.Int64
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			switch {
			case r.URL.Path == "/count":
				fmt.Fprint(w, puts.Load())
				return
			case r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/presence/"):
				puts.Add(1)
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte("{}"))
		}))
	}()
	fmt.Println("http://" + ln.Addr().String())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
}

// childServer is a counting homeserver in a child process.
type childServer struct {
	URL string
}

func startChildServer(tb testing.TB) *childServer {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), countingServerEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "http://") {
		tb.Fatalf("counting server: %q %v", line, err)
	}
	return &childServer{URL: strings.TrimSpace(line)}
}

func (c *childServer) puts(tb testing.TB) int64 {
	resp, err := http.Get(c.URL + "/count")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	n, _ := strconv.ParseInt(string(b), 10, 64)
	return n
}

// cpuTime is the CPU time (user+system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
