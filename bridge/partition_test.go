package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// TestPartitionOfIsNATSMapping: the partition the core computes for a user
// (to rebuild its state) is the one the stream's partition(n) mapping
// put the user's reports in.
func TestPartitionOfIsNATSMapping(t *testing.T) {
	b := openTestBus(t, t.TempDir())
	ctx := context.Background()
	var users []string
	for i := range 64 {
		users = append(users, fmt.Sprintf("user%d@example.com", i), fmt.Sprintf("@user%d:example.org", i))
	}
	for _, u := range users {
		net := mapping.NetworkXMPP
		if strings.HasPrefix(u, "@") {
			net = mapping.NetworkMatrix
		}
		if err := b.Publish(ctx, In, &Event{Kind: KindOptOut, Origin: net, User: u, OptOut: &OptOutPayload{Enabled: true}}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := b.js.Stream(ctx, InStream)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for seq := uint64(1); seq <= uint64(len(users)); seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		parts := strings.Split(m.Subject, ".")
		if len(parts) != 6 || parts[0]+"."+parts[1] != inRoot {
			t.Fatalf("stored subject %q", m.Subject)
		}
		user, err := DecodeToken(parts[5])
		if err != nil {
			t.Fatal(err)
		}
		if got, want := parts[2], strconv.Itoa(PartitionOf(DefaultPartitions, user)); got != want {
			t.Errorf("%s: NATS put it in partition %s, PartitionOf says %s", user, got, want)
		}
		if originalSubject(m.Subject) != Subject(In, mustNet(parts[3]), KindOptOut, user) {
			t.Errorf("original subject of %q: %q", m.Subject, originalSubject(m.Subject))
		}
		seen[parts[2]] = true
	}
	if len(seen) < DefaultPartitions/2 {
		t.Errorf("128 users fell in only %d partitions", len(seen))
	}
}

func mustNet(s string) mapping.Network {
	n, err := mapping.ParseNetwork(s)
	if err != nil {
		panic(err)
	}
	return n
}

// TestPartitionCountMustMatch: an instance configured with another
// number of partitions than the stream was made with refuses to serve.
func TestPartitionCountMustMatch(t *testing.T) {
	dir := t.TempDir()
	b := openTestBus(t, dir)
	if b.Partitions() != DefaultPartitions {
		t.Fatalf("partitions %d", b.Partitions())
	}
	b.wantPartitions = 32
	err := b.ServePartitions(context.Background(), PartitionOptions{}, PartitionHandler{Handle: func(context.Context, *Event) error { return nil }}, nil)
	if !errors.Is(err, ErrPartitions) {
		t.Fatalf("ServePartitions with 32 partitions on a 16-partition stream: %v, want ErrPartitions", err)
	}
}

// TestLegacyReportsMoved: a report the previous version left in the
// control stream for its core consumer is moved to InStream on upgrade,
// and the old consumer goes.
func TestLegacyReportsMoved(t *testing.T) {
	b := openTestBus(t, t.TempDir())
	ctx := context.Background()
	// The previous version's layout: reports in the control stream, read
	// by the core's durable consumer.
	if err := b.js.DeleteStream(ctx, InStream); err != nil {
		t.Fatal(err)
	}
	legacy := jetstream.StreamConfig{Name: ControlStream, Subjects: []string{"pb.v1.*.*.subscription.*"}, Storage: jetstream.FileStorage}
	if _, err := b.js.UpdateStream(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.CreateOrUpdateConsumer(ctx, ControlStream, jetstream.ConsumerConfig{Durable: legacyCoreConsumers[0], FilterSubject: SubjectFilter(In, mapping.NetworkXMPP, KindSubscription), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	ev := &Event{Kind: KindSubscription, Origin: mapping.NetworkXMPP, User: "alice@example.com", Peer: "@bob:example.org", Subscription: &SubscriptionPayload{Type: Subscribe}}
	if err := b.Publish(ctx, In, ev); err != nil {
		t.Fatal(err)
	}
	// The upgrade.
	if err := b.ensureStream(ctx, Default()); err != nil {
		t.Fatal(err)
	}
	if err := b.migrateLegacyReports(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := b.js.Stream(ctx, InStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, inRoot+".*.xmpp.subscription.*")
	if err != nil {
		t.Fatalf("the report is not in %s: %v", InStream, err)
	}
	if got, err := DecodeEvent(m.Data); err != nil || got.ID != ev.ID {
		t.Fatalf("moved report %q: %v", m.Data, err)
	}
	if _, err := b.js.Consumer(ctx, ControlStream, legacyCoreConsumers[0]); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("legacy consumer still there: %v", err)
	}
}

// TestLostLeaseStopsTheOwner: an instance whose partition lease another
// instance took (as after a pause longer than the lease) stops handling
// that partition's events at its next renewal, without handing anything
// over, and keeps its other partitions.
func TestLostLeaseStopsTheOwner(t *testing.T) {
	b := openTestBus(t, t.TempDir())
	b.wantPartitions = DefaultPartitions
	var mu sync.Mutex
	handled := map[string]int{}
	lost := map[int]bool{}
	h := PartitionHandler{
		Handle: func(_ context.Context, ev *Event) error {
			mu.Lock()
			handled[ev.User]++
			mu.Unlock()
			return nil
		},
		Release: func(_ context.Context, p Partition, handOver bool) {
			mu.Lock()
			lost[p.Index] = lost[p.Index] || !handOver
			mu.Unlock()
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	const ttl = 1200 * time.Millisecond
	go func() {
		done <- b.ServePartitions(ctx, PartitionOptions{Instance: "me", LeaseTTL: ttl}, h, func() { close(ready) })
	}()
	defer func() { cancel(); <-done }()
	<-ready
	// Two users in different partitions.
	var u0, u1 string
	for i := 0; u0 == "" || u1 == ""; i++ {
		u := fmt.Sprintf("user%d@example.com", i)
		switch PartitionOf(DefaultPartitions, u) {
		case 0:
			if u0 == "" {
				u0 = u
			}
		case 1:
			if u1 == "" {
				u1 = u
			}
		}
	}
	publish := func(u string) {
		t.Helper()
		if err := b.Publish(context.Background(), In, &Event{Kind: KindOptOut, Origin: mapping.NetworkXMPP, User: u, OptOut: &OptOutPayload{Enabled: true}}); err != nil {
			t.Fatal(err)
		}
	}
	count := func(u string) int { mu.Lock(); defer mu.Unlock(); return handled[u] }
	publish(u0)
	waitFor(t, 10*time.Second, "partition 0 served", func() bool { return count(u0) == 1 })
	// Another instance takes partition 0's lease.
	kv, err := b.js.KeyValue(context.Background(), BucketPartitions)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(lease{Owner: "intruder", Expires: time.Now().Add(time.Hour)})
	if _, err := kv.Put(context.Background(), leaseKey(0), data); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "partition 0 released as lost", func() bool { mu.Lock(); defer mu.Unlock(); return lost[0] })
	publish(u0)
	publish(u1)
	waitFor(t, 10*time.Second, "partition 1 still served", func() bool { return count(u1) == 1 })
	time.Sleep(2 * ttl / 6) // a renewal round: partition 0 must stay unserved
	if n := count(u0); n != 1 {
		t.Fatalf("partition 0's event handled %d times after its lease was lost, want 1 (before the loss only)", n)
	}
}
