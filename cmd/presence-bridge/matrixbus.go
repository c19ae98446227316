package main

import (
	"context"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// matrixBus carries the Matrix side's ports over the bus with the
// existing events and subjects, until the transport package (bridge/
// transport) replaces it: the side's reports become "in" events, the
// core's "out" events become calls of the side's Actor methods.
type matrixBus struct{ bus *bridge.Bus }

var _ bridge.MatrixObserver = matrixBus{}

func (m matrixBus) MatrixPresence(ctx context.Context, r bridge.MatrixPresence) error {
	p := r.Presence
	return m.bus.Publish(ctx, bridge.In, &bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkMatrix, User: string(r.User), Presence: &p})
}

func (m matrixBus) MatrixMembership(ctx context.Context, r bridge.MatrixMembership) error {
	member, other := string(r.User), string(r.Ghost)
	if r.GhostChanged {
		member, other = other, member
	}
	sender := other
	if r.BySelf {
		sender = member
	}
	return m.bus.Publish(ctx, bridge.In, &bridge.Event{
		ID: r.ID, Kind: bridge.KindMembership, Origin: mapping.NetworkMatrix, User: string(r.User), Peer: string(r.Ghost),
		Membership: &bridge.MembershipPayload{Membership: r.Membership.String(), RoomID: r.RoomID, Member: member, Sender: sender, IsDirect: r.IsDirect},
	})
}

func (m matrixBus) MatrixOptOut(ctx context.Context, r bridge.OptOut[mapping.UserID]) error {
	return m.bus.Publish(ctx, bridge.In, &bridge.Event{Kind: bridge.KindOptOut, Origin: mapping.NetworkMatrix, User: string(r.User), OptOut: &bridge.OptOutPayload{Enabled: r.Enabled}})
}

// serve delivers the core's commands for the Matrix side to a until ctx
// ends.
func (m matrixBus) serve(ctx context.Context, a bridge.MatrixActor) error {
	sub, err := m.bus.Subscribe(ctx, bridge.SubjectFilter(bridge.Out, mapping.NetworkMatrix, bridge.KindPresence), func(ctx context.Context, ev *bridge.Event) {
		if ev.Presence != nil && ev.Origin == mapping.NetworkXMPP {
			_ = a.ShowGhost(ctx, bridge.GhostPresence{User: mapping.BareJID(ev.User), Presence: *ev.Presence})
		}
	})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	return m.bus.Consume(ctx, "matrixside-membership", bridge.SubjectFilter(bridge.Out, mapping.NetworkMatrix, bridge.KindMembership), func(ctx context.Context, ev *bridge.Event) error {
		if ev.Membership == nil || ev.Origin != mapping.NetworkXMPP {
			return nil
		}
		ms, err := bridge.ParseMembership(ev.Membership.Membership)
		if err != nil {
			return nil // never valid: acknowledged
		}
		return a.GhostMembership(ctx, bridge.GhostMembership{
			Stamp: bridge.Stamp{ID: ev.ID}, Ghost: mapping.BareJID(ev.User), Peer: mapping.UserID(ev.Peer), Membership: ms, RoomID: ev.Membership.RoomID,
		})
	})
}
