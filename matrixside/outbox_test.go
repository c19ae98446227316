package matrixside

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
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

func presenceIs(state mapping.State, status string) mapping.Presence {
	return mapping.Presence{State: state, Status: status}
}

// TestLatestOnlyAndOnlyChanges: while a ghost's PUT is in flight, newer
// states replace each other and only the latest goes out next; a state
// equal to what the homeserver has is not sent; there is no time window
// of its own (the core coalesces).
func TestLatestOnlyAndOnlyChanges(t *testing.T) {
	hs := newFakeHS(t)
	release := make(chan struct{})
	hs.answer = func(_ string, n int) (int, string) {
		if n == 1 {
			<-release
		}
		return 200, ""
	}
	cfg := testConfig(hs.URL)
	cfg.MaxStatusLength = 8
	s := newTestSide(t, cfg, nil, &fakeObserver{})
	startWorkers(t, s)
	const alice = "alice@example.com"
	ghost := ghostOf(t, alice)
	now := time.Now()

	s.showGhost(alice, presenceIs(mapping.StateAvailable, "one"), time.Time{}, now)
	waitFor(t, 5*time.Second, "first PUT in flight", func() bool { return len(hs.putsOf(ghost)) == 1 })
	for i, st := range []string{"a", "b", "c", "d", "latest"} {
		s.showGhost(alice, presenceIs(mapping.State(int(mapping.StateAway)+i%2), st), time.Time{}, now)
	}
	close(release)
	waitFor(t, 5*time.Second, "second PUT", func() bool { return len(hs.putsOf(ghost)) == 2 })
	if got := hs.putsOf(ghost)[1]; got.StatusMsg != "latest" || got.Presence != "unavailable" {
		t.Errorf("second PUT %+v, want the latest state", got)
	}
	waitFor(t, 5*time.Second, "idle", s.out.idle)

	// The same state again: nothing sent. Then at once, with no window: a
	// status cut to 8 bytes without splitting the é, and a cleared status.
	s.showGhost(alice, presenceIs(mapping.StateAway, "latest"), time.Time{}, now)
	s.showGhost(alice, presenceIs(mapping.StateBusy, "1234567é9"), time.Time{}, now)
	waitFor(t, 5*time.Second, "busy PUT", func() bool { return len(hs.putsOf(ghost)) == 3 })
	if got := hs.putsOf(ghost)[2]; got.StatusMsg != "1234567" || got.Presence != "unavailable" {
		t.Errorf("busy without MSC3026: %+v, want unavailable with the status cut to 7 bytes", got)
	}
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	s.showGhost(alice, presenceIs(mapping.StateAvailable, ""), time.Time{}, now)
	waitFor(t, 5*time.Second, "cleared PUT", func() bool { return len(hs.putsOf(ghost)) == 4 })
	hs.mu.Lock()
	last := hs.raw[len(hs.raw)-1]
	hs.mu.Unlock()
	if !strings.Contains(last, `"status_msg":""`) {
		t.Errorf("clearing PUT body %s lacks status_msg \"\"", last)
	}
	// Unknown must never look offline: the ghost is left as it is.
	s.showGhost(alice, presenceIs(mapping.StateUnknown, ""), time.Time{}, now)
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
	s := newTestSide(t, testConfig(hs.URL), nil, &fakeObserver{})
	startWorkers(t, s)
	alice, bob := ghostOf(t, "alice@example.com"), ghostOf(t, "bob@example.com")
	now := time.Now()
	s.showGhost("alice@example.com", presenceIs(mapping.StateAvailable, "first"), time.Time{}, now)
	waitFor(t, 5*time.Second, "429", func() bool { return len(hs.putsOf(alice)) == 1 })
	limited := time.Now()
	// While limited: a newer state for alice, and another ghost. Neither
	// may be sent before retry_after_ms; alice's first state is dropped.
	s.showGhost("alice@example.com", presenceIs(mapping.StateAway, "second"), time.Time{}, now)
	s.showGhost("bob@example.com", presenceIs(mapping.StateAway, "bob"), time.Time{}, now)
	// Generous: on a loaded machine (the whole suite in parallel) this once
	// took over 5 s; the assertions below are about order, not speed.
	waitFor(t, 20*time.Second, "retries", func() bool { return len(hs.putsOf(alice)) == 2 && len(hs.putsOf(bob)) == 1 })
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
	s := newTestSide(t, testConfig(hs.URL), nil, &fakeObserver{})
	s.out.minBackoff = 50 * time.Millisecond
	s.health.minBackoff = 50 * time.Millisecond
	startWorkers(t, s)
	alice, bad := ghostOf(t, "alice@example.com"), ghostOf(t, "bad@example.com")
	s.showGhost("alice@example.com", presenceIs(mapping.StateAvailable, "hi"), time.Time{}, time.Now())
	s.showGhost("bad@example.com", presenceIs(mapping.StateAvailable, "refused"), time.Time{}, time.Now())
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

// TestWaitShown: waitShown returns once the homeserver has the state, at
// once if it has it already, errPresenceRefused if it refused it for
// good, and ctx's error while the gate is closed.
func TestWaitShown(t *testing.T) {
	hs := newFakeHS(t)
	var mu sync.Mutex
	limit := false
	hs.answer = func(ghost string, _ int) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.Contains(ghost, "bad"):
			return 400, `{"errcode":"M_BAD_JSON","error":"no"}`
		case limit:
			return 429, `{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":60000}`
		}
		return 200, ""
	}
	s := newTestSide(t, testConfig(hs.URL), nil, &fakeObserver{})
	startWorkers(t, s)
	ctx := t.Context()
	ghost, v, _ := s.showGhost("alice@example.com", presenceIs(mapping.StateAvailable, "x"), time.Time{}, time.Now())
	if err := s.out.waitShown(ctx, ghost, v); err != nil || len(hs.putsOf(string(ghost))) != 1 {
		t.Fatalf("waitShown: %v after %d PUTs", err, len(hs.putsOf(string(ghost))))
	}
	ghost, v, _ = s.showGhost("alice@example.com", presenceIs(mapping.StateAvailable, "x"), time.Time{}, time.Now())
	if err := s.out.waitShown(ctx, ghost, v); err != nil || len(hs.putsOf(string(ghost))) != 1 {
		t.Fatalf("unchanged state: %v after %d PUTs", err, len(hs.putsOf(string(ghost))))
	}
	bad, v, _ := s.showGhost("bad@example.com", presenceIs(mapping.StateAvailable, "x"), time.Time{}, time.Now())
	if err := s.out.waitShown(ctx, bad, v); !errors.Is(err, errPresenceRefused) {
		t.Fatalf("refused state: %v", err)
	}
	mu.Lock()
	limit = true
	mu.Unlock()
	ghost, v, _ = s.showGhost("alice@example.com", presenceIs(mapping.StateOffline, "x"), time.Time{}, time.Now())
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := s.out.waitShown(wctx, ghost, v); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("rate-limited state: %v, want the deadline", err)
	}
}

