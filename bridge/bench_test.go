package bridge

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

func sampleEvent() *Event {
	return &Event{V: SchemaVersion, ID: NewID(), Kind: KindPresence, Origin: mapping.NetworkXMPP, User: "alice@example.com", Seq: 1763700000000000000,
		ObservedAt: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC),
		Presence:   &mapping.Presence{State: mapping.StateBusy, Status: "in a meeting", LastActive: time.Date(2026, 11, 21, 11, 58, 0, 0, time.UTC), Priority: 5}}
}

// BenchmarkEnvelopeRoundTrip: one encode plus one decode (target ≤ 2 µs).
func BenchmarkEnvelopeRoundTrip(b *testing.B) {
	ev := sampleEvent()
	b.ReportAllocs()
	for b.Loop() {
		data, err := EncodeEvent(ev)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := DecodeEvent(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublishReceive: events published on the embedded server and
// received, decoded, by a subscriber (target ≥ 100k events/s).
func BenchmarkPublishReceive(b *testing.B) {
	bus := openTestBus(b, "")
	ctx := context.Background()
	var got atomic.Int64
	sub, err := bus.Subscribe(ctx, SubjectFilter(In, mapping.NetworkXMPP, KindPresence), func(context.Context, *Event) { got.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	ev := sampleEvent()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		ev.Seq = 0
		if err := bus.Publish(ctx, In, ev); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, time.Minute, "all events received", func() bool { return got.Load() == int64(b.N) })
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkPresenceRecordWrite: what storing one presence record costs, as
// it was before the redesign (the XMPP side and the core each read the
// record and wrote it with compare-and-set) and as it is now (the core
// alone, order checked in memory, a plain put). CPU per event is what a
// presence workload pays for state.
func BenchmarkPresenceRecordWrite(b *testing.B) {
	rec := PresenceRecord{Presence: mapping.Presence{State: mapping.StateAway, Status: "lunch"}, UpdatedAt: time.Now().UTC()}
	ctx := context.Background()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = PresenceKey(mapping.NetworkMatrix, fmt.Sprintf("@user%d:example.org", i))
	}
	b.Run("two writers, get and compare-and-set", func(b *testing.B) {
		s := openTestBus(b, "").Store()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			rec.Seq = uint64(i + 1)
			for range 2 {
				if _, err := s.Presence.Update(ctx, keys[i%len(keys)], func(cur PresenceRecord, exists bool) (PresenceRecord, bool, error) {
					return rec, !exists || cur.Seq < rec.Seq, nil
				}); err != nil {
					b.Fatal(err)
				}
			}
			i++
		}
	})
	b.Run("one writer, put", func(b *testing.B) {
		s := openTestBus(b, "").Store()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			rec.Seq = uint64(i + 1)
			if _, err := s.Presence.Put(ctx, keys[i%len(keys)], rec); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
