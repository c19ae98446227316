package bridge

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// InStream is the JetStream work-queue stream that keeps every report the
// sides make to the core (pb.v1.in.…, presence included) until a core
// instance has handled it. Its subject transform adds the user's
// partition:
//
//	pb.v1.in.<network>.<kind>.<user>  →  pb.in.<partition>.<network>.<kind>.<user>
//
// with partition = {{partition(n,3)}}, NATS's FNV-1a hash of the user
// token modulo n ([PartitionOf] computes the same number). Each partition
// is read by one durable consumer, held by one core instance at a time.
const InStream = "PB_IN"

// inRoot is the root of InStream's stored (transformed) subjects.
const inRoot = "pb.in"

// partitionsMeta is the InStream metadata key that records n: the
// transform cannot change under stored messages, so the stream, made by
// the first process, is the authority every core instance checks its
// core.partitions against.
const partitionsMeta = "pb_partitions"

// DefaultPartitions is the number of partitions of a new InStream when the
// configuration names none.
const DefaultPartitions = 16

// MaxPartitions bounds core.partitions: each partition is one consumer.
const MaxPartitions = 1024

// ErrPartitions is returned when the configured number of partitions
// differs from the one InStream was made with.
var ErrPartitions = errors.New("bridge: partition count differs from the stream's")

// Partition is one share of the users: those whose subject token hashes
// to Index modulo Count.
type Partition struct {
	Index, Count int
}

func (p Partition) String() string { return strconv.Itoa(p.Index) + "/" + strconv.Itoa(p.Count) }

// PartitionOf is the partition index, among n, of the events about user:
// the hash NATS's partition(n,…) subject-mapping function computes over
// the user's subject token (FNV-1a, 32 bits, modulo n).
func PartitionOf(n int, user string) int { return partitionOfToken(n, EncodeToken(user)) }

func partitionOfToken(n int, token string) int {
	if n <= 0 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(token))
	return int(h.Sum32() % uint32(n))
}

// Holds reports whether the user of net is in p.
func (p Partition) Holds(user string) bool { return PartitionOf(p.Count, user) == p.Index }

// HoldsKey reports whether the user of a [PresenceKey] is in p.
func (p Partition) HoldsKey(key string) bool {
	_, tok, ok := strings.Cut(key, ".")
	return ok && partitionOfToken(p.Count, tok) == p.Index
}

// PartitionOfKey is the partition index, among n, of the user of a
// [PresenceKey] (-1 for a malformed key).
func PartitionOfKey(n int, key string) int {
	_, tok, ok := strings.Cut(key, ".")
	if !ok {
		return -1
	}
	return partitionOfToken(n, tok)
}

// partitionFilter is the subject filter of partition i's consumer.
func (b *Bus) partitionFilter(i int) string {
	if b.unpartitioned {
		return subjectRoot + "." + string(In) + ".>"
	}
	return inRoot + "." + strconv.Itoa(i) + ".>"
}

// PartitionConsumer is the durable consumer name of partition i.
func PartitionConsumer(i int) string { return "core-p" + strconv.Itoa(i) }

// originalSubject turns a stored InStream subject back into the subject
// the side published on (for dead letters and replay).
func originalSubject(stored string) string {
	rest, ok := strings.CutPrefix(stored, inRoot+".")
	if !ok {
		return stored
	}
	if _, tail, ok := strings.Cut(rest, "."); ok {
		return subjectRoot + "." + string(In) + "." + tail
	}
	return stored
}

