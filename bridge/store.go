package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// ErrNotFound is returned by [Bucket.Get] for a key that holds nothing.
var ErrNotFound = errors.New("bridge: not found")

// The bucket names.
const (
	BucketPresence      = "pb_presence"
	BucketSubscriptions = "pb_subscriptions"
	BucketLinks         = "pb_links"
	BucketSettings      = "pb_settings"
	BucketTxns          = "pb_txns"
	BucketFederation    = "pb_federation"
	BucketGhostPresence = "pb_ghost_presence"
	BucketMatrixSync    = "pb_matrix_sync"
	BucketDirected      = "pb_directed"
)

// ghostPresenceTTL is how long a ghost's presence record outlives its
// last write: records of ghosts nobody speaks of any more go, and a ghost
// whose record expired merely gets its presence sent once more.
const ghostPresenceTTL = 30 * 24 * time.Hour

// PresenceRecord is the last presence of one user on one side.
type PresenceRecord struct {
	Presence  mapping.Presence `json:"presence"`
	Seq       uint64           `json:"seq"`
	UpdatedAt time.Time        `json:"updated_at"`
	// ShownSeq is the Seq of the last presence handed to the other side:
	// a core instance that takes the user over shows the record again if
	// it is newer (the previous instance died before showing it).
	ShownSeq uint64 `json:"shown_seq,omitempty"`
}