func TestRefreshResendsPaced(t *testing.T) {
	hs := newFakeHS(t)
	s := newTestSide(t, testConfig(hs.URL), nil, &fakeObserver{})
	startWorkers(t, s)
	jids := []mapping.BareJID{"a@example.com", "b@example.com", "c@example.com", "d@example.com"}
	for _, j := range jids {
		s.showGhost(j, presenceIs(mapping.StateAway, "x"), time.Time{}, time.Now())
	}
	waitFor(t, 5*time.Second, "initial PUTs", func() bool { return hs.rawPuts() == 4 })
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	start := time.Now()
	if n := s.out.refresh(400*time.Millisecond, start); n != 4 {
		t.Fatalf("refresh scheduled %d", n)
	}
	waitFor(t, 5*time.Second, "refresh PUTs", func() bool { return hs.rawPuts() == 8 })
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("refresh of 4 ghosts over 400ms took %v: not paced", d)
	}
}

// deliveries records what a side reports through OnDelivered.
type deliveries struct {
	mu  sync.Mutex
	got []time.Time
}

func (d *deliveries) add(at time.Time) { d.mu.Lock(); d.got = append(d.got, at); d.mu.Unlock() }

func (d *deliveries) all() []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.got...)
}

// TestDeliveryReported: a PUT answered 2xx reports the ObservedAt of the
// command that asked for its state, once; states replaced while a PUT
// was in flight, states the homeserver has already, refused states, a
// command without ObservedAt and the refresh report nothing; a retried
// PUT reports once it goes through.
func TestDeliveryReported(t *testing.T) {
	hs := newFakeHS(t)
	release := make(chan struct{})
	hs.answer = func(ghost string, n int) (int, string) {
		switch {
		case strings.Contains(ghost, "bad"):
			return 400, `{"errcode":"M_BAD_JSON","error":"no"}`
		case strings.Contains(ghost, "retry") && n == 1:
			return 500, ``
		case strings.Contains(ghost, "alice") && n == 1:
			<-release
		}
		return 200, ""
	}
	s := newTestSide(t, testConfig(hs.URL), nil, &fakeObserver{})
	s.workers = 1 // reports in the order of the PUTs
	s.out.minBackoff = 10 * time.Millisecond
	var d deliveries
	s.OnDelivered(d.add)
	startWorkers(t, s)
	const alice = "alice@example.com"
	ghost := ghostOf(t, alice)
	show := func(jid mapping.BareJID, p mapping.Presence, at time.Time) {
		t.Helper()
		if err := s.ShowGhost(t.Context(), bridge.GhostPresence{Stamp: bridge.Stamp{ObservedAt: at}, User: jid, Presence: p}); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }

	show(alice, presenceIs(mapping.StateAvailable, "one"), at(1))
	waitFor(t, 5*time.Second, "first PUT in flight", func() bool { return len(hs.putsOf(ghost)) == 1 })
	show(alice, presenceIs(mapping.StateAway, "two"), at(2))
	show(alice, presenceIs(mapping.StateAway, "three"), at(3)) // latest-only: two is never sent
	close(release)
	waitFor(t, 5*time.Second, "second PUT", func() bool { return len(hs.putsOf(ghost)) == 2 })
	waitFor(t, 5*time.Second, "idle", s.out.idle)

	show(alice, presenceIs(mapping.StateAway, "three"), at(4))           // shown already: no PUT
	show(alice, presenceIs(mapping.StateAvailable, "four"), time.Time{}) // nothing observed
	show("bad@example.com", presenceIs(mapping.StateAway, "x"), at(5))   // refused for good
	show("retry@example.com", presenceIs(mapping.StateAway, "x"), at(6)) // 500, then 200
	waitFor(t, 5*time.Second, "PUTs", func() bool {
		return len(hs.putsOf(ghost)) == 3 && len(hs.putsOf(ghostOf(t, "retry@example.com"))) == 2
	})
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	if n := s.out.refresh(time.Millisecond, time.Now()); n == 0 {
		t.Fatal("nothing to refresh")
	}
	waitFor(t, 5*time.Second, "refresh PUTs", func() bool { return len(hs.putsOf(ghost)) == 4 })
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	// A marker: with one worker, every report before it has been made.
	show(alice, presenceIs(mapping.StateBusy, "last"), at(7))
	waitFor(t, 5*time.Second, "the marker reported", func() bool { return slices.Contains(d.all(), at(7)) })

	want := []time.Time{at(1), at(3), at(6), at(7)}
	if got := d.all(); !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Errorf("reported %v, want %v", got, want)
	}
}

