package sandbox

import (
	"bytes"
	"errors"
	"net"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/dendrite"
	"github.com/presence-bridge/presence-bridge/internal/prosody"
)

// The end-to-end test of the sandbox runs the binary: cmd/sandbox.

func TestStateIsKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	st, err := loadState(path)
	if err != nil {
		t.Fatal(err)
	}
	pw := regexp.MustCompile(`^[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}$`)
	for _, p := range []string{st.XMPPPassword, st.MatrixPassword} {
		if !pw.MatchString(p) {
			t.Errorf("password %q is not three groups of four", p)
		}
	}
	if st.XMPPPassword == st.MatrixPassword || st.ASToken == st.HSToken || len(st.ComponentSecret) != 48 {
		t.Errorf("secrets not fresh and distinct: %+v", st)
	}
	if err := st.choosePorts(); err != nil {
		t.Fatal(err)
	}
	if err := st.save(path); err != nil {
		t.Fatal(err)
	}
	again, err := loadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if *again != *st {
		t.Errorf("loaded %+v, saved %+v", again, st)
	}
}

func TestChoosePortsAvoidsTakenOnes(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	free, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	st := &state{Ports: ports{XMPP: taken, Component: free}}
	if err := st.choosePorts(); err != nil {
		t.Fatal(err)
	}
	p := st.Ports
	if p.XMPP == taken {
		t.Errorf("kept port %d, which is taken", taken)
	}
	if p.Component != free {
		t.Errorf("component port %d, want the remembered free %d", p.Component, free)
	}
	seen := map[int]bool{}
	for _, port := range []int{p.XMPP, p.Component, p.Matrix, p.AppService} {
		if port == 0 || seen[port] {
			t.Errorf("ports %+v: zero or twice", p)
		}
		seen[port] = true
	}
}

// TestAddresses: the README's addressing rule, for the sandbox's names.
func TestAddresses(t *testing.T) {
	if got, want := puppetJID("bob"), `bob\40localhost@matrix.localhost`; got != want {
		t.Errorf("puppetJID = %s, want %s", got, want)
	}
	if got, want := ghostMXID("alice"), "@_xmpp_alice=40localhost:localhost"; got != want {
		t.Errorf("ghostMXID = %s, want %s", got, want)
	}
}

func TestPresenceLines(t *testing.T) {
	var out bytes.Buffer
	p := newPrinter(&out)
	p.now = func() time.Time { return time.Date(2026, 1, 2, 15, 4, 5, 0, time.Local) }
	lunch := "lunch"
	p.crossed(toMatrix, "@bob:localhost", "alice@localhost", describeMatrix(dendrite.Presence{Presence: "unavailable", StatusMsg: &lunch}))
	p.crossed(toMatrix, "@bob:localhost", "alice@localhost", describeMatrix(dendrite.Presence{Presence: "unavailable", StatusMsg: &lunch})) // a repeat
	p.crossed(toXMPP, "alice@localhost", "@bob:localhost", describeXMPP(prosody.Stanza{Show: "dnd", Status: "busy"}))
	p.crossed(toXMPP, "alice@localhost", "@bob:localhost", describeXMPP(prosody.Stanza{}))
	p.crossed(toXMPP, "alice@localhost", "@bob:localhost", describeXMPP(prosody.Stanza{Type: "unavailable"}))
	want := `15:04:05  XMPP → Matrix  @bob:localhost sees alice@localhost: unavailable "lunch"
15:04:05  Matrix → XMPP  alice@localhost sees @bob:localhost: dnd "busy"
15:04:05  Matrix → XMPP  alice@localhost sees @bob:localhost: available
15:04:05  Matrix → XMPP  alice@localhost sees @bob:localhost: offline
`
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestOneSandboxPerDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sandbox.lock")
	release, err := lock(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock(path); !errors.Is(err, ErrRunning) {
		t.Errorf("second lock: %v, want ErrRunning", err)
	}
	release()
	release2, err := lock(path)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release2()
}

func TestMissingPrograms(t *testing.T) {
	dir := t.TempDir()
	err := Run(t.Context(), Options{Dir: dir, BridgeBin: filepath.Join(dir, "presence-bridge"), DendriteBinDir: dir})
	if !errors.Is(err, ErrMissing) {
		t.Fatalf("Run without the programs: %v, want ErrMissing", err)
	}
	t.Log(err)
}
