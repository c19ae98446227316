package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BucketLeases holds one key per lease (see [Leases]).
const BucketLeases = "pb_leases"

// LeaseConfig is the "cluster" section of config.yaml: how the instances
// of one role agree on which of them is active.
type LeaseConfig struct {
	// TTL is how long a lease outlives its holder's last renewal: an
	// active instance that dies is replaced within TTL + Renew.
	TTL time.Duration `yaml:"lease_ttl"`
	// Renew is how often the holder renews its lease, and how often a
	// standby tries to take it.
	Renew time.Duration `yaml:"lease_renew"`
}

// DefaultLeaseConfig: a dead active instance is replaced within 8 s
// (lease_ttl + lease_renew), below the 10 s the operator is promised;
// the holder survives two lost renewals in a row.
func DefaultLeaseConfig() LeaseConfig {
	return LeaseConfig{TTL: 6 * time.Second, Renew: 2 * time.Second}
}

// Validate reports every problem, each prefixed with its key.
func (c LeaseConfig) Validate() error {
	var errs []error
	if c.TTL < time.Second || c.TTL > 5*time.Minute {
		errs = append(errs, fmt.Errorf("lease_ttl: %v: must be between 1s and 5m", c.TTL))
	}
	if c.Renew < 100*time.Millisecond || c.Renew*2 > c.TTL {
		errs = append(errs, fmt.Errorf("lease_renew: %v: must be at least 100ms and at most half of lease_ttl (%v)", c.Renew, c.TTL))
	}
	return errors.Join(errs...)
}

// Leases elects one active instance per name among the instances of a
// role (the "xmpp" lease: the one that holds the component stream).
//
// The scheme is the usual one on NATS KV (as in ripienaar's
// nats-kv-leader-elect): the bucket's TTL is the lease TTL, so a key that
// is not rewritten within it expires on the server; a candidate takes a
// free lease with Create (which fails while the key exists); the holder
// renews it with Update on the revision it last wrote, and any other
// revision means it lost. The server's clock alone decides expiry.
//
// Fencing: the holder counts its lease valid only until TTL after it
// *sent* its last successful renewal, measured on its own monotonic
// clock. The server wrote that renewal after it was sent, so the key
// expires (and a successor can Create it) no earlier than the holder's
// own deadline: a holder that is paused, or cut off from NATS, stops
// acting before anyone else can start. A revision that moved under it
// (someone else's Create after expiry) is noticed at the next renewal
// and also ends the term.
type Leases struct {
	kv     jetstream.KeyValue
	cfg    LeaseConfig
	holder string
	log    *slog.Logger

	// stall, in tests, is called before each renewal: it simulates a
	// holder that is paused (it may block).
	stall func()
}

// Leases opens the lease bucket (replicated like the rest of the state)
// for the holder named holder (unique per instance, for logs and for the
// operator reading the bucket).
func (b *Bus) Leases(ctx context.Context, cfg LeaseConfig, replicas int, holder string) (*Leases, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bridge: cluster config: %w", err)
	}
	var kv jetstream.KeyValue
	err := b.retrySetup(ctx, b.srv == nil, func(ctx context.Context) error {
		// Instances starting together all create the bucket at once;
		// a cluster answers the first and lets the others wait out
		// their timeout (5 s). A short one, then binding to the bucket
		// the first made, is quicker.
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if cur, err := b.js.KeyValue(ctx, BucketLeases); err == nil {
			if st, err := cur.Status(ctx); err == nil && st.TTL() == cfg.TTL && replicasOf(st) == replicas {
				kv = cur
				return nil
			}
		}
		var err error
		kv, err = b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:   BucketLeases,
			History:  1,
			Storage:  jetstream.FileStorage,
			Replicas: replicas,
			TTL:      cfg.TTL,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bridge: bucket %s: %w", BucketLeases, err)
	}
	return &Leases{kv: kv, cfg: cfg, holder: holder, log: b.log.With("holder", holder)}, nil
}

