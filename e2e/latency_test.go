package e2e

import (
	"context"
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
// Two set-ups: "poll", the plain consent flow, where the bridge learns
// Matrix presence by polling GET /presence (poll_interval 200ms), and
// "bot-in-room", where bob also invites the bridge bot into the direct
// chat, so that the bot's /sync sees his presence at once.
func BenchmarkLatency(b *testing.B) {
	b.Run("poll", func(b *testing.B) { benchLatency(b, false) })
	b.Run("bot-in-room", func(b *testing.B) { benchLatency(b, true) })
}

func benchLatency(b *testing.B, inviteBot bool) {
	e := newEnv(b, options{})
	l := e.linkedPair()
	if inviteBot {
		bot := "@presencebot:" + e.ns.HomeserverDomain
		ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
		defer cancel()
		if err := l.bob.Invite(ctx, l.room, bot); err != nil {
			b.Fatal(err)
		}
		poll(b, flowTimeout, "bot joined", func() error {
			if len(e.bridge.logLines("bot joined room", l.room)) == 0 {
				return fmt.Errorf("bridge log shows no join of %s yet", l.room)
			}
			return nil
		})
	}
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
