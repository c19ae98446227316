package matrixfed

import (
	"context"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// beforeTimeout bounds the wait for GhostMembership.Before to reach the
// servers sharing the room.
const beforeTimeout = 10 * time.Second

// GhostMembership makes the ghost of c.Ghost join (make_join, sign,
// send_join), reject or leave (make_leave, sign, send_leave) a room it
// was invited to. It blocks for a few requests to the inviting server.
// Failures that may pass (network, 5xx, 429) return an error, so that
// the command comes again; commands that can never work are logged and
// acknowledged. Invite is one of those: the gateway hosts no rooms, so a
// ghost cannot open a chat (a Matrix user must invite it).
func (g *Gateway) GhostMembership(ctx context.Context, c bridge.GhostMembership) error {
	err := g.ghostMembership(ctx, c)
	if err == nil || retryable(err) {
		return err
	}
	g.log.Error("membership command failed for good", "id", c.ID, "ghost", c.Ghost, "peer", c.Peer, "membership", c.Membership, "err", err)
	return nil
}

func (g *Gateway) ghostMembership(ctx context.Context, c bridge.GhostMembership) error {
	gm, err := g.ns.GhostMXID(c.Ghost)
	if err != nil {
		return fmt.Errorf("%w: ghost of %q: %w", ErrBadCommand, c.Ghost, err)
	}
	ghost := id.UserID(gm)
	if c.Before != nil {
		g.showGhost(c.Ghost, *c.Before, time.Time{})
		wctx, cancel := context.WithTimeout(ctx, beforeTimeout)
		g.out.waitSent(wctx, ghost)
		cancel()
	}
	rid := id.RoomID(c.RoomID)
	if rid == "" {
		rid = g.rooms.shared(ghost, id.UserID(c.Peer))
	}
	switch c.Membership {
	case bridge.MembershipInvite:
		return fmt.Errorf("%w: the federation gateway hosts no rooms; a Matrix user must invite the ghost", ErrBadCommand)
	case bridge.MembershipJoin:
		return g.join(ctx, rid, ghost, c.Ghost)
	case bridge.MembershipLeave, bridge.MembershipReject:
		return g.leave(ctx, rid, ghost, c.Ghost)
	}
	return fmt.Errorf("%w: membership %v", ErrBadCommand, c.Membership)
}

// join joins the ghost to a room it was invited to, takes the room's
// members from the state send_join returns, and reports the ghost's join
// to the core for each of them.
func (g *Gateway) join(ctx context.Context, rid id.RoomID, ghost id.UserID, jid mapping.BareJID) (err error) {
	rm, ok := g.rooms.get(rid)
	if !ok || rm.Ghosts[ghost] == "" {
		return fmt.Errorf("%w: %q", ErrNotInRoom, rid)
	}
	if rm.Ghosts[ghost] != "join" {
		if _, _, err := g.rooms.update(ctx, rid, false, func(r *room) bool {
			r.Ghosts[ghost] = "joining"
			return true
		}); err != nil {
			return err
		}
		defer func() {
			if err != nil { // back to invited; the command comes again if it may pass
				_, _, _ = g.rooms.update(context.WithoutCancel(ctx), rid, false, func(r *room) bool {
					if r.Ghosts[ghost] != "joining" {
						return false
					}
					r.Ghosts[ghost] = "invite"
					return true
				})
			}
		}()
		mj, err := g.client.MakeJoin(ctx, &federation.ReqMakeJoin{RoomID: rid, UserID: ghost, Via: rm.Via, SupportedVersions: supportedVersions})
		if err != nil {
			return fmt.Errorf("matrixfed: make_join %s via %s: %w", rid, rm.Via, err)
		}
		version := mj.RoomVersion
		if version == "" {
			version = rm.Version
		}
		if !supported(version) {
			return fmt.Errorf("%w: room version %q", ErrBadCommand, version)
		}
		ev, evID, err := g.signEvent(mj.Event, version)
		if err != nil {
			return err
		}
		sj, err := g.client.SendJoin(ctx, &federation.ReqSendJoin{RoomID: rid, EventID: evID, Event: ev, Via: rm.Via})
		if err != nil {
			return fmt.Errorf("matrixfed: send_join %s via %s: %w", rid, rm.Via, err)
		}
		members := map[id.UserID]string{}
		for _, raw := range sj.State {
			p, err := parsePDU(raw)
			if err != nil {
				continue
			}
			if mc, ok := memberOf(p); ok && (mc.Membership == "join" || mc.Membership == "invite") && len(members) < maxRoomMembers {
				if _, ours := g.ghostJID(id.UserID(*p.StateKey)); !ours {
					members[id.UserID(*p.StateKey)] = mc.Membership
				}
			}
		}
		rm, _, err = g.rooms.update(ctx, rid, false, func(r *room) bool {
			r.Version = version
			r.Ghosts[ghost] = "join"
			r.Members = members
			return true
		})
		if err != nil {
			return err
		}
		g.log.Info("ghost joined", "ghost", ghost, "room", rid, "members", len(members))
	}
	for u := range rm.Members {
		if err := g.obs.MatrixMembership(ctx, bridge.MatrixMembership{
			User: mapping.UserID(u), Ghost: jid, GhostChanged: true, Membership: bridge.MembershipJoin,
			RoomID: string(rid), BySelf: true, IsDirect: rm.IsDirect,
		}); err != nil {
			return err
		}
	}
	g.out.pushAfterJoin(ghost, g.rooms.destinations(ghost))
	return nil
}

// leave makes the ghost leave (or reject) the room and reports it.
func (g *Gateway) leave(ctx context.Context, rid id.RoomID, ghost id.UserID, jid mapping.BareJID) error {
	rm, ok := g.rooms.get(rid)
	if !ok || rm.Ghosts[ghost] == "" {
		return nil // not (or no longer) in the room: done
	}
	membership := bridge.MembershipLeave
	if rm.Ghosts[ghost] != "join" {
		membership = bridge.MembershipReject
	}
	err := g.sendLeave(ctx, rm, ghost)
	if retryable(err) && membership == bridge.MembershipLeave {
		return err
	}
	// An invite is declined even if the inviting server does not answer:
	// a server that never does must not keep the room in the bucket.
	if err != nil {
		// The room is gone or will not have us: the ghost is out anyway.
		g.logs.warn(g.log, "leave:"+rm.Via, "leave refused by the room's server; forgetting the room", "ghost", ghost, "room", rid, "err", err)
	}
	if _, _, err := g.rooms.update(ctx, rid, false, func(r *room) bool {
		delete(r.Ghosts, ghost)
		return true
	}); err != nil {
		return err
	}
	for u := range rm.Members {
		if err := g.obs.MatrixMembership(ctx, bridge.MatrixMembership{
			User: mapping.UserID(u), Ghost: jid, GhostChanged: true, Membership: membership,
			RoomID: string(rid), BySelf: true, IsDirect: rm.IsDirect,
		}); err != nil {
			return err
		}
	}
	g.log.Info("ghost left", "ghost", ghost, "room", rid)
	return nil
}

func (g *Gateway) sendLeave(ctx context.Context, rm room, ghost id.UserID) error {
	ml, err := g.client.MakeLeave(ctx, &federation.ReqMakeLeave{RoomID: rm.ID, UserID: ghost, Via: rm.Via})
	if err != nil {
		return fmt.Errorf("matrixfed: make_leave %s via %s: %w", rm.ID, rm.Via, err)
	}
	version := ml.RoomVersion
	if version == "" {
		version = rm.Version
	}
	ev, evID, err := g.signEvent(ml.Event, version)
	if err != nil {
		return err
	}
	if err := g.client.SendLeave(ctx, &federation.ReqSendLeave{RoomID: rm.ID, EventID: evID, Event: ev, Via: rm.Via}); err != nil {
		return fmt.Errorf("matrixfed: send_leave %s via %s: %w", rm.ID, rm.Via, err)
	}
	return nil
}

// retryable tells failures that may pass (no answer, 5xx, 429, a
// bucket write) from those that will not (4xx, a bad command).
func retryable(err error) bool {
	if err == nil || errors.Is(err, ErrBadCommand) || errors.Is(err, ErrNotInRoom) {
		return false
	}
	var he mautrix.HTTPError
	if errors.As(err, &he) && he.Response != nil {
		st := he.Response.StatusCode
		return st >= 500 || st == 429
	}
	return true
}
