package matrixside

import (
	"context"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

const (
	// beforeTimeout bounds the wait for GhostMembership.Before to be
	// shown; past it the command fails and comes again.
	beforeTimeout = 30 * time.Second
	// beforeLinger is how long the ghost keeps the Before presence before
	// it acts. Homeservers (Dendrite and Synapse alike) send a presence to
	// a client only while it shares a room with the ghost, checked when
	// the client's /sync answers: leaving at once would hide the offline
	// from clients whose /sync had not answered yet.
	beforeLinger = time.Second
)

// GhostMembership makes the ghost of c.Ghost act towards the Matrix user
// c.Peer: open a direct chat (invite), join or reject an invite, leave.
// If c.Before is set, the ghost shows that presence first (a revoked
// ghost goes offline before it leaves). What the ghost did comes back as
// MatrixMembership reports from the homeserver's transactions, which is
// how the core learns the room of a new direct chat.
//
// It blocks while it works: a few requests to the homeserver, and with
// Before until the homeserver shows that presence (at most beforeTimeout)
// plus beforeLinger. It returns an error for failures that may pass
// (homeserver away, 5xx, 429), so that the command is delivered again;
// while the homeserver is known to be down or limiting, that error
// (ErrHomeserverDown) comes at once, before any request, behind the same
// gate as ghost presence. Commands that can never work are logged and
// acknowledged (nil). Whom a ghost may invite is the core's decision
// (core.invite_local_only).
// It is idempotent: a second invite finds the chat, a second leave is
// done.
func (s *Side) GhostMembership(ctx context.Context, c bridge.GhostMembership) error {
	if err := s.health.ready(time.Now()); err != nil {
		return err
	}
	err := s.ghostMembership(ctx, c)
	if err == nil {
		return nil
	}
	if retry, _ := retryable(err); retry {
		return err
	}
	s.log.Error("membership command failed for good", "id", c.ID, "ghost", c.Ghost, "peer", c.Peer, "membership", c.Membership, "err", err)
	return nil
}

func (s *Side) ghostMembership(ctx context.Context, c bridge.GhostMembership) error {
	ghost, err := s.ghostOf(c.Ghost)
	if err != nil {
		return fmt.Errorf("%w: ghost of %q: %w", ErrBadCommand, c.Ghost, err)
	}
	if _, err := mapping.NewUserID(string(c.Peer)); err != nil {
		return fmt.Errorf("%w: peer %q: %w", ErrBadCommand, c.Peer, err)
	}
	peer := id.UserID(c.Peer)
	if c.Before != nil {
		if err := s.showBefore(ctx, c.Ghost, *c.Before); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	cli, err := s.ghosts.ensure(ctx, ghost, c.Ghost)
	if err != nil {
		return err
	}
	roomID := id.RoomID(c.RoomID)
	if roomID == "" {
		roomID = s.knownRoom(ctx, c.Peer, c.Ghost, ghost, peer)
	}
	switch c.Membership {
	case bridge.MembershipInvite:
		return s.openDirect(ctx, cli, peer, roomID)
	case bridge.MembershipJoin:
		if roomID == "" {
			return fmt.Errorf("%w: join without a room", ErrBadCommand)
		}
		if _, err := cli.JoinRoomByID(ctx, roomID); err != nil {
			return err
		}
		s.rooms.add(roomID, ghost, peer)
		return nil
	case bridge.MembershipReject, bridge.MembershipLeave:
		if roomID == "" {
			return fmt.Errorf("%w: %s without a room", ErrBadCommand, c.Membership)
		}
		_, err := cli.LeaveRoom(ctx, roomID)
		if st := httpStatus(err); st == 400 || st == 403 || st == 404 {
			// Not (or no longer) in the room: done. Synapse says 403,
			// Dendrite 400 M_UNKNOWN "not joined".
			s.log.Debug("ghost not in the room it leaves", "ghost", ghost, "room", roomID, "err", err)
			err = nil
		}
		if err == nil {
			s.rooms.remove(roomID, ghost, "")
		}
		return err
	}
	return fmt.Errorf("%w: membership %v", ErrBadCommand, c.Membership)
}

// showBefore shows p on the ghost of jid, through the outbox so that it
// is ordered with ShowGhost, waits until the homeserver has it, and, if
// that took a change, lingers for clients to see it.
func (s *Side) showBefore(ctx context.Context, jid mapping.BareJID, p mapping.Presence) error {
	ghost, version, pending := s.showGhost(jid, p, time.Time{}, time.Now())
	if version == 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, beforeTimeout)
	defer cancel()
	err := s.out.waitShown(wctx, ghost, version)
	switch {
	case errors.Is(err, errPresenceRefused):
		s.log.Warn("presence before a membership change refused; acting anyway", "ghost", ghost)
		return nil
	case err != nil:
		// Not shown yet (the homeserver is away): the command comes again.
		return fmt.Errorf("matrixside: presence of %s before the membership change not shown yet: %w", ghost, err)
	}
	if pending && !sleepCtx(ctx, beforeLinger) {
		return ctx.Err()
	}
	return nil
}

// knownRoom returns the room the ghost shares with peer: the one of their
// link (read from the core's links bucket), else one the side saw them in.
func (s *Side) knownRoom(ctx context.Context, user mapping.UserID, jid mapping.BareJID, ghost, peer id.UserID) id.RoomID {
	if l, _, err := s.store.Links.Get(ctx, bridge.PairKey(string(user), string(jid))); err == nil && l.RoomID != "" {
		return id.RoomID(l.RoomID)
	}
	return s.rooms.shared(ghost, peer)
}

// openDirect makes sure the ghost and peer share a direct chat: roomID if
// the ghost is still in it (inviting peer again if peer left), else a new
// one.
func (s *Side) openDirect(ctx context.Context, cli *mautrix.Client, peer id.UserID, roomID id.RoomID) error {
	if roomID != "" {
		var member event.MemberEventContent
		err := cli.StateEvent(ctx, roomID, event.StateMember, string(peer), &member)
		if retry, _ := retryable(err); retry {
			return err
		}
		switch st := httpStatus(err); {
		case err == nil && (member.Membership == event.MembershipJoin || member.Membership == event.MembershipInvite):
			s.rooms.add(roomID, cli.UserID, peer)
			return nil // already there: nothing to do
		case err == nil || st == 404: // peer left, or never had a member event
			_, err = cli.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: peer})
			if err == nil {
				s.rooms.add(roomID, cli.UserID, peer)
				return nil
			}
			if retry, _ := retryable(err); retry {
				return err
			}
		}
		// The ghost is not in the room any more: open a new one.
	}
	// The bot is invited too: Dendrite pushes no presence to appservices,
	// and a room shared with the bot makes the peer's presence reach the
	// bot's /sync at once instead of at the next poll.
	bot := s.cfg.BotMXID()
	resp, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "trusted_private_chat", IsDirect: true, Invite: []id.UserID{peer, bot},
	})
	if err != nil {
		return err
	}
	if _, err := s.bot.JoinRoomByID(ctx, resp.RoomID); err != nil {
		s.log.Warn("bot could not join the direct chat; presence falls back to polling", "room", resp.RoomID, "err", err)
	}
	s.rooms.add(resp.RoomID, cli.UserID, peer)
	s.log.Info("direct chat opened", "ghost", cli.UserID, "peer", peer, "room", resp.RoomID)
	return nil
}
