package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
)

// BenchmarkLatency measures end-to-end latency with the real servers, from
// one user's change to the other user's client: XMPP→Matrix (alice's
// presence stanza sent → bob's /sync returns the ghost's new presence) and
// Matrix→XMPP (bob's PUT /presence sent → alice's client receives the
// puppet's presence). It reports p50 and p99 of each in milliseconds
// (targets: p50 ≤ 50 ms, p99 ≤ 250 ms). Changes are paced a little over
// the coalescing window apart, so that coalescing adds nothing. Run it
// with e.g. -benchtime=200x for a meaningful p99.
//
// The bridge learns Matrix presence through its bot's /sync: a ghost
// invites the bot into every direct chat it opens.
func BenchmarkLatency(b *testing.B) {
	e := newEnv(b, options{})
	l := e.linkedPair()
	measureLatency(b, l)
}

// measureLatency changes presence on each side of l in turn, paced past
// the coalescing window, and reports the p50 and p99 of the time each
// change took to be seen on the other side.
func measureLatency(b *testing.B, l linked) {
	pace := coalesceWindow + 50*time.Millisecond
	var toMatrix, toXMPP []time.Duration
	var lastAlice, lastBob time.Time
	shows := []string{"away", ""}
	presences := []string{"unavailable", "online"}
	for i := 0; b.Loop(); i++ {
		status := fmt.Sprintf("x2m-%d", i)
		waitUntil(lastAlice.Add(pace))
		lastAlice = time.Now()
		sendPresence(b, l.alice, "", "", shows[i%2], status)
		got := l.bob.waitPresence(waitLatency, l.ghost, status, is(presences[i%2], status))
		toMatrix = append(toMatrix, got.At.Sub(lastAlice))

		status = fmt.Sprintf("m2x-%d", i)
		waitUntil(lastBob.Add(pace))
		am := markX(l.alice)
		lastBob = time.Now()
		l.bob.put(presences[i%2], status)
		am.wait(b, waitLatency, status, presenceFrom(l.puppet, func(s prosodytest.Stanza) bool { return s.Status == status }))
		toXMPP = append(toXMPP, time.Since(lastBob))
	}
	b.ReportMetric(0, "ns/op") // the pacing, not the bridge
	b.ReportMetric(percentile(toMatrix, 50), "x2m-p50-ms")
	b.ReportMetric(percentile(toMatrix, 99), "x2m-p99-ms")
	b.ReportMetric(percentile(toXMPP, 50), "m2x-p50-ms")
	b.ReportMetric(percentile(toXMPP, 99), "m2x-p99-ms")
}

// waitUntil paces the benchmark's changes; it waits for no event.
func waitUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		<-time.After(d)
	}
}

// percentile returns the p-th percentile of ds in milliseconds.
func percentile(ds []time.Duration, p int) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = min(max(i-1, 0), len(s)-1)
	return float64(s[i].Microseconds()) / 1000
}
