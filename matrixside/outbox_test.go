package matrixside

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// startWorkers runs the side's outbox workers until the test ends.
func startWorkers(t testing.TB, s *Side) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range s.workers {
		wg.Go(func() { s.out.run(ctx) })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func presenceOf(state mapping.State, status string) mapping.Presence {
	return mapping.Presence{State: state, Status: status}
}

func TestCoalescingAndOnlyChanges(t *testing.T) {
	hs := newFakeHS(t)
	cfg := testConfig(hs.URL)
	cfg.CoalesceWindow = 300 * time.Millisecond
	cfg.MaxStatusLength = 8
	s := newTestSide(t, cfg, nil)
	startWorkers(t, s)
	ghost := ghostOf(t, "alice@example.com")
	now := time.Now()

	s.setGhostPresence("alice@example.com", presenceOf(mapping.StateAvailable, "one"), now)
	waitFor(t, 5*time.Second, "first PUT", func() bool { return len(hs.putsOf(ghost)) == 1 })
	start := time.Now()
	for i, st := range []string{"a", "b", "c", "d", "latest"} {
		s.setGhostPresence("alice@example.com", presenceOf(mapping.State(int(mapping.StateAway)+i%2), st), now)
	}
	waitFor(t, 5*time.Second, "coalesced PUT", func() bool { return len(hs.putsOf(ghost)) == 2 })
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("second PUT %v after the first, want ≥ the 300ms window", d)
	}
	if got := hs.putsOf(ghost)[1]; got.StatusMsg != "latest" || got.Presence != "unavailable" {
		t.Errorf("coalesced PUT %+v, want the latest state", got)
	}
	// The same state again: nothing sent. Then a status cut to 8 bytes
	// without splitting the é, and a cleared status.
	s.setGhostPresence("alice@example.com", presenceOf(mapping.StateAway, "latest"), now)
	s.setGhostPresence("alice@example.com", presenceOf(mapping.StateBusy, "1234567é9"), now)
	waitFor(t, 5*time.Second, "busy PUT", func() bool { return len(hs.putsOf(ghost)) == 3 })
	if got := hs.putsOf(ghost)[2]; got.StatusMsg != "1234567" || got.Presence != "unavailable" {
		t.Errorf("busy without MSC3026: %+v, want unavailable with the status cut to 7 bytes", got)
	}
	s.setGhostPresence("alice@example.com", presenceOf(mapping.StateAvailable, ""), now)
	waitFor(t, 5*time.Second, "cleared PUT", func() bool { return len(hs.putsOf(ghost)) == 4 })
	hs.mu.Lock()
	last := hs.raw[len(hs.raw)-1]
	hs.mu.Unlock()
	if !strings.Contains(last, `"status_msg":""`) {
		t.Errorf("clearing PUT body %s lacks status_msg \"\"", last)
	}
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	if n := len(hs.putsOf(ghost)); n != 4 {
		t.Errorf("%d PUTs, want 4", n)
	}
}

func TestRetryAfter429(t *testing.T) {
	hs := newFakeHS(t)
	hs.answer = func(_ string, n int) (int, string) {
		if n == 1 {
			return 429, `{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":400}`
		}
		return 200, ""
	}
	cfg := testConfig(hs.URL)
	cfg.CoalesceWindow = 0
	s := newTestSide(t, cfg, nil)
	startWorkers(t, s)
	alice, bob := ghostOf(t, "alice@example.com"), ghostOf(t, "bob@example.com")
	now := time.Now()
	s.setGhostPresence("alice@example.com", presenceOf(mapping.StateAvailable, "first"), now)
	waitFor(t, 5*time.Second, "429", func() bool { return len(hs.putsOf(alice)) == 1 })
	limited := time.Now()
	// While limited: a newer state for alice, and another ghost. Neither
	// may be sent before retry_after_ms; alice's first state is dropped.
	s.setGhostPresence("alice@example.com", presenceOf(mapping.StateAway, "second"), now)
	s.setGhostPresence("bob@example.com", presenceOf(mapping.StateAway, "bob"), now)
	waitFor(t, 5*time.Second, "retries", func() bool { return len(hs.putsOf(alice)) == 2 && len(hs.putsOf(bob)) == 1 })
	hs.mu.Lock()
	aliceAt, bobAt := hs.putTimes[alice][1], hs.putTimes[bob][0]
	hs.mu.Unlock()
	if d := aliceAt.Sub(limited); d < 350*time.Millisecond {
		t.Errorf("alice retried %v after the 429, want ≥ 400ms", d)
	}
	if d := bobAt.Sub(limited); d < 350*time.Millisecond {
		t.Errorf("bob sent %v after the 429, want ≥ 400ms (the gate is for all ghosts)", d)
	}
	if got := hs.putsOf(alice)[1]; got.StatusMsg != "second" {
		t.Errorf("retry sent %+v, want the latest state", got)
	}
	waitFor(t, 5*time.Second, "idle", s.out.idle)
}

