// Package transport carries the ports of package bridge over NATS: one
// adapter of the core's interfaces, not the language the sides speak.
//
// A [Publisher] implements all four ports ([bridge.XMPPObserver],
// [bridge.MatrixObserver], [bridge.XMPPActor], [bridge.MatrixActor]) by
// publishing each call as one envelope ([bridge.Event], schema in package
// bridge) on its subject. [ServeCore], [ServeXMPP] and [ServeMatrix] read
// those subjects and call the real implementations: the core, the XMPP
// component, the Matrix side. So
//
//	xmppside ─XMPPObserver→ Publisher ─NATS→ ServeCore ─→ core
//	core ─MatrixActor→ Publisher ─NATS→ ServeMatrix ─→ matrixside
//
// and the same in the other direction. Commands to the sides: presence
// travels on core NATS (it is state: the next value repairs a lost one);
// subscriptions and memberships through the JetStream control stream,
// read with durable consumers, so a command survives a restart of its
// reader; a call that returns an error is redelivered with exponential
// back-off, up to nats.max_deliver times, then moved to
// bridge.DeadLetterStream.
//
// # The core shared out by user
//
// Every report to the core (pb.v1.in.…, presence included) is kept by the
// work-queue stream bridge.InStream, whose subject transform puts the
// user's partition in the stored subject with NATS's own mapping function
// {{partition(n,3)}} over the user token (core.partitions = n, 16 by
// default). ServeCore runs bridge.Bus.ServePartitions: each core
// instance holds about n/instances partitions as leases in the KV bucket
// bridge.BucketPartitions (renewed every lease_ttl/6 with compare-and-set)
// and reads each one it holds through that partition's durable pull
// consumer. So every user's reports are handled by exactly one instance at
// a time, in stream order; an instance over its share (another joined)
// hands a partition over in good order (it stops, sends and records what
// is pending, acknowledges, then frees the lease); an instance that dies
// loses its leases when they expire (6 s), and the taker deletes and
// recreates the partition's consumer: the dead owner can no longer
// acknowledge anything, and the new consumer delivers every report not
// acknowledged, in order. An owner that could not renew for lease_ttl
// minus a margin stops handling before its lease can expire for others.
// Presence is acknowledged only once the core recorded it in KV
// (bridge.PartitionOwner.Sync), so a core dying mid-event loses nothing:
// the next owner rebuilds the users' state from KV and is delivered the
// rest again; reports older than the recorded sequence are dropped.
//
// Why this and not the other NATS way, partitioned consumer groups
// (github.com/synadia-io/orbit.go/pcgroups v0.2.2 resolves, and the
// servers, v2.15.2, have the 2.11 pinned-client consumers it needs): its
// membership is administrative (a list of member names in a KV config),
// not instances joining and leaving by themselves; it keeps strict order
// across a failover only with max_ack_pending 1, far below the core's
// throughput; and its failover time is tied to the consumers' ack wait.
// Subject-mapping partitions with one consumer per partition are plain
// NATS (one stream option), and the leases add what pcgroups' pinning
// does not give: the fence and the rebuild on taking a partition. On
// nats-server before 2.10 (no subject transforms) the stream has one
// partition, and one core instance should run.
package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// The durable consumers. Their names are kept across versions: a consumer
// resumes where the previous process stopped.
// The core's reports are read by one consumer per partition
// (bridge.PartitionConsumer).
const (
	ConsumerXMPP   = "xmppside-subscriptions"
	ConsumerMatrix = "matrixside-membership"
)

// Publisher implements the four ports by publishing on the bus.
type Publisher struct {
	bus *bridge.Bus
}

var (
	_ bridge.XMPPObserver   = (*Publisher)(nil)
	_ bridge.MatrixObserver = (*Publisher)(nil)
	_ bridge.XMPPActor      = (*Publisher)(nil)
	_ bridge.MatrixActor    = (*Publisher)(nil)
)

// NewPublisher returns a publisher on bus.
func NewPublisher(bus *bridge.Bus) *Publisher { return &Publisher{bus: bus} }

