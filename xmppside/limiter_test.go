package xmppside

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestBudget: a burst, then one event per interval; the address and the
// domain each have their own bucket, and a refused event spends nothing.
func TestBudget(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := newBudget(Rate{Every: 10 * time.Second, Burst: 2}, Rate{Every: time.Second, Burst: 3}, []string{"home"})
	steps := []struct {
		at         time.Duration
		addr, dom  string
		want       refusal
		wantReason string
	}{
		{0, "a@x", "x", allowed, ""},
		{0, "a@x", "x", allowed, ""},
		{0, "a@x", "x", overAddress, "the address's burst is spent"},
		{0, "b@x", "x", allowed, ""},
		{0, "c@x", "x", overDomain, "the domain's burst is spent"},
		{0, "a@y", "y", allowed, "another domain has its own"},
		{time.Second, "c@x", "x", allowed, "the domain earned one token"},
		{time.Second, "d@x", "x", overDomain, ""},
		{10 * time.Second, "a@x", "x", allowed, "the address earned one token"},
		{10 * time.Second, "a@x", "x", overAddress, ""},
		{0, "a@home", "home", allowed, ""},
		{0, "b@home", "home", allowed, ""},
		{0, "c@home", "home", allowed, "a local domain has no per-domain budget"},
		{0, "c@home", "home", allowed, ""},
		{0, "c@home", "home", overAddress, "but its addresses have theirs"},
	}
	for i, s := range steps {
		if got := b.allow(s.addr, s.dom, t0.Add(s.at)); got != s.want {
			t.Fatalf("step %d (%s, %s): %d, want %d %s", i, s.addr, s.dom, got, s.want, s.wantReason)
		}
	}
}

// TestBucketsBounded: a limiter remembers at most its maximum of keys,
// forgetting the least recently used.
func TestBucketsBounded(t *testing.T) {
	b := newBuckets(Rate{Every: time.Hour, Burst: 1}, 100)
	now := time.Now()
	for i := range 1000 {
		b.take(fmt.Sprint(i), now)
	}
	if len(b.m) != 100 {
		t.Fatalf("%d keys kept, max 100", len(b.m))
	}
	if b.tokens("999", now) >= 1 || b.tokens("0", now) < 1 {
		t.Fatal("want the most recent kept and the oldest forgotten (a full bucket again)")
	}
	n := 0
	for e := b.lru.next; e != &b.lru; e = e.next {
		n++
	}
	if n != 100 {
		t.Fatalf("the LRU ring holds %d entries", n)
	}
}

// TestPeerLogBounded: a peer that makes the component log the same line
// without end gets a bounded number of lines, and the next line allowed
// says how many were held back.
func TestPeerLogBounded(t *testing.T) {
	var b strings.Builder
	h := newLimitedLogger(slog.New(slog.NewTextHandler(&b, nil))).Handler()
	t0 := time.Now()
	logAt := func(at time.Time, msg string) {
		if err := h.Handle(context.Background(), slog.NewRecord(at, slog.LevelWarn, msg, 0)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10000 {
		logAt(t0.Add(time.Duration(i)*time.Microsecond), "refusing stanza without from")
	}
	lines := strings.Count(b.String(), "\n")
	if lines > peerLogRate.Burst+1 || lines < peerLogRate.Burst {
		t.Fatalf("%d lines for 10000 events in 10 ms, burst %d", lines, peerLogRate.Burst)
	}
	logAt(t0.Add(time.Second), "refusing stanza without from")
	if last := b.String()[strings.LastIndex(strings.TrimRight(b.String(), "\n"), "\n")+1:]; !strings.Contains(last, "suppressed=") {
		t.Fatalf("the line after a pause does not count what was held back: %s", last)
	}
	logAt(t0.Add(time.Second), "another message")
	if !strings.Contains(b.String(), "another message") {
		t.Fatal("one message's limit held back another")
	}
}
