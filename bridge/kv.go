package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrConflict is returned by [Bucket.PutAt] when the key is not at the
// revision the caller expected: another writer got there first.
var ErrConflict = errors.New("bridge: revision conflict")

// errConflict: a compare-and-set lost against another writer.
var errConflict = ErrConflict

// kv is what a [Bucket] needs of a key-value store: JetStream KV in the
// bridge, a map in tests.
type kv interface {
	get(ctx context.Context, key string) ([]byte, uint64, error) // ErrNotFound
	put(ctx context.Context, key string, data []byte) (uint64, error)
	create(ctx context.Context, key string, data []byte) (uint64, error)             // errConflict if present
	update(ctx context.Context, key string, data []byte, rev uint64) (uint64, error) // errConflict if rev is not current
	delete(ctx context.Context, key string) error
	keys(ctx context.Context) ([]string, error)
	// watch calls fn for every change after it started (data nil: a
	// deletion) until ctx ends; errWatchUnsupported for memKV.
	watch(ctx context.Context, fn func(key string, data []byte, rev uint64)) error
}

// ErrWatchUnsupported is returned by [Bucket.Watch] on a memory store.
var ErrWatchUnsupported = errors.New("bridge: this store cannot be watched")

func (j jsKV) watch(ctx context.Context, fn func(key string, data []byte, rev uint64)) error {
	w, err := j.kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil {
				continue
			}
			if e.Operation() == jetstream.KeyValuePut {
				fn(e.Key(), e.Value(), e.Revision())
			} else {
				fn(e.Key(), nil, e.Revision())
			}
		}
	}
}

func (m *memKV) watch(context.Context, func(string, []byte, uint64)) error {
	return ErrWatchUnsupported
}

type jsKV struct{ kv jetstream.KeyValue }

func (j jsKV) get(ctx context.Context, key string) ([]byte, uint64, error) {
	e, err := j.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	return e.Value(), e.Revision(), nil
}

func (j jsKV) put(ctx context.Context, key string, data []byte) (uint64, error) {
	return j.kv.Put(ctx, key, data)
}

func conflict(err error) error {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return errConflict
	}
	return err
}

func (j jsKV) create(ctx context.Context, key string, data []byte) (uint64, error) {
	rev, err := j.kv.Create(ctx, key, data)
	return rev, conflict(err)
}

func (j jsKV) update(ctx context.Context, key string, data []byte, rev uint64) (uint64, error) {
	rev, err := j.kv.Update(ctx, key, data, rev)
	return rev, conflict(err)
}

func (j jsKV) delete(ctx context.Context, key string) error {
	if err := j.kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	return nil
}

func (j jsKV) keys(ctx context.Context) ([]string, error) {
	lister, err := j.kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	return keys, nil
}

// memKV is an in-memory kv with the same revision rules as JetStream.
type memKV struct {
	mu   sync.Mutex
	rev  uint64
	data map[string]memEntry
}

type memEntry struct {
	data []byte
	rev  uint64
}

func (m *memKV) get(_ context.Context, key string) ([]byte, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.data[key]
	if !ok {
		return nil, 0, ErrNotFound
	}
	return slices.Clone(e.data), e.rev, nil
}

func (m *memKV) set(key string, data []byte) uint64 {
	m.rev++
	m.data[key] = memEntry{slices.Clone(data), m.rev}
	return m.rev
}

func (m *memKV) put(_ context.Context, key string, data []byte) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.set(key, data), nil
}

func (m *memKV) create(_ context.Context, key string, data []byte) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.data[key]; ok {
		return 0, errConflict
	}
	return m.set(key, data), nil
}

func (m *memKV) update(_ context.Context, key string, data []byte, rev uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.data[key]; !ok || e.rev != rev {
		return 0, errConflict
	}
	return m.set(key, data), nil
}

func (m *memKV) delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.data, key)
	return nil
}

func (m *memKV) keys(context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.data))
	for k := range m.data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

func memBucket[T any](name string) *Bucket[T] {
	return &Bucket[T]{kv: &memKV{data: map[string]memEntry{}}, name: name}
}

// NewMemoryStore returns a store whose buckets live in memory: for tests of
// the core and the sides without NATS. Entries never expire.
func NewMemoryStore() *Store {
	return &Store{
		Presence:      memBucket[PresenceRecord](BucketPresence),
		Subscriptions: memBucket[Subscription](BucketSubscriptions),
		Links:         memBucket[Link](BucketLinks),
		Settings:      memBucket[UserSettings](BucketSettings),
		Txns:          memBucket[time.Time](BucketTxns),
		Federation:    memBucket[json.RawMessage](BucketFederation),
		GhostPresence: memBucket[GhostShown](BucketGhostPresence),
		MatrixSync:    memBucket[SyncPosition](BucketMatrixSync),
		Directed:      memBucket[Directed](BucketDirected),
	}
}
