package xmppside

import (
	"context"
	"errors"
	"sync"
	"time"

	"mellium.im/xmpp"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// outbox holds the puppets whose presence changed and is not fanned out
// yet: latest-only, since the sender reads each puppet's current presence
// when it gets to it.
type outbox struct {
	mu    sync.Mutex
	dirty map[mapping.UserID]struct{}
	wake  chan struct{} // one pending wake-up is enough

	delivered func(observedAt time.Time) // see OnDelivered; may be nil
}

func newOutbox() *outbox {
	return &outbox{dirty: make(map[mapping.UserID]struct{}), wake: make(chan struct{}, 1)}
}

// mark queues a puppet and wakes the sender.
func (o *outbox) mark(id mapping.UserID) {
	o.mu.Lock()
	o.dirty[id] = struct{}{}
	o.mu.Unlock()
	o.kick()
}

// kick wakes the sender without queueing anything (a new session).
func (o *outbox) kick() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// take returns the queued puppets and empties the queue.
func (o *outbox) take() []mapping.UserID {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]mapping.UserID, 0, len(o.dirty))
	for id := range o.dirty {
		out = append(out, id)
	}
	clear(o.dirty)
	return out
}

// ShowPuppet makes the puppet of c.User show c.Presence to its From/Both
// contacts. It never blocks: it records the presence (for probes, reconnects
// and approvals) and queues the fan-out, which the sender writes when the
// component has a stream; while it has none, the next connect announces it.
// A command older than the last one (by Seq, when both are stamped) or one
// that repeats it changes nothing, so redelivery is harmless. Unknown and
// unset presences are not shown, and the presence of a puppet without
// contacts is not kept (nobody would see it; a later approval reads the
// core's record). It returns nil: a command for a Matrix user who cannot
// have a puppet is logged and dropped.
func (c *Component) ShowPuppet(_ context.Context, cmd bridge.PuppetPresence) error {
	if _, err := c.ns.PuppetJID(cmd.User); err != nil {
		c.log.Warn("ignoring presence for a Matrix user without puppet", "mxid", cmd.User, "err", err)
		return nil
	}
	if st := cmd.Presence.State; st == mapping.StateUnknown || st == mapping.StateUnset {
		c.log.Debug("not showing unknown presence", "mxid", cmd.User)
		return nil
	}
	if !c.subs.hasPuppet(cmd.User) {
		// Nobody to show it to: not kept (probes and approvals read the
		// core's record), so that Matrix users without contacts on XMPP
		// cost nothing here.
		c.log.Debug("not keeping the presence of a puppet without contacts", "mxid", cmd.User)
		return nil
	}
	at := cmd.ObservedAt
	if at.IsZero() {
		at = c.now()
	}
	if !c.puppets.set(cmd.User, shown{presence: cmd.Presence, seq: cmd.Seq, at: at.UTC(), observed: cmd.ObservedAt}) {
		c.log.Debug("puppet presence unchanged or stale", "mxid", cmd.User, "seq", cmd.Seq)
		return nil
	}
	c.out.mark(cmd.User)
	return nil
}

var _ bridge.DeliveryReporter = (*Component)(nil)

// OnDelivered makes delivered see every puppet presence change written to
// the stream (its stanzas to all the puppet's From/Both contacts), with
// the ObservedAt of the command that asked for it
// ([bridge.DeliveryReporter]): once per change, the latest when several
// came before the sender got to the puppet, whether the outbox or the
// announce after a connect wrote it. Commands without an ObservedAt, and
// presences of puppets with no contact to write to, report nothing. Call
// it before Run; delivered must not block.
func (c *Component) OnDelivered(delivered func(observedAt time.Time)) {
	c.out.delivered = delivered
}

// reportDelivered reports cur, written for id to n contacts, if it is a
// change not reported yet. Only the sender calls it.
func (c *Component) reportDelivered(id mapping.UserID, cur shown, n int) {
	if c.puppets.delivered(id, cur) && n > 0 && c.out.delivered != nil {
		c.out.delivered(cur.observed)
	}
}

// sendLoop is the only goroutine that fans puppet presence out, so that a
// contact never sees an older presence after a newer one: after every
// connect it announces every puppet and probes their contacts, then it
// writes the outbox whenever woken. It returns when ctx ends.
func (c *Component) sendLoop(ctx context.Context) {
	var announced uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.out.wake:
		}
		sess, gen, release := c.acquireSession()
		if sess == nil {
			continue // the next connect announces everything
		}
		if gen != announced {
			c.out.take() // the announce reads every puppet's current presence
			c.announce(ctx, sess)
			announced = gen
		}
		c.flushOutbox(ctx, sess)
		release()
	}
}

// flushOutbox fans out the current presence of every queued puppet.
func (c *Component) flushOutbox(ctx context.Context, sess *xmpp.Session) {
	for _, id := range c.out.take() {
		cur, ok := c.puppets.get(id)
		if !ok {
			continue
		}
		puppet, err := c.ns.PuppetJID(id)
		if err != nil {
			continue // ShowPuppet checked it
		}
		p := c.outPresence(puppet, cur.presence)
		to := c.subs.from(nil, id)
		if err := c.writeFanOut(ctx, sess, &p, to); err != nil {
			if !errors.Is(err, context.Canceled) {
				c.log.Warn("sending puppet presence failed; the next connect announces it", "puppet", puppet, "err", err)
			}
			return
		}
		c.reportDelivered(id, cur, len(to))
	}
}