// Run holds the lease name whenever it can and runs work while it holds
// it: work's context ends when the lease is lost (or ctx ends), and work
// must then stop acting at once. When work returns, the lease is released
// (a standby takes over without waiting for the TTL) and, unless ctx
// ended, Run campaigns again. It returns nil when ctx ends, or work's
// error if work failed for another reason than losing the lease.
//
// onTerm, if not nil, is called with true when a term starts and false
// when it ends (for logs, metrics and tests).
func (l *Leases) Run(ctx context.Context, name string, work func(context.Context) error, onTerm func(bool)) error {
	log := l.log.With("lease", name)
	for {
		rev, sent, err := l.campaign(ctx, name)
		if err != nil {
			return nil // ctx ended
		}
		log.Info("lease acquired; this instance is active", "revision", rev)
		if onTerm != nil {
			onTerm(true)
		}
		tctx, lose := context.WithCancelCause(ctx)
		kept := make(chan uint64, 1)
		go func() { kept <- l.keep(tctx, lose, name, rev, sent) }()
		err = work(tctx)
		lost := context.Cause(tctx)
		if onTerm != nil {
			onTerm(false)
		}
		lose(errReleased)
		l.release(name, <-kept)
		switch {
		case ctx.Err() != nil:
			log.Info("lease released; stopping")
			return nil
		case errors.Is(lost, ErrLeaseLost):
			log.Warn("lease lost; this instance stands by", "err", lost)
		case err != nil:
			return err
		default:
			// Give the others a chance before campaigning again (the
			// work may have ended because this instance cannot work).
			log.Info("work ended; lease released, standing by")
			t := time.NewTimer(l.cfg.Renew)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
}

// IsUnavailable reports whether err says that NATS could not answer in
// time (no responders, a stream or consumer without a leader, a request
// that timed out): in a cluster, a passing state while a node restarts
// or leaders are elected, not a reason to give up.
func IsUnavailable(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, nats.ErrConnectionReconnecting)
}

// ErrLeaseLost is the cause of a term's context ending because the lease
// expired under its holder or was taken.
var ErrLeaseLost = errors.New("bridge: lease lost")

var errReleased = errors.New("bridge: lease released")

// campaign tries to Create the key every Renew until it succeeds or ctx
// ends; it returns the revision and when the winning request was sent.
func (l *Leases) campaign(ctx context.Context, name string) (uint64, time.Time, error) {
	waiting := false
	for {
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, l.cfg.Renew)
		rev, err := l.kv.Create(rctx, name, []byte(l.holder))
		cancel()
		if err == nil {
			return rev, sent, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil {
			l.log.Debug("lease campaign failed; retrying", "lease", name, "err", err)
		} else if !waiting && ctx.Err() == nil {
			waiting = true
			holder := ""
			if e, gerr := l.kv.Get(ctx, name); gerr == nil {
				holder = string(e.Value())
			}
			l.log.Info("lease held by another instance; standing by", "lease", name, "active", holder)
		}
		wait := l.cfg.Renew / 2
		if time.Until(sent.Add(wait)) > 0 {
			t := time.NewTimer(time.Until(sent.Add(wait)))
			select {
			case <-ctx.Done():
				t.Stop()
				return 0, time.Time{}, ctx.Err()
			case <-t.C:
			}
		} else if ctx.Err() != nil {
			return 0, time.Time{}, ctx.Err()
		}
	}
}

// keep renews the lease every Renew until tctx ends. A timer of its own
// (not this loop, which may be stuck in a renewal) ends the term with
// ErrLeaseLost at the local deadline, TTL after the last successful
// renewal was sent; a revision that moved ends it at once. It returns
// the last revision written, for release.
func (l *Leases) keep(tctx context.Context, lose context.CancelCauseFunc, name string, rev uint64, sent time.Time) uint64 {
	expire := time.AfterFunc(time.Until(sent.Add(l.cfg.TTL)), func() {
		lose(fmt.Errorf("%w: no renewal within %v", ErrLeaseLost, l.cfg.TTL))
	})
	defer expire.Stop()
	tick := time.NewTicker(l.cfg.Renew)
	defer tick.Stop()
	for {
		select {
		case <-tctx.Done():
			return rev
		case <-tick.C:
		}
		if l.stall != nil {
			l.stall()
		}
		s := time.Now()
		// Not under tctx: a renewal cut short by the term's end may still
		// be applied, and release needs the revision it wrote.
		rctx, cancel := context.WithTimeout(context.Background(), l.cfg.Renew)
		next, err := l.kv.Update(rctx, name, []byte(l.holder), rev)
		cancel()
		if err == nil {
			rev = next
		}
		switch {
		case tctx.Err() != nil:
			return rev
		case err == nil:
			expire.Reset(time.Until(s.Add(l.cfg.TTL)))
		case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound):
			lose(fmt.Errorf("%w: revision %d is no longer current", ErrLeaseLost, rev))
			return rev
		default:
			l.log.Warn("lease renewal failed; retrying until the lease expires", "lease", name, "err", err)
		}
	}
}

// release deletes the key if it is still at rev, so that a standby takes
// over at once.
func (l *Leases) release(name string, rev uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.Renew)
	defer cancel()
	err := l.kv.Delete(ctx, name, jetstream.LastRevision(rev))
	if err != nil {
		// A renewal whose answer was lost moved the revision: the key
		// is still ours if it names this holder (holder names are unique).
		if e, gerr := l.kv.Get(ctx, name); gerr == nil && string(e.Value()) == l.holder {
			err = l.kv.Delete(ctx, name, jetstream.LastRevision(e.Revision()))
		}
	}
	if err != nil {
		l.log.Debug("lease not released; it expires by itself", "lease", name, "err", err)
	}
}

// replicasOf is the replica count of a bucket.
func replicasOf(st jetstream.KeyValueStatus) int {
	if js, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		return js.StreamInfo().Config.Replicas
	}
	return 0
}