func stamped(s bridge.Stamp, ev *bridge.Event) *bridge.Event {
	ev.ID, ev.Seq, ev.ObservedAt = s.ID, s.Seq, s.ObservedAt
	return ev
}

func presence(p mapping.Presence) *mapping.Presence { return &p }

// XMPPPresence publishes an XMPP user's presence for the core.
func (p *Publisher) XMPPPresence(ctx context.Context, r bridge.XMPPPresence) error {
	return p.bus.Publish(ctx, bridge.In, stamped(r.Stamp, &bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkXMPP, User: string(r.User), Presence: presence(r.Presence)}))
}

// XMPPSubscription publishes a subscription stanza for the core (durable).
func (p *Publisher) XMPPSubscription(ctx context.Context, r bridge.XMPPSubscription) error {
	return p.bus.Publish(ctx, bridge.In, stamped(r.Stamp, &bridge.Event{Kind: bridge.KindSubscription, Origin: mapping.NetworkXMPP, User: string(r.Contact), Peer: string(r.Puppet),
		Subscription: &bridge.SubscriptionPayload{Type: r.Type, Status: r.Status}}))
}

// XMPPOptOut publishes an XMPP user's opt-out for the core (durable).
func (p *Publisher) XMPPOptOut(ctx context.Context, r bridge.OptOut[mapping.BareJID]) error {
	return p.bus.Publish(ctx, bridge.In, stamped(r.Stamp, &bridge.Event{Kind: bridge.KindOptOut, Origin: mapping.NetworkXMPP, User: string(r.User), OptOut: &bridge.OptOutPayload{Enabled: r.Enabled}}))
}

// MatrixPresence publishes a Matrix user's presence for the core.
func (p *Publisher) MatrixPresence(ctx context.Context, r bridge.MatrixPresence) error {
	return p.bus.Publish(ctx, bridge.In, stamped(r.Stamp, &bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkMatrix, User: string(r.User), Presence: presence(r.Presence)}))
}

// MatrixMembership publishes a membership change for the core (durable).
func (p *Publisher) MatrixMembership(ctx context.Context, r bridge.MatrixMembership) error {
	member, sender := string(r.User), string(r.Ghost)
	if r.GhostChanged {
		member, sender = sender, member
	}
	if r.BySelf {
		sender = member
	}
	return p.bus.Publish(ctx, bridge.In, stamped(r.Stamp, &bridge.Event{Kind: bridge.KindMembership, Origin: mapping.NetworkMatrix, User: string(r.User), Peer: string(r.Ghost),
		Membership: &bridge.MembershipPayload{Membership: r.Membership.String(), RoomID: r.RoomID, Member: member, Sender: sender, IsDirect: r.IsDirect}}))
}

// MatrixOptOut publishes a Matrix user's opt-out for the core (durable).
func (p *Publisher) MatrixOptOut(ctx context.Context, r bridge.OptOut[mapping.UserID]) error {
	return p.bus.Publish(ctx, bridge.In, stamped(r.Stamp, &bridge.Event{Kind: bridge.KindOptOut, Origin: mapping.NetworkMatrix, User: string(r.User), OptOut: &bridge.OptOutPayload{Enabled: r.Enabled}}))
}

// ShowPuppet publishes a puppet presence command for the XMPP side.
func (p *Publisher) ShowPuppet(ctx context.Context, c bridge.PuppetPresence) error {
	return p.bus.Publish(ctx, bridge.Out, stamped(c.Stamp, &bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkMatrix, User: string(c.User), Presence: presence(c.Presence)}))
}

// SendSubscription publishes a subscription command for the XMPP side
// (durable).
func (p *Publisher) SendSubscription(ctx context.Context, c bridge.PuppetSubscription) error {
	return p.bus.Publish(ctx, bridge.Out, stamped(c.Stamp, &bridge.Event{Kind: bridge.KindSubscription, Origin: mapping.NetworkMatrix, User: string(c.Puppet), Peer: string(c.Contact),
		Subscription: &bridge.SubscriptionPayload{Type: c.Type}}))
}

