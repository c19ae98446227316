package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presence-bridge/presence-bridge/internal/testenv/poll"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// openTestBus starts an embedded server in a temp dir.
func openTestBus(t testing.TB, dir string) *Bus {
	t.Helper()
	cfg := Default()
	if dir == "" {
		dir = t.TempDir()
	}
	cfg.Embedded.DataDir = dir
	b, err := Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, timeout, what, cond)
}

func TestPublishSubscribePresence(t *testing.T) {
	b := openTestBus(t, "")
	ctx := context.Background()
	var mu sync.Mutex
	var got []*Event
	if _, err := b.Subscribe(ctx, SubjectFilter(In, mapping.NetworkXMPP, KindPresence), func(_ context.Context, ev *Event) {
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	// Something on the other network or direction must not arrive.
	_ = b.Publish(ctx, In, &Event{Kind: KindPresence, Origin: mapping.NetworkMatrix, User: "@bob:example.org", Presence: &mapping.Presence{State: mapping.StateAway}})
	_ = b.Publish(ctx, Out, &Event{Kind: KindPresence, Origin: mapping.NetworkMatrix, User: "@bob:example.org", Presence: &mapping.Presence{State: mapping.StateAway}})
	want := mapping.Presence{State: mapping.StateBusy, Status: "in a meeting", Priority: 5}
	if err := b.Publish(ctx, In, &Event{Kind: KindPresence, Origin: mapping.NetworkXMPP, User: "alice@example.com", Presence: &want}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "presence event", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) > 0 })
	b.Conn().Flush()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].User != "alice@example.com" || !got[0].Presence.Equal(want) || got[0].Seq == 0 || got[0].ID == "" {
		t.Fatalf("got %+v", got)
	}
}

func TestPublishRejectsInvalidEvent(t *testing.T) {
	b := openTestBus(t, "")
	err := b.Publish(context.Background(), In, &Event{Kind: KindPresence, Origin: mapping.NetworkXMPP, User: "alice@example.com"})
	if !errors.Is(err, ErrBadEvent) {
		t.Fatalf("presence without payload: err = %v", err)
	}
}

// TestDurableSurvivesRestart: a subscription request published while nobody
// consumes is delivered after the bus (and its embedded server) restart.
func TestDurableSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	b := openTestBus(t, dir)
	ctx := context.Background()
	ev := &Event{Kind: KindSubscription, Origin: mapping.NetworkXMPP, User: "alice@example.com", Peer: "@bob:example.org", Subscription: &SubscriptionPayload{Type: Subscribe}}
	if err := b.Publish(ctx, Out, ev); err != nil {
		t.Fatal(err)
	}
	b.Close()

	b2 := openTestBus(t, dir)
	cctx, cancel := context.WithCancel(ctx)
	var n atomic.Int32
	var first atomic.Bool
	done := make(chan error, 1)
	go func() {
		done <- b2.Consume(cctx, "test", SubjectFilter(Out, mapping.NetworkMatrix, KindSubscription), nil, func(_ context.Context, got *Event) error {
			if got.ID != ev.ID || got.Subscription.Type != Subscribe {
				t.Errorf("got %+v", got)
			}
			// Fail the first delivery: it must come again.
			if first.CompareAndSwap(false, true) {
				return errors.New("not yet")
			}
			n.Add(1)
			return nil
		})
	}()
	waitFor(t, 10*time.Second, "redelivered subscription", func() bool { return n.Load() == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestBucketUpdateCompareAndSet holds JetStream KV and the in-memory store
// of the tests to the same compare-and-set rules.
func TestBucketUpdateCompareAndSet(t *testing.T) {
	for name, open := range map[string]func() *Store{
		"jetstream": func() *Store { return openTestBus(t, "").Store() },
		"memory":    NewMemoryStore,
	} {
		t.Run(name, func(t *testing.T) {
			s := open()
			ctx := context.Background()
			key := PairKey("@bob:example.org", "alice@example.com")
			var wg sync.WaitGroup
			const writers = 20
			for i := 0; i < writers; i++ {
				wg.Go(func() {
					_, err := s.Links.Update(ctx, key, func(cur Link, exists bool) (Link, bool, error) {
						cur.RoomID += "x" // every writer must be counted once
						return cur, true, nil
					})
					if err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			got, _, err := s.Links.Get(ctx, key)
			if err != nil || len(got.RoomID) != writers {
				t.Fatalf("after %d racing updates: %q, %v", writers, got.RoomID, err)
			}
			if _, _, err := s.Links.Get(ctx, PairKey("@nobody:x.y", "n@x.y")); !errors.Is(err, ErrNotFound) {
				t.Fatalf("missing key: %v", err)
			}
			if err := s.Links.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.Links.Get(ctx, key); !errors.Is(err, ErrNotFound) {
				t.Fatalf("deleted key: %v", err)
			}
		})
	}
}

func TestRetryDelayBackOff(t *testing.T) {
	for n, want := range map[uint64]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 1000: 5 * time.Minute} {
		if got := retryDelay(n, retryBase); got != want {
			t.Errorf("after %d failed deliveries: retry in %v, want %v", n, got, want)
		}
	}
	// The default dead-letter limit outlasts a homeserver down for hours
	// and ends well within the time the stream keeps events.
	span := retrySpan(DefaultMaxDeliver, retryBase)
	if span < 12*time.Hour || span >= Default().ControlMaxAge {
		t.Errorf("the default max_deliver retries for %v", span)
	}
}

func TestMaxDeliverValidated(t *testing.T) {
	cfg := Default()
	cfg.ControlMaxAge = time.Hour
	err := cfg.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "max_deliver: 300: the retries would last") {
		t.Fatalf("max_deliver outlasting control_max_age: %v", err)
	}
	cfg = Default()
	cfg.MaxDeliver = 1
	if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), "max_deliver: 1:") {
		t.Fatalf("max_deliver 1: %v", err)
	}
}

// logRecorder is a slog handler that keeps every record.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r)
	l.mu.Unlock()
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// lines returns the messages logged at level or above.
func (l *logRecorder) lines(level slog.Level) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.records {
		if r.Level >= level {
			out = append(out, r.Level.String()+" "+r.Message)
		}
	}
	return out
}