func TestRetry5xx(t *testing.T) {
	hs := newFakeHS(t)
	hs.answer = func(ghost string, n int) (int, string) {
		if strings.Contains(ghost, "bad") {
			return 400, `{"errcode":"M_BAD_JSON","error":"no"}`
		}
		switch n {
		case 1:
			return 502, `<html>bad gateway</html>`
		case 2:
			return 503, `{"errcode":"M_UNKNOWN"}`
		case 3:
			return 500, ``
		}
		return 200, ""
	}
	cfg := testConfig(hs.URL)
	cfg.CoalesceWindow = 0
	s := newTestSide(t, cfg, nil)
	s.out.minBackoff = 50 * time.Millisecond
	startWorkers(t, s)
	alice, bad := ghostOf(t, "alice@example.com"), ghostOf(t, "bad@example.com")
	s.setGhostPresence("alice@example.com", presenceOf(mapping.StateAvailable, "hi"), time.Now())
	s.setGhostPresence("bad@example.com", presenceOf(mapping.StateAvailable, "refused"), time.Now())
	waitFor(t, 10*time.Second, "delivery after three 5xx", func() bool { return len(hs.putsOf(alice)) == 4 })
	hs.mu.Lock()
	ts := append([]time.Time(nil), hs.putTimes[alice]...)
	hs.mu.Unlock()
	for i := 1; i < len(ts); i++ {
		if d := ts[i].Sub(ts[i-1]); d < 40*time.Millisecond {
			t.Errorf("retry %d after %v: no backoff", i, d)
		}
	}
	if ts[3].Sub(ts[2]) < ts[1].Sub(ts[0]) {
		t.Errorf("backoff did not grow: %v then %v", ts[1].Sub(ts[0]), ts[3].Sub(ts[2]))
	}
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	if n := len(hs.putsOf(bad)); n != 1 {
		t.Errorf("a 400 was retried: %d PUTs", n)
	}
}

func TestRefreshResendsPaced(t *testing.T) {
	hs := newFakeHS(t)
	cfg := testConfig(hs.URL)
	cfg.CoalesceWindow = 0
	s := newTestSide(t, cfg, nil)
	startWorkers(t, s)
	jids := []string{"a@example.com", "b@example.com", "c@example.com", "d@example.com"}
	for _, j := range jids {
		s.setGhostPresence(j, presenceOf(mapping.StateAway, "x"), time.Now())
	}
	waitFor(t, 5*time.Second, "initial PUTs", func() bool { hs.mu.Lock(); defer hs.mu.Unlock(); return len(hs.raw) == 4 })
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	start := time.Now()
	if n := s.out.refresh(400*time.Millisecond, start); n != 4 {
		t.Fatalf("refresh scheduled %d", n)
	}
	waitFor(t, 5*time.Second, "refresh PUTs", func() bool { hs.mu.Lock(); defer hs.mu.Unlock(); return len(hs.raw) == 8 })
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("refresh of 4 ghosts over 400ms took %v: not paced", d)
	}
}
