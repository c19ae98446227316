package natscluster

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestKillRestart: a node killed with SIGKILL comes back on its ports and
// data, and the cluster is healthy again.
func TestKillRestart(t *testing.T) {
	c := Start(t, 3)
	c.Kill(1)
	// If node 1 led the JetStream meta group, the others elect another
	// leader first (seconds).
	for deadline := time.Now().Add(30 * time.Second); ; {
		err := jsReady(c.URL(0))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream through node 0 with node 1 dead: %v", err)
		}
		<-time.After(100 * time.Millisecond) // an answer that came at once ("no responders")
	}
	c.Restart(1)
	c.WaitReady(60 * time.Second)
	nc, err := nats.Connect(c.URL(1), nats.Timeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := nc.FlushWithContext(ctx); err != nil {
		t.Fatal(err)
	}
}