// ensureInStream makes InStream with n partitions if it is missing, and
// reads the number of partitions of the one that exists: a transform is
// never changed under stored messages.
func (b *Bus) ensureInStream(ctx context.Context, cfg Config) error {
	n := cfg.Partitions
	if n == 0 {
		n = DefaultPartitions
	}
	s, err := b.js.Stream(ctx, InStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) && !transformsSupported(b.nc.ConnectedServerVersion()) {
		// nats-server before 2.10 has no subject transforms: one
		// partition, read from the subjects as published.
		s, err = b.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:      InStream,
			Subjects:  []string{subjectRoot + "." + string(In) + ".*.*.*"},
			Storage:   jetstream.FileStorage,
			Retention: jetstream.WorkQueuePolicy,
			MaxAge:    cfg.ControlMaxAge,
			Replicas:  cfg.Replicas,
		})
	} else if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = b.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:      InStream,
			Subjects:  []string{subjectRoot + "." + string(In) + ".*.*.*"},
			Storage:   jetstream.FileStorage,
			Retention: jetstream.WorkQueuePolicy,
			MaxAge:    cfg.ControlMaxAge,
			Replicas:  cfg.Replicas,
			SubjectTransform: &jetstream.SubjectTransformConfig{
				Source:      subjectRoot + "." + string(In) + ".*.*.*",
				Destination: inRoot + ".{{partition(" + strconv.Itoa(n) + ",3)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}",
			},
			Metadata: map[string]string{partitionsMeta: strconv.Itoa(n)},
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = b.js.Stream(ctx, InStream) // another process made it first
		}
	}
	if err != nil {
		return fmt.Errorf("bridge: stream %s: %w", InStream, err)
	}
	if s.CachedInfo().Config.SubjectTransform == nil {
		b.partitions, b.unpartitioned = 1, true
		b.log.Warn("nats-server older than 2.10 (no subject transforms): the core's reports are not partitioned, run one core instance", "server_version", b.nc.ConnectedServerVersion())
		return nil
	}
	got, err := strconv.Atoi(s.CachedInfo().Config.Metadata[partitionsMeta])
	if err != nil || got < 1 {
		return fmt.Errorf("bridge: stream %s: no partition count in its metadata", InStream)
	}
	b.partitions = got
	return nil
}

// transformsSupported reports whether a nats-server version has stream
// subject transforms (2.10 and later).
func transformsSupported(version string) bool {
	major, rest, _ := strings.Cut(version, ".")
	minor, _, _ := strings.Cut(rest, ".")
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(minor)
	return err1 == nil && err2 == nil && (ma > 2 || ma == 2 && mi >= 10)
}

// Partitions is the number of partitions of InStream: what every core
// instance must be configured with.
func (b *Bus) Partitions() int { return b.partitions }

// CheckPartitions returns [ErrPartitions] unless n (core.partitions) is
// the stream's number of partitions.
func (b *Bus) CheckPartitions(n int) error {
	if n != b.partitions && !b.unpartitioned {
		return fmt.Errorf("%w: core.partitions is %d, stream %s was made with %d (every core instance must use the same number; to change it, stop every instance and delete the stream once it is empty)", ErrPartitions, n, InStream, b.partitions)
	}
	return nil
}

// legacyCoreConsumers are the durable consumers of the control stream
// through which the core read its reports before InStream existed.
var legacyCoreConsumers = []string{"core-xmpp-subscriptions", "core-matrix-membership", "core-optout"}

// migrateLegacyReports moves the reports a previous version left unread
// in the control stream to InStream (published again on their original
// subjects, de-duplicated by event id), then deletes the old consumers.
// One still holding a report it cannot deliver yet (waiting for a retry)
// is kept for the next start.
func (b *Bus) migrateLegacyReports(ctx context.Context) error {
	for _, name := range legacyCoreConsumers {
		cons, err := b.js.Consumer(ctx, ControlStream, name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bridge: legacy consumer %s: %w", name, err)
		}
		moved := 0
		for {
			batch, err := cons.FetchNoWait(100)
			if err != nil {
				return fmt.Errorf("bridge: legacy consumer %s: %w", name, err)
			}
			n := 0
			for m := range batch.Messages() {
				n++
				ev, err := DecodeEvent(m.Data())
				if err != nil {
					_ = m.Term()
					continue
				}
				if _, err := b.js.Publish(ctx, m.Subject(), m.Data(), jetstream.WithMsgID(ev.ID)); err != nil {
					return fmt.Errorf("bridge: moving a report to %s: %w", InStream, err)
				}
				if err := m.DoubleAck(ctx); err != nil {
					return fmt.Errorf("bridge: legacy consumer %s: %w", name, err)
				}
				moved++
			}
			if n == 0 {
				break
			}
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("bridge: legacy consumer %s: %w", name, err)
		}
		if info.NumPending > 0 || info.NumAckPending > 0 {
			b.log.Warn("reports of the previous version still waiting for a retry; moved at the next start", "consumer", name, "moved", moved, "waiting", info.NumPending+uint64(info.NumAckPending))
			continue
		}
		if err := b.js.DeleteConsumer(ctx, ControlStream, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("bridge: legacy consumer %s: %w", name, err)
		}
		b.log.Info("reports of the previous version moved to the partitioned stream", "consumer", name, "moved", moved, "stream", InStream)
	}
	return nil
}