// Subscription is the RFC 6121 subscription state between a puppet and an
// XMPP contact, from the puppet's point of view: From means the contact may
// see the puppet's presence, To that the puppet sees the contact's. Of the
// sixteen combinations only nine are legal (To excludes PendingOut, From
// excludes PendingIn); the XMPP side owns the transitions.
type Subscription struct {
	To         bool      `json:"to,omitempty"`
	From       bool      `json:"from,omitempty"`
	PendingOut bool      `json:"pending_out,omitempty"`
	PendingIn  bool      `json:"pending_in,omitempty"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// LinkState is where the consent between a Matrix user and an XMPP user stands.
type LinkState string

// The link states.
const (
	LinkAsked    LinkState = "asked"
	LinkApproved LinkState = "approved"
	LinkDenied   LinkState = "denied"
	LinkRevoked  LinkState = "revoked"
)

// Link is the consent between a Matrix user and an XMPP user, and the room
// that carries it on Matrix.
type Link struct {
	MatrixUser mapping.UserID  `json:"matrix_user"`
	XMPPUser   mapping.BareJID `json:"xmpp_user"`
	RoomID     string          `json:"room_id,omitempty"`
	State      LinkState       `json:"state"`
	// Initiator is the network of the person who asked first.
	Initiator mapping.Network `json:"initiator,omitzero"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// UserSettings are one person's choices.
type UserSettings struct {
	// OptOut stops the export of this person's presence to the other network.
	OptOut    bool      `json:"optout,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// GhostShown is what the homeserver shows of a ghost's presence, as
// far as the Matrix side knows: the Matrix presence value and status
// message of the last PUT the homeserver accepted. Pending means a PUT of
// this state was about to be made and its outcome is not known (the
// homeserver shows this state or the one before): such a record says
// nothing, and the next wanted state is sent whatever it is.
type GhostShown struct {
	Presence  string    `json:"presence"`
	Status    string    `json:"status,omitempty"`
	Pending   bool      `json:"pending,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// SyncPosition is where the bridge bot's /sync stands: the next_batch
// token of the last response whose events were all handled.
type SyncPosition struct {
	NextBatch string    `json:"next_batch"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Directed marks an XMPP contact who may still see a puppet's presence
// although the subscriptions bucket no longer lets them (their From was
// revoked) and who has not been sent unavailable since.
type Directed struct {
	Since time.Time `json:"since"`
}

// Store holds the bridge's state in JetStream KV buckets.
type Store struct {
	// Presence: key PresenceKey(network, user): the last presence the core
	// received of each person who holds a link (asked or approved); the
	// record goes when their last link ends. Writer: bridge/core.
	Presence *Bucket[PresenceRecord]
	// Subscriptions: key PairKey(matrix user, xmpp bare JID): the RFC 6121
	// state of each (puppet, contact) pair. Writer: xmppside.
	Subscriptions *Bucket[Subscription]
	// Links: key PairKey(matrix user, xmpp bare JID): consent and the
	// room that carries it. A link that ends (denied, revoked) is deleted
	// once both sides were told; one found in those states is an ending
	// under way. Writer: bridge/core.
	Links *Bucket[Link]
	// Settings: key PresenceKey(network, user): only people who opted out
	// have one. Writer: bridge/core.
	Settings *Bucket[UserSettings]
	// Txns: Matrix transaction ids already processed, kept for a day.
	// Writer: matrixside.
	Txns *Bucket[time.Time]
	// Federation: the federation gateway's rooms (matrix.mode:
	// federation): per room, its version, the ghosts in it and the remote
	// members that share it, as JSON the gateway alone reads. Writer:
	// matrixfed.
	Federation *Bucket[json.RawMessage]
	// GhostPresence: key EncodeToken(ghost's Matrix user ID): what the
	// homeserver shows of each ghost, so that a restart or a takeover
	// sends only what changed. Entries expire 30 days after their last
	// write. Writer: matrixside.
	GhostPresence *Bucket[GhostShown]
	// MatrixSync: key EncodeToken(bot's Matrix user ID): the bot's /sync
	// position, so that a restart or a takeover resumes it instead of
	// syncing from scratch. Writer: matrixside.
	MatrixSync *Bucket[SyncPosition]
	// Directed: key PairKey(matrix user, xmpp bare JID): contacts owed an
	// unavailable from a puppet they may still see (see Directed); an
	// entry lives from just before the revocation is stored until the
	// unavailable is written. Writer: xmppside.
	Directed *Bucket[Directed]
}

// PresenceKey is the key of one user on one network.
func PresenceKey(net mapping.Network, user string) string {
	return net.String() + "." + EncodeToken(user)
}

// ParsePresenceKey is the inverse of [PresenceKey].
func ParsePresenceKey(key string) (mapping.Network, string, error) {
	net, tok, ok := strings.Cut(key, ".")
	if !ok {
		return 0, "", fmt.Errorf("%w: presence key %q", ErrBadToken, key)
	}
	n, err := mapping.ParseNetwork(net)
	if err != nil {
		return 0, "", err
	}
	user, err := DecodeToken(tok)
	return n, user, err
}

// PairKey is the key of a (Matrix user, XMPP user) pair.
func PairKey(matrixUser, xmppUser string) string {
	return EncodeToken(matrixUser) + "." + EncodeToken(xmppUser)
}

// ParsePairKey is the inverse of [PairKey].
func ParsePairKey(key string) (matrixUser, xmppUser string, err error) {
	for i := 0; i < len(key); i++ {
		if key[i] == '.' {
			if matrixUser, err = DecodeToken(key[:i]); err == nil {
				xmppUser, err = DecodeToken(key[i+1:])
			}
			return matrixUser, xmppUser, err
		}
	}
	return "", "", fmt.Errorf("%w: pair key %q", ErrBadToken, key)
}

func openStore(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	s := &Store{}
	var err error
	if s.Presence, err = openBucket[PresenceRecord](ctx, js, BucketPresence, replicas, 0); err != nil {
		return nil, err
	}
	if s.Subscriptions, err = openBucket[Subscription](ctx, js, BucketSubscriptions, replicas, 0); err != nil {
		return nil, err
	}
	if s.Links, err = openBucket[Link](ctx, js, BucketLinks, replicas, 0); err != nil {
		return nil, err
	}
	if s.Settings, err = openBucket[UserSettings](ctx, js, BucketSettings, replicas, 0); err != nil {
		return nil, err
	}
	if s.Txns, err = openBucket[time.Time](ctx, js, BucketTxns, replicas, 24*time.Hour); err != nil {
		return nil, err
	}
	if s.Federation, err = openBucket[json.RawMessage](ctx, js, BucketFederation, replicas, 0); err != nil {
		return nil, err
	}
	if s.GhostPresence, err = openBucket[GhostShown](ctx, js, BucketGhostPresence, replicas, ghostPresenceTTL); err != nil {
		return nil, err
	}
	if s.MatrixSync, err = openBucket[SyncPosition](ctx, js, BucketMatrixSync, replicas, 0); err != nil {
		return nil, err
	}
	if s.Directed, err = openBucket[Directed](ctx, js, BucketDirected, replicas, 0); err != nil {
		return nil, err
	}
	return s, nil
}

// Bucket is a typed key-value bucket holding JSON values: a JetStream KV
// bucket, or an in-memory one in tests ([NewMemoryStore]).
type Bucket[T any] struct {
	kv   kv
	name string
}

func openBucket[T any](ctx context.Context, js jetstream.JetStream, name string, replicas int, ttl time.Duration) (*Bucket[T], error) {
	b, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:   name,
		History:  1,
		Storage:  jetstream.FileStorage,
		Replicas: replicas,
		TTL:      ttl,
	})
	if err != nil {
		return nil, fmt.Errorf("bridge: bucket %s: %w", name, err)
	}
	return &Bucket[T]{kv: jsKV{b}, name: name}, nil
}

// Get returns the value at key and its revision, or [ErrNotFound].
func (b *Bucket[T]) Get(ctx context.Context, key string) (T, uint64, error) {
	var v T
	data, rev, err := b.kv.get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return v, 0, ErrNotFound
	}
	if err != nil {
		return v, 0, fmt.Errorf("bridge: %s get %q: %w", b.name, key, err)
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return v, 0, fmt.Errorf("bridge: %s get %q: corrupt value: %w", b.name, key, err)
	}
	return v, rev, nil
}

// Put stores v at key unconditionally: for the bucket's single writer.
func (b *Bucket[T]) Put(ctx context.Context, key string, v T) (uint64, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("bridge: %s put %q: %w", b.name, key, err)
	}
	rev, err := b.kv.put(ctx, key, data)
	if err != nil {
		return 0, fmt.Errorf("bridge: %s put %q: %w", b.name, key, err)
	}
	return rev, nil
}

// Update reads key, calls fn with the current value (zero and false if
// none) and, if fn says so, writes its result with compare-and-set,
// retrying fn when another writer got there first. It returns the value
// that is stored afterwards.
func (b *Bucket[T]) Update(ctx context.Context, key string, fn func(cur T, exists bool) (next T, write bool, err error)) (T, error) {
	return b.update(ctx, key, fn, nil)
}

func (b *Bucket[T]) update(ctx context.Context, key string, fn func(cur T, exists bool) (next T, write bool, err error), written *uint64) (T, error) {
	for attempt := 0; ; attempt++ {
		cur, rev, err := b.Get(ctx, key)
		exists := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return cur, err
		}
		next, write, err := fn(cur, exists)
		if err != nil || !write {
			return cur, err
		}
		data, err := json.Marshal(next)
		if err != nil {
			return cur, fmt.Errorf("bridge: %s update %q: %w", b.name, key, err)
		}
		var nrev uint64
		if exists {
			nrev, err = b.kv.update(ctx, key, data, rev)
		} else {
			nrev, err = b.kv.create(ctx, key, data)
		}
		if err == nil {
			if written != nil {
				*written = nrev
			}
			return next, nil
		}
		if !errors.Is(err, errConflict) {
			return cur, fmt.Errorf("bridge: %s update %q: %w", b.name, key, err)
		}
		if attempt >= 100 {
			return cur, fmt.Errorf("bridge: %s update %q: too much contention", b.name, key)
		}
		if ctx.Err() != nil {
			return cur, ctx.Err()
		}
	}
}

// PutAt stores v at key only if key is still at revision rev (0: only if
// key holds nothing), and returns the new revision; else [ErrConflict].
// For a single writer that knows the revision it last wrote: a write of
// a writer that lost its turn fails instead of overwriting.
func (b *Bucket[T]) PutAt(ctx context.Context, key string, v T, rev uint64) (uint64, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("bridge: %s put %q: %w", b.name, key, err)
	}
	var nrev uint64
	if rev == 0 {
		nrev, err = b.kv.create(ctx, key, data)
	} else {
		nrev, err = b.kv.update(ctx, key, data, rev)
	}
	if errors.Is(err, errConflict) {
		return 0, fmt.Errorf("bridge: %s put %q at revision %d: %w", b.name, key, rev, ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("bridge: %s put %q: %w", b.name, key, err)
	}
	return nrev, nil
}

// UpdateRev is [Bucket.Update] that also returns the revision written (0
// if nothing was).
func (b *Bucket[T]) UpdateRev(ctx context.Context, key string, fn func(cur T, exists bool) (next T, write bool, err error)) (T, uint64, error) {
	var rev uint64
	v, err := b.update(ctx, key, fn, &rev)
	return v, rev, err
}

// Watch calls fn, from one goroutine, for every change of the bucket
// after it started (deleted: v is zero) until ctx ends. A memory store
// returns [ErrWatchUnsupported].
func (b *Bucket[T]) Watch(ctx context.Context, fn func(key string, v T, rev uint64, deleted bool)) error {
	return b.kv.watch(ctx, func(key string, data []byte, rev uint64) {
		var v T
		if data == nil {
			fn(key, v, rev, true)
			return
		}
		if err := json.Unmarshal(data, &v); err != nil {
			return // not ours to judge: Get reports it
		}
		fn(key, v, rev, false)
	})
}

// Delete removes key.
func (b *Bucket[T]) Delete(ctx context.Context, key string) error {
	if err := b.kv.delete(ctx, key); err != nil {
		return fmt.Errorf("bridge: %s delete %q: %w", b.name, key, err)
	}
	return nil
}

// Keys returns every key in the bucket.
func (b *Bucket[T]) Keys(ctx context.Context) ([]string, error) {
	keys, err := b.kv.keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("bridge: %s list: %w", b.name, err)
	}
	return keys, nil
}

// Range calls fn for every key and value in the bucket. Values that no
// longer decode are skipped with an error joined into the result.
func (b *Bucket[T]) Range(ctx context.Context, fn func(key string, v T) error) error {
	keys, err := b.kv.keys(ctx)
	if err != nil {
		return fmt.Errorf("bridge: %s list: %w", b.name, err)
	}
	var errs []error
	for _, k := range keys {
		v, _, err := b.Get(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}
