package xmppside

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestServerKilledGhostsGoOffline: Prosody dies without a goodbye
// (SIGKILL). Once the component has been without its stream for the
// offline grace, every XMPP user it saw online is reported offline with
// their last status; users already offline are not reported again. When
// Prosody is back, the re-probe reports the real presence.
func TestServerKilledGhostsGoOffline(t *testing.T) {
	const grace = 500 * time.Millisecond
	// A slow reconnect, so that the grace runs out first and alice is back
	// before the component: only the re-probe can tell it about her.
	r := startRig(t, PolicyAccept, func(c *Config) {
		c.OfflineGrace = grace
		c.ReconnectMin, c.ReconnectMax = 4*time.Second, 4*time.Second
	})
	const aliceJID, daveJID, erinJID mapping.BareJID = "alice@localhost", "dave@localhost", "erin@localhost"
	alice := r.login("alice", "laptop", 0, "", "here")
	dave := r.login("dave", "desk", 0, "away", "afk")
	erin := r.login("erin", "tablet", 0, "", "")
	for _, c := range []*prosodytest.Client{alice, dave, erin} {
		r.befriend(c, bob)
		if err := c.SendPresence(r.ctx(), "", "", "", "", 0); err != nil { // presence for the puppet now that it may see it
			t.Fatal(err)
		}
	}
	if err := alice.SendPresence(r.ctx(), "", "", "", "here", 0); err != nil {
		t.Fatal(err)
	}
	if err := dave.SendPresence(r.ctx(), "", "", "away", "afk", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice and dave online", func() bool {
		return r.obs.lastPresence(aliceJID).Status == "here" && r.obs.lastPresence(daveJID).Status == "afk"
	})
	erin.Close() // erin goes offline before the crash
	waitFor(t, waitLong, "erin offline", func() bool { return r.obs.lastPresence(erinJID).State == mapping.StateOffline })

	killed := time.Now() // before: the component may see the stream end before Kill returns
	r.srv.Kill()
	waitFor(t, waitLong, "alice and dave reported offline", func() bool {
		return r.obs.lastPresence(aliceJID).State == mapping.StateOffline && r.obs.lastPresence(daveJID).State == mapping.StateOffline
	})
	for user, status := range map[mapping.BareJID]string{aliceJID: "here", daveJID: "afk"} {
		ps, at := r.obs.presenceReports(user)
		last := ps[len(ps)-1]
		if last.Status != status {
			t.Errorf("%s offline with status %q, want the last one %q", user, last.Status, status)
		}
		if d := at[len(at)-1].Sub(killed); d < grace {
			t.Errorf("%s reported offline %v after the crash, before the grace of %v", user, d, grace)
		}
	}
	if n := countState(r.obs.presenceOf(erinJID), mapping.StateOffline); n != 1 {
		t.Errorf("erin reported offline %d times, want once", n)
	}
	if r.comp.connects.Load() != 1 {
		t.Fatal("the component reconnected before the test could check the grace")
	}

	r.srv.Restart(t)
	alice = r.srv.Login(t, "alice", "alice-pw", "laptop2")
	if _, err := alice.Roster(r.ctx()); err != nil {
		t.Fatal(err)
	}
	if err := alice.SendPresence(r.ctx(), "", "", "chat", "back", 0); err != nil {
		t.Fatal(err)
	}
	before := r.comp.connects.Load()
	waitFor(t, waitLong, "alice back", func() bool {
		p := r.obs.lastPresence(aliceJID)
		return p.State == mapping.StateFreeForChat && p.Status == "back"
	})
	if before < 2 {
		t.Log("alice was back before the component: the re-probe brought her presence")
	}
	// dave did not come back: the probe answer (unavailable) is no news.
	r.ping(alice, r.puppet(bob))
	if p := r.obs.lastPresence(daveJID); p.State != mapping.StateOffline || p.Status != "afk" {
		t.Errorf("dave after the reconnect: %+v", p)
	}
}

func countState(ps []mapping.Presence, st mapping.State) int {
	n := 0
	for _, p := range ps {
		if p.State == st {
			n++
		}
	}
	return n
}

// TestWrongSecret: a refused handshake is a configuration error, logged at
// ERROR with the fix, and after max_auth_failures in a row Run returns
// ErrAuthentication instead of retrying forever.
func TestWrongSecret(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.Options{ComponentDomain: "matrix.localhost", ComponentSecret: "the-right-secret"})
	cfg := rigConfig(t, srv)
	cfg.Secret = "a-wrong-secret"
	cfg.MaxAuthFailures = 2
	cfg.ReconnectMin, cfg.ReconnectMax = 10*time.Millisecond, 50*time.Millisecond
	logs := newLogRecorder(t)
	comp, err := New(cfg, testNamespace(cfg.ComponentDomain), mapping.NewTranslator(mapping.DefaultTable(), false), openTestStore(t), &fakeObserver{}, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	err = comp.Run(ctx)
	if !errors.Is(err, ErrAuthentication) {
		t.Fatalf("Run = %v, want ErrAuthentication", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run returned only when its context ended")
	}
	errs := logs.matching(slog.LevelError, "check xmpp.secret against the server's component_secret")
	if len(errs) != 2 {
		t.Errorf("%d errors with the fix, want one per failure (2):\n%s", len(errs), logs.all())
	}
	if n := len(logs.matching(slog.LevelWarn, "reconnecting")); n != 0 {
		t.Errorf("authentication failures also logged as %d warnings", n)
	}
	if strings.Contains(logs.all()+err.Error(), cfg.Secret) {
		t.Error("the secret was logged")
	}
}

// TestOtherConnectionErrorsRetry: a server that cannot be reached is not a
// configuration error: the component keeps retrying with backoff until its
// context ends, whatever max_auth_failures says.
func TestOtherConnectionErrorsRetry(t *testing.T) {
	cfg := validConfig()
	cfg.Host, cfg.Port = "127.0.0.1", prosodytest.FreePort(t) // nobody listens
	cfg.MaxAuthFailures = 1
	cfg.ReconnectMin, cfg.ReconnectMax = 10*time.Millisecond, 20*time.Millisecond
	logs := newLogRecorder(t)
	comp, err := New(cfg, testNamespace(cfg.ComponentDomain), mapping.NewTranslator(mapping.DefaultTable(), false), openTestStore(t), &fakeObserver{}, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- comp.Run(ctx) }()
	waitFor(t, waitLong, "three retries", func() bool { return len(logs.matching(slog.LevelWarn, "reconnecting")) >= 3 })
	select {
	case err := <-done:
		t.Fatalf("Run gave up: %v", err)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v after cancel, want nil", err)
	}
	if n := len(logs.matching(slog.LevelError, "authentication")); n != 0 {
		t.Errorf("a refused connection was taken for an authentication failure")
	}
}
