package bridge

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// term records one holder's terms.
type term struct {
	mu     sync.Mutex
	active bool
	starts []time.Time
	ends   []time.Time
}

func (tm *term) on(active bool) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	tm.active = active
	if active {
		tm.starts = append(tm.starts, time.Now())
	} else {
		tm.ends = append(tm.ends, time.Now())
	}
}

func (tm *term) isActive() bool { tm.mu.Lock(); defer tm.mu.Unlock(); return tm.active }

func (tm *term) count() (starts, ends int) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return len(tm.starts), len(tm.ends)
}

var testLease = LeaseConfig{TTL: 1500 * time.Millisecond, Renew: 300 * time.Millisecond}

func testLeases(t *testing.T, b *Bus, holder string) *Leases {
	t.Helper()
	l, err := b.Leases(context.Background(), testLease, 1, holder)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// runLease runs l.Run in the background until the returned stop is called.
func runLease(t *testing.T, l *Leases, tm *term, work func(context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	if work == nil {
		work = func(ctx context.Context) error { <-ctx.Done(); return nil }
	}
	go func() { done <- l.Run(ctx, "xmpp", work, tm.on) }()
	var once sync.Once
	var err error
	stop = func() error { once.Do(func() { cancel(); err = <-done }); return err }
	t.Cleanup(func() { _ = stop() })
	return stop
}

// TestLeaseOneActiveAndCleanHandover: of two instances exactly one is
// active; when it stops cleanly the other takes over at once, without
// waiting for the TTL.
func TestLeaseOneActiveAndCleanHandover(t *testing.T) {
	b := openTestBus(t, "")
	var ta, tb term
	la := testLeases(t, b, "a")
	var renewals atomic.Int32
	la.stall = func() { renewals.Add(1) }
	stopA := runLease(t, la, &ta, nil)
	waitFor(t, 5*time.Second, "a active", ta.isActive)
	runLease(t, testLeases(t, b, "b"), &tb, nil)
	// Renewals over three TTLs later, b still stands by.
	renewals.Store(0)
	waitFor(t, 10*testLease.TTL, "a's renewals", func() bool { return renewals.Load() > int32(3*testLease.TTL/testLease.Renew) })
	if tb.isActive() || !ta.isActive() {
		t.Fatalf("a active %v, b active %v: want only a", ta.isActive(), tb.isActive())
	}
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b active", tb.isActive)
	// Released, not expired: b started sooner after a's term ended than
	// the lease would have taken to expire (a's own shutdown not counted).
	ta.mu.Lock()
	aEnded := ta.ends
	ta.mu.Unlock()
	tb.mu.Lock()
	bStarted := tb.starts[0]
	tb.mu.Unlock()
	if len(aEnded) != 1 {
		t.Fatalf("a's terms ended: %v, want one", aEnded)
	}
	if took := bStarted.Sub(aEnded[0]); took >= testLease.TTL {
		t.Errorf("clean handover took %v after a's term ended, want less than the TTL (%v): the lease was not released", took, testLease.TTL)
	}
}

// TestLeaseHolderDiesOtherTakesOver: a holder that stops renewing (its
// process died) is replaced once the lease expires on the server.
func TestLeaseHolderDiesOtherTakesOver(t *testing.T) {
	b := openTestBus(t, "")
	var ta, tb term
	la := testLeases(t, b, "a")
	release := make(chan struct{})
	var stalled atomic.Bool
	la.stall = func() {
		if stalled.Load() {
			<-release
		}
	}
	runLease(t, la, &ta, nil)
	var once sync.Once
	wake := func() { once.Do(func() { close(release) }) }
	t.Cleanup(wake) // before the Run above is stopped
	waitFor(t, 5*time.Second, "a active", ta.isActive)
	lb := testLeases(t, b, "b")
	var bRenewals atomic.Int32
	lb.stall = func() { bRenewals.Add(1) }
	runLease(t, lb, &tb, nil)

	// a freezes: no renewal from now on (a dead or paused process).
	stalled.Store(true)
	frozen := time.Now()
	waitFor(t, 3*testLease.TTL+testLease.Renew, "b active", tb.isActive)
	took := time.Since(frozen)
	if took > testLease.TTL+2*testLease.Renew+time.Second {
		t.Errorf("takeover took %v, want about the TTL (%v)", took, testLease.TTL)
	}
	// Fencing: a stopped acting before b started.
	ta.mu.Lock()
	aEnded := ta.ends
	ta.mu.Unlock()
	tb.mu.Lock()
	bStarted := tb.starts[0]
	tb.mu.Unlock()
	if len(aEnded) != 1 || !aEnded[0].Before(bStarted) {
		t.Fatalf("a's term ended at %v, b's began at %v: two active at once", aEnded, bStarted)
	}
	wake()
	// a wakes up, finds the lease taken and stands by: while b renews
	// twice more, a is never active again.
	n := bRenewals.Load()
	waitFor(t, 10*testLease.TTL, "two more renewals by b", func() bool {
		if ta.isActive() {
			t.Fatal("a, woken up, is active again while b holds the lease")
		}
		return bRenewals.Load() >= n+2
	})
	if ta.isActive() {
		t.Fatal("a, woken up, is active again while b holds the lease")
	}
}

// TestLeaseWorkErrorEndsRun: a term whose work fails for its own reason
// ends Run with that error and releases the lease.
func TestLeaseWorkErrorEndsRun(t *testing.T) {
	b := openTestBus(t, "")
	boom := errors.New("refused secret")
	var ta, tb term
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := testLeases(t, b, "a").Run(ctx, "xmpp", func(context.Context) error { return boom }, ta.on); !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want %v", err, boom)
	}
	start := time.Now()
	runLease(t, testLeases(t, b, "b"), &tb, nil)
	waitFor(t, 5*time.Second, "b active", tb.isActive)
	if time.Since(start) >= testLease.TTL {
		t.Error("the failed holder did not release the lease")
	}
}

func TestLeaseConfigValidate(t *testing.T) {
	if err := DefaultLeaseConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := LeaseConfig{TTL: 2 * time.Second, Renew: 1500 * time.Millisecond}
	if err := bad.Validate(); err == nil {
		t.Fatal("renew above half the TTL accepted")
	}
}
