package core

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestPartitionsValidated: core.partitions is 1 to 1024, 16 by default.
func TestPartitionsValidated(t *testing.T) {
	if err := Default().Validate(); err != nil || Default().Partitions != 16 {
		t.Fatalf("default: %d partitions, %v", Default().Partitions, err)
	}
	for _, n := range []int{0, -1, 1025} {
		cfg := Default()
		cfg.Partitions = n
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "partitions: ") {
			t.Errorf("partitions %d: %v, want an error naming partitions", n, err)
		}
	}
}

// TestOwnerWritesWithCompareAndSet (issue 11): an instance that took a
// partition writes its users' presence records with compare-and-set from
// the revision it read, so a record another instance wrote meanwhile
// with a newer sequence (this one lost the partition and does not know
// it yet) is not overwritten by its older one.
func TestOwnerWritesWithCompareAndSet(t *testing.T) {
	store := bridge.NewMemoryStore()
	ctx := context.Background()
	if _, err := store.Links.Put(ctx, bridge.PairKey(bob, alice), bridge.Link{MatrixUser: bob, XMPPUser: alice, State: bridge.LinkApproved, UpdatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	c, err := New(Default(), ns, store, &recorder{}, &recorder{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	defer func() { cancel(); <-done }()
	<-c.Ready()
	p := bridge.Partition{Index: bridge.PartitionOf(16, alice), Count: 16}
	if err := c.AcquirePartition(ctx, p); err != nil {
		t.Fatal(err)
	}
	key := bridge.PresenceKey(mapping.NetworkXMPP, alice)
	report := func(seq uint64, status string) {
		t.Helper()
		if err := c.XMPPPresence(ctx, bridge.XMPPPresence{Stamp: bridge.Stamp{Seq: seq}, User: alice, Presence: mapping.Presence{State: mapping.StateAway, Status: status}}); err != nil {
			t.Fatal(err)
		}
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	report(10, "mine")
	// The next owner writes a newer record.
	if _, err := store.Presence.Put(ctx, key, bridge.PresenceRecord{Presence: mapping.Presence{State: mapping.StateAvailable, Status: "newer owner"}, Seq: 100}); err != nil {
		t.Fatal(err)
	}
	report(20, "stale owner")
	rec, _, err := store.Presence.Get(ctx, key)
	if err != nil || rec.Seq != 100 || rec.Presence.Status != "newer owner" {
		t.Fatalf("record after the stale owner's write: %+v, %v; want the newer owner's (seq 100)", rec, err)
	}
}