// openFastRetryBus is a bus whose durable consumers retry after 10ms,
// doubling, and give up after maxDeliver deliveries.
func openFastRetryBus(t *testing.T, maxDeliver int) (*Bus, *logRecorder) {
	t.Helper()
	logs := &logRecorder{}
	cfg := Default()
	cfg.Embedded.DataDir = t.TempDir()
	cfg.MaxDeliver = maxDeliver
	b, err := Open(context.Background(), cfg, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	b.retryBase = 10 * time.Millisecond
	return b, logs
}

// consume runs a durable consumer of every subscription report until the
// test ends.
func consume(t *testing.T, b *Bus, h DurableHandler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- b.Consume(ctx, "test", SubjectFilter(Out, mapping.NetworkMatrix, KindSubscription), func() { close(ready) }, h)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

func subscribeEvent(user string) *Event {
	return &Event{Kind: KindSubscription, Origin: mapping.NetworkXMPP, User: user, Peer: "@bob:example.org", Subscription: &SubscriptionPayload{Type: Subscribe}}
}

// TestDeadLetter (issue 9, defect 3): an event that keeps failing is
// tried max_deliver times, then moved to the dead-letter stream with what
// it takes to replay it, and said once at ERROR; not retried forever.
func TestDeadLetter(t *testing.T) {
	b, logs := openFastRetryBus(t, 4)
	var calls atomic.Int32
	consume(t, b, func(context.Context, *Event) error {
		calls.Add(1)
		return errors.New("homeserver down")
	})
	ev := subscribeEvent("alice@example.com")
	if err := b.Publish(context.Background(), Out, ev); err != nil {
		t.Fatal(err)
	}
	orig := Subject(Out, mapping.NetworkMatrix, KindSubscription, "alice@example.com")
	dead, err := b.js.Stream(context.Background(), DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	var msg *jetstream.RawStreamMsg
	waitFor(t, 10*time.Second, "the dead letter", func() bool {
		msg, err = dead.GetLastMsgForSubject(context.Background(), DeadLetterSubject("test", orig))
		return err == nil
	})
	got, err := DecodeEvent(msg.Data)
	if err != nil || got.ID != ev.ID {
		t.Fatalf("dead letter %q: %v", msg.Data, err)
	}
	if h := msg.Header; h.Get(DeadLetterHeaderSubject) != orig || h.Get(DeadLetterHeaderDeliveries) != "4" || h.Get(DeadLetterHeaderError) != "homeserver down" || h.Get(DeadLetterHeaderConsumer) != "test" {
		t.Fatalf("dead letter headers %v", h)
	}
	// Terminated: nothing is pending or waiting for an ack any more.
	cons, err := b.js.Consumer(context.Background(), ControlStream, "test")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the event terminated", func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	if n := calls.Load(); n != 4 {
		t.Errorf("the handler ran %d times, want max_deliver = 4", n)
	}
	want := []string{"WARN durable consumer failing; retrying with back-off", "ERROR control event given up and moved to the dead-letter stream"}
	if got := logs.lines(slog.LevelWarn); !slices.Equal(got, want) {
		t.Errorf("log lines %q, want %q", got, want)
	}
}

// TestFailingConsumerLogsStateChanges (issue 9, defect 3): while a
// dependency is down, 20 failing events retried with back-off cost one
// WARN line, and its return one INFO line: not one line per retry.
func TestFailingConsumerLogsStateChanges(t *testing.T) {
	b, logs := openFastRetryBus(t, 1000)
	var down atomic.Bool
	down.Store(true)
	var failed, done atomic.Int32
	consume(t, b, func(context.Context, *Event) error {
		if down.Load() {
			failed.Add(1)
			return errors.New("homeserver down")
		}
		done.Add(1)
		return nil
	})
	for i := range 20 {
		if err := b.Publish(context.Background(), Out, subscribeEvent(fmt.Sprintf("user%d@example.com", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "every event failed three times", func() bool { return failed.Load() >= 60 })
	down.Store(false)
	waitFor(t, 10*time.Second, "every event handled", func() bool { return done.Load() == 20 })
	want := []string{"WARN durable consumer failing; retrying with back-off"}
	if got := logs.lines(slog.LevelWarn); !slices.Equal(got, want) {
		t.Errorf("%d failed deliveries logged %q, want %q", failed.Load(), got, want)
	}
	if got := logs.lines(slog.LevelInfo); !slices.Contains(got, "INFO durable consumer recovered") {
		t.Errorf("recovery not logged: %q", got)
	}
}

// TestEmbeddedListenerNeedsToken: when the embedded server listens, only a
// client with the token from the data dir gets in.
func TestEmbeddedListenerNeedsToken(t *testing.T) {
	cfg := Default()
	cfg.Embedded.DataDir = t.TempDir()
	cfg.Embedded.Listen = "127.0.0.1:0"
	b, err := Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	url := b.srv.ClientURL()
	if nc, err := nats.Connect(url, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("connected to the embedded server without a token")
	}
	tok, err := os.ReadFile(filepath.Join(cfg.Embedded.DataDir, TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(cfg.Embedded.DataDir, TokenFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	nc, err := nats.Connect(url, nats.Token(strings.TrimSpace(string(tok))))
	if err != nil {
		t.Fatalf("with the token: %v", err)
	}
	nc.Close()
}

// An event cut short by shutdown is not held against it: at its last
// delivery it comes again after the restart instead of being
// dead-lettered.
func TestShutdownIsNoDeadLetter(t *testing.T) {
	b, logs := openFastRetryBus(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var calls atomic.Int32
	second := make(chan struct{})
	go func() {
		done <- b.Consume(ctx, "test", SubjectFilter(Out, mapping.NetworkMatrix, KindSubscription), nil, func(hctx context.Context, _ *Event) error {
			switch calls.Add(1) {
			case 1:
				return errors.New("homeserver down")
			case 2:
				close(second)
			} // a later call: the Nak at shutdown redelivered it before the consumer stopped
			<-hctx.Done() // the last delivery is under way when the bridge stops
			return hctx.Err()
		})
	}()
	if err := b.Publish(context.Background(), Out, subscribeEvent("alice@example.com")); err != nil {
		t.Fatal(err)
	}
	<-second
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, l := range logs.lines(slog.LevelError) {
		t.Errorf("logged at shutdown: %s", l)
	}
	dead, err := b.js.Stream(context.Background(), DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := dead.Info(context.Background()); err != nil || info.State.Msgs != 0 {
		t.Fatalf("dead letters after a shutdown: %d, %v", info.State.Msgs, err)
	}
}
