package bridge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

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