// ShowGhost publishes a ghost presence command for the Matrix side.
func (p *Publisher) ShowGhost(ctx context.Context, c bridge.GhostPresence) error {
	return p.bus.Publish(ctx, bridge.Out, stamped(c.Stamp, &bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkXMPP, User: string(c.User), Presence: presence(c.Presence)}))
}

// GhostMembership publishes a membership command for the Matrix side
// (durable).
func (p *Publisher) GhostMembership(ctx context.Context, c bridge.GhostMembership) error {
	return p.bus.Publish(ctx, bridge.Out, stamped(c.Stamp, &bridge.Event{Kind: bridge.KindMembership, Origin: mapping.NetworkXMPP, User: string(c.Ghost), Peer: string(c.Peer),
		Membership: &bridge.MembershipPayload{Membership: c.Membership.String(), RoomID: c.RoomID, IsDirect: true, Before: c.Before}}))
}

func stampOf(ev *bridge.Event) bridge.Stamp {
	return bridge.Stamp{ID: ev.ID, Seq: ev.Seq, ObservedAt: ev.ObservedAt}
}

// ServeCore returns the server that delivers what the sides report to the
// core's two observers. Reports are read from bridge.InStream, shared out
// by user among the core instances (see the package doc); if x implements
// [bridge.PartitionOwner] it is told which partitions it holds, and a
// presence is acknowledged only once the owner recorded it.
func ServeCore(bus *bridge.Bus, x bridge.XMPPObserver, m bridge.MatrixObserver, log *slog.Logger, opts ...bridge.PartitionOptions) *Server {
	s := newServer(bus, log)
	var o bridge.PartitionOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	h := bridge.PartitionHandler{Handle: coreHandler(x, m, s.log)}
	if owner, ok := x.(bridge.PartitionOwner); ok {
		h.Acquire, h.Release, h.Sync = owner.AcquirePartition, owner.ReleasePartition, owner.Sync
	}
	s.parts = append(s.parts, func(ctx context.Context, ready func()) error {
		return bus.ServePartitions(ctx, o, h, ready)
	})
	return s
}

// coreHandler delivers one report to the observer of its network. The
// addresses in reports are validated here, where they enter the core; the
// core trusts the typed values.
func coreHandler(x bridge.XMPPObserver, m bridge.MatrixObserver, log *slog.Logger) bridge.DurableHandler {
	handle := func(ctx context.Context, ev *bridge.Event) error {
		switch ev.Kind {
		case bridge.KindPresence:
			if ev.Presence == nil {
				return permanent(errors.New("transport: presence without payload"))
			}
			if ev.Origin == mapping.NetworkXMPP {
				jid, err := mapping.NewBareJID(ev.User)
				if err != nil {
					return err
				}
				return x.XMPPPresence(ctx, bridge.XMPPPresence{Stamp: stampOf(ev), User: jid, Presence: *ev.Presence})
			}
			mxid, err := mapping.NewUserID(ev.User)
			if err != nil {
				return err
			}
			return m.MatrixPresence(ctx, bridge.MatrixPresence{Stamp: stampOf(ev), User: mxid, Presence: *ev.Presence})
		case bridge.KindSubscription:
			if ev.Origin != mapping.NetworkXMPP || ev.Subscription == nil {
				return permanent(errors.New("transport: malformed subscription report"))
			}
			jid, mxid, err := pairOf(ev.User, ev.Peer)
			if err != nil {
				return err
			}
			return x.XMPPSubscription(ctx, bridge.XMPPSubscription{Stamp: stampOf(ev), Contact: jid, Puppet: mxid, Type: ev.Subscription.Type, Status: ev.Subscription.Status})
		case bridge.KindMembership:
			if ev.Origin != mapping.NetworkMatrix || ev.Membership == nil {
				return permanent(errors.New("transport: malformed membership report"))
			}
			jid, mxid, err := pairOf(ev.Peer, ev.User)
			if err != nil {
				return err
			}
			mem, err := bridge.ParseMembership(ev.Membership.Membership)
			if err != nil {
				return permanent(err)
			}
			return m.MatrixMembership(ctx, bridge.MatrixMembership{
				Stamp: stampOf(ev), User: mxid, Ghost: jid,
				GhostChanged: ev.Membership.Member == ev.Peer, Membership: mem, RoomID: ev.Membership.RoomID,
				BySelf: ev.Membership.Sender == ev.Membership.Member, IsDirect: ev.Membership.IsDirect,
			})
		case bridge.KindOptOut:
			if ev.OptOut == nil {
				return permanent(errors.New("transport: opt-out without payload"))
			}
			if ev.Origin == mapping.NetworkXMPP {
				jid, err := mapping.NewBareJID(ev.User)
				if err != nil {
					return permanent(err)
				}
				return x.XMPPOptOut(ctx, bridge.OptOut[mapping.BareJID]{Stamp: stampOf(ev), User: jid, Enabled: ev.OptOut.Enabled})
			}
			mxid, err := mapping.NewUserID(ev.User)
			if err != nil {
				return permanent(err)
			}
			return m.MatrixOptOut(ctx, bridge.OptOut[mapping.UserID]{Stamp: stampOf(ev), User: mxid, Enabled: ev.OptOut.Enabled})
		}
		return permanent(fmt.Errorf("transport: report of unknown kind %q", ev.Kind))
	}
	return func(ctx context.Context, ev *bridge.Event) error {
		err := handle(ctx, ev)
		var perm permanentError
		if errors.As(err, &perm) {
			log.Error("dropping a report that cannot succeed", "kind", ev.Kind, "id", ev.ID, "err", err)
			return bridge.ErrDrop
		}
		return err
	}
}

