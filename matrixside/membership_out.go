package matrixside

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// onMembershipOut carries out a membership command of the core: the ghost
// of ev.User acts towards the Matrix user ev.Peer. Errors that may pass
// (homeserver away, 5xx, 429) are returned so the bus redelivers the
// command; commands that can never work are logged and acknowledged.
func (s *Side) onMembershipOut(ctx context.Context, ev *bridge.Event) error {
	err := s.membershipOut(ctx, ev)
	if err == nil {
		return nil
	}
	if retry, _ := retryable(err); retry && !errors.Is(err, ErrBadCommand) {
		return err
	}
	s.log.Error("membership command failed for good", "id", ev.ID, "user", ev.User, "peer", ev.Peer, "err", err)
	return nil
}

func (s *Side) membershipOut(ctx context.Context, ev *bridge.Event) error {
	if ev.Membership == nil || ev.Origin != mapping.NetworkXMPP {
		return fmt.Errorf("%w: not a membership command from the xmpp side", ErrBadCommand)
	}
	jid, peer, m := ev.User, ev.Peer, ev.Membership
	ghostTyped, err := s.ns.GhostMXID(mapping.BareJID(jid))
	ghost := string(ghostTyped)
	if err != nil {
		return fmt.Errorf("%w: user %q: %w", ErrBadCommand, jid, err)
	}
	if _, _, err := mapping.ParseMXID(peer); err != nil {
		return fmt.Errorf("%w: peer %q: %w", ErrBadCommand, peer, err)
	}
	local := ghost[1 : len(ghost)-len(s.ns.HomeserverDomain)-1]
	if err := s.ghosts.ensure(ctx, ghost, local, jid); err != nil {
		return err
	}
	roomID := m.RoomID
	if roomID == "" {
		roomID = s.linkedRoom(ctx, peer, jid)
	}
	switch m.Membership {
	case "invite":
		return s.openDirect(ctx, ghost, jid, peer, roomID)
	case "join":
		if roomID == "" {
			return fmt.Errorf("%w: join without room", ErrBadCommand)
		}
		if err := s.c.join(ctx, ghost, roomID); err != nil {
			return err
		}
		s.rooms.add(roomID, ghost, peer)
		return s.rememberRoom(ctx, peer, jid, roomID)
	case "reject", "leave":
		if roomID == "" {
			return fmt.Errorf("%w: %s without room", ErrBadCommand, m.Membership)
		}
		err := s.c.leave(ctx, ghost, roomID)
		if st := httpStatus(err); st == 403 || st == 404 {
			err = nil // not (or no longer) in the room: done
		}
		if err == nil {
			s.rooms.remove(roomID, ghost, "")
		}
		return err
	}
	return fmt.Errorf("%w: membership %q", ErrBadCommand, m.Membership)
}

// openDirect makes sure the ghost and peer share a direct chat: the room
// already linked if the ghost is still in it (inviting peer again if peer
// left), else a new one.
func (s *Side) openDirect(ctx context.Context, ghost, jid, peer, roomID string) error {
	if roomID != "" {
		m, err := s.c.memberOf(ctx, ghost, roomID, peer)
		if retry, _ := retryable(err); retry && err != nil && httpStatus(err) != 404 && httpStatus(err) != 403 {
			return err
		}
		switch {
		case err == nil && (m == "join" || m == "invite"):
			s.rooms.add(roomID, ghost, peer)
			return s.rememberRoom(ctx, peer, jid, roomID)
		case err == nil || httpStatus(err) == 404: // peer left, or never had a member event
			err = s.c.invite(ctx, ghost, roomID, peer)
			if err == nil {
				s.rooms.add(roomID, ghost, peer)
				return s.rememberRoom(ctx, peer, jid, roomID)
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
	newRoom, err := s.c.createDirectRoom(ctx, ghost, peer, s.cfg.BotMXID())
	if err != nil {
		return err
	}
	if err := s.c.join(ctx, "", newRoom); err != nil {
		s.log.Warn("bot could not join the direct chat; presence falls back to polling", "room", newRoom, "err", err)
	}
	s.rooms.add(newRoom, ghost, peer)
	s.log.Info("direct chat opened", "ghost", ghost, "peer", peer, "room", newRoom)
	return s.rememberRoom(ctx, peer, jid, newRoom)
}

// linkedRoom returns the room of the link between peer and jid, if any.
func (s *Side) linkedRoom(ctx context.Context, peer, jid string) string {
	l, _, err := s.bus.Store().Links.Get(ctx, bridge.PairKey(peer, jid))
	if err != nil {
		return ""
	}
	return l.RoomID
}

// rememberRoom stores roomID in the link of (peer, jid). The link's state
// belongs to the core; it is set only when the link is new.
func (s *Side) rememberRoom(ctx context.Context, peer, jid, roomID string) error {
	_, err := s.bus.Store().Links.Update(ctx, bridge.PairKey(peer, jid), func(cur bridge.Link, exists bool) (bridge.Link, bool, error) {
		if exists && cur.RoomID == roomID {
			return cur, false, nil
		}
		if cur.MatrixUser == "" {
			cur.MatrixUser = peer
		}
		if cur.XMPPUser == "" {
			cur.XMPPUser = jid
		}
		if cur.State == "" {
			cur.State = bridge.LinkAsked
		}
		cur.RoomID = roomID
		cur.UpdatedAt = time.Now().UTC()
		return cur, true, nil
	})
	return err
}
