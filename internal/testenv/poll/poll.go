// Package poll waits in tests for a condition to hold, with a deadline:
// the one way tests here wait for an event. It imports nothing of the
// project, so that every package's tests may use it (package bridge's
// own tests included).
package poll

import (
	"testing"
	"time"
)

// Every is how often Until checks its condition.
const Every = 5 * time.Millisecond

// Until checks cond every Every until it holds, and fails the test with
// what once timeout has passed without it.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if cond() {
		return
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(Every)
	defer tick.Stop()
	for {
		select {
		case <-deadline.C:
			if cond() {
				return
			}
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		case <-tick.C:
			if cond() {
				return
			}
		}
	}
}