// TestDeliveryNotReportedWhenSettled: a state set back to what the
// homeserver shows while it waited in the queue is never sent, and
// neither it nor the refresh that re-sends it later reports a delivery.
func TestDeliveryNotReportedWhenSettled(t *testing.T) {
	hs := newFakeHS(t)
	release := make(chan struct{})
	hs.answer = func(ghost string, n int) (int, string) {
		if strings.Contains(ghost, "slow") && n == 1 {
			<-release
		}
		return 200, ""
	}
	s := newTestSide(t, testConfig(hs.URL), nil, &fakeObserver{})
	s.workers = 1
	var d deliveries
	s.OnDelivered(d.add)
	startWorkers(t, s)
	bob := ghostOf(t, "bob@example.com")
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	show := func(jid mapping.BareJID, status string, at time.Time) {
		t.Helper()
		if err := s.ShowGhost(t.Context(), bridge.GhostPresence{Stamp: bridge.Stamp{ObservedAt: at}, User: jid, Presence: presenceIs(mapping.StateAway, status)}); err != nil {
			t.Fatal(err)
		}
	}
	show("bob@example.com", "b1", t0)
	waitFor(t, 5*time.Second, "bob's PUT", func() bool { return len(hs.putsOf(bob)) == 1 })
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	show("slow@example.com", "s", t0.Add(time.Second)) // holds the only worker
	waitFor(t, 5*time.Second, "slow PUT in flight", func() bool { return len(hs.putsOf(ghostOf(t, "slow@example.com"))) == 1 })
	show("bob@example.com", "b2", t0.Add(2*time.Second))
	show("bob@example.com", "b1", t0.Add(3*time.Second)) // back to what the homeserver has
	close(release)
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	if n := s.out.refresh(time.Millisecond, time.Now()); n != 2 {
		t.Fatalf("refresh scheduled %d, want 2", n)
	}
	waitFor(t, 5*time.Second, "refresh PUTs", func() bool { return len(hs.putsOf(bob)) == 2 })
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	show("bob@example.com", "marker", t0.Add(4*time.Second))
	waitFor(t, 5*time.Second, "the marker reported", func() bool { return slices.Contains(d.all(), t0.Add(4*time.Second)) })
	want := []time.Time{t0, t0.Add(time.Second), t0.Add(4 * time.Second)}
	if got := d.all(); !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Errorf("reported %v, want %v", got, want)
	}
}