// pairOf validates the addresses of an XMPP user and a Matrix user; a
// command about an invalid address can never succeed.
func pairOf(jid, mxid string) (mapping.BareJID, mapping.UserID, error) {
	j, err := mapping.NewBareJID(jid)
	if err != nil {
		return "", "", permanent(err)
	}
	m, err := mapping.NewUserID(mxid)
	if err != nil {
		return "", "", permanent(err)
	}
	return j, m, nil
}

// ServeXMPP returns the server that delivers the core's commands to the
// XMPP side.
func ServeXMPP(bus *bridge.Bus, a bridge.XMPPActor, log *slog.Logger) *Server {
	s := newServer(bus, log)
	s.presence(bridge.Out, mapping.NetworkXMPP, func(ctx context.Context, ev *bridge.Event) error {
		return a.ShowPuppet(ctx, bridge.PuppetPresence{Stamp: stampOf(ev), User: mapping.UserID(ev.User), Presence: *ev.Presence})
	})
	s.durable(ConsumerXMPP, bridge.Out, mapping.NetworkXMPP, bridge.KindSubscription, func(ctx context.Context, ev *bridge.Event) error {
		return a.SendSubscription(ctx, bridge.PuppetSubscription{Stamp: stampOf(ev), Puppet: mapping.UserID(ev.User), Contact: mapping.BareJID(ev.Peer), Type: ev.Subscription.Type})
	})
	return s
}

// ServeMatrix returns the server that delivers the core's commands to the
// Matrix side.
func ServeMatrix(bus *bridge.Bus, a bridge.MatrixActor, log *slog.Logger) *Server {
	s := newServer(bus, log)
	s.presence(bridge.Out, mapping.NetworkMatrix, func(ctx context.Context, ev *bridge.Event) error {
		return a.ShowGhost(ctx, bridge.GhostPresence{Stamp: stampOf(ev), User: mapping.BareJID(ev.User), Presence: *ev.Presence})
	})
	s.durable(ConsumerMatrix, bridge.Out, mapping.NetworkMatrix, bridge.KindMembership, func(ctx context.Context, ev *bridge.Event) error {
		mem, err := bridge.ParseMembership(ev.Membership.Membership)
		if err != nil {
			return permanent(err)
		}
		return a.GhostMembership(ctx, bridge.GhostMembership{Stamp: stampOf(ev), Ghost: mapping.BareJID(ev.User), Peer: mapping.UserID(ev.Peer),
			Membership: mem, RoomID: ev.Membership.RoomID, Before: ev.Membership.Before})
	})
	return s
}