// TestStartRestoresGhostsFromCoreRecords: a side that starts (a restart,
// or a takeover after the core's commands went to an instance that was
// dying) shows the presence the core last recorded for the XMPP users of
// approved links; not for a person who opted out, nor for a link only
// asked for.
func TestStartRestoresGhostsFromCoreRecords(t *testing.T) {
	hs := newFakeHS(t)
	s := newTestSide(t, testConfig(hs.URL), nil, &fakeObserver{})
	ctx := t.Context()
	put := func(jid mapping.BareJID, state bridge.LinkState, optOut bool) {
		l := bridge.Link{MatrixUser: "@bob:example.org", XMPPUser: jid, State: state, UpdatedAt: time.Now()}
		if _, err := s.store.Links.Put(ctx, bridge.PairKey(string(l.MatrixUser), string(jid)), l); err != nil {
			t.Fatal(err)
		}
		key := bridge.PresenceKey(mapping.NetworkXMPP, string(jid))
		if _, err := s.store.Presence.Put(ctx, key, bridge.PresenceRecord{Presence: presenceIs(mapping.StateAway, "private of "+string(jid)), Seq: 1, UpdatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if optOut {
			if _, err := s.store.Settings.Put(ctx, key, bridge.UserSettings{OptOut: true, UpdatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	put("alice@example.com", bridge.LinkApproved, false)
	put("carol@example.com", bridge.LinkApproved, true)
	put("dave@example.com", bridge.LinkAsked, false)

	s.loadLinks(ctx)
	startWorkers(t, s)
	alice := ghostOf(t, "alice@example.com")
	waitFor(t, 10*time.Second, "alice's ghost shown", func() bool { return len(hs.putsOf(alice)) == 1 })
	if got := hs.putsOf(alice)[0]; got.StatusMsg != "private of alice@example.com" {
		t.Errorf("alice's ghost shows %+v", got)
	}
	waitFor(t, 5*time.Second, "idle", s.out.idle)
	for _, jid := range []mapping.BareJID{"carol@example.com", "dave@example.com"} {
		if n := len(hs.putsOf(ghostOf(t, jid))); n != 0 {
			t.Errorf("%s: %d PUTs, want none", jid, n)
		}
	}
}
