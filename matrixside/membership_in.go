package matrixside

import (
	"errors"
	"strings"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// userKind says what a Matrix user ID is to the bridge.
type userKind uint8

const (
	kindInvalid  userKind = iota // not a user ID the bridge can handle
	kindMatrix                   // a real Matrix user
	kindGhost                    // one of our ghosts
	kindBadGhost                 // in our namespace but does not decode
	kindBot                      // the bridge bot
)

// classify tells ghosts (with their bare JID), the bot and real users apart.
func (s *Side) classify(mxid string) (userKind, string) {
	if mxid == s.cfg.BotMXID() {
		return kindBot, ""
	}
	jid, err := s.ns.ParseGhostMXID(mapping.UserID(mxid))
	switch {
	case err == nil:
		return kindGhost, string(jid)
	case errors.Is(err, mapping.ErrNotGhost):
		if s.inGhostNamespace(mxid) {
			return kindBadGhost, ""
		}
		return kindMatrix, ""
	}
	return kindInvalid, ""
}

// inGhostNamespace reports whether mxid matches the registration's user
// namespace, whether or not it decodes.
func (s *Side) inGhostNamespace(mxid string) bool {
	return strings.HasPrefix(mxid, "@"+s.ns.GhostPrefix) && strings.HasSuffix(mxid, ":"+s.ns.HomeserverDomain)
}

// membershipEvents turns one m.room.member event into the bus events it
// means, and keeps the room index up to date. It returns nothing for
// events that do not concern a ghost. The bot's own invites are handled by
// the caller.
func (s *Side) membershipEvents(m memberEvent) []*bridge.Event {
	targetKind, targetJID := s.classify(m.StateKey)
	senderKind, senderJID := s.classify(m.Sender)
	if targetKind == kindBadGhost || senderKind == kindBadGhost {
		s.log.Warn("ignoring membership of an undecodable ghost", "room", m.RoomID, "sender", m.Sender, "state_key", m.StateKey)
		return nil
	}
	if targetKind == kindInvalid || senderKind == kindInvalid || targetKind == kindBot {
		return nil
	}
	membership := m.Membership
	wasInvited := s.rooms.setInvited(m.RoomID, m.StateKey, membership == "invite")
	if membership == "leave" && m.Sender == m.StateKey && (m.PrevMembership == "invite" || wasInvited) {
		membership = "reject"
	}
	gone := m.Membership == "leave" || m.Membership == "ban"
	native := func(kind userKind, mxid, jid string) string {
		if kind == kindGhost {
			return jid
		}
		return mxid
	}
	sender := native(senderKind, m.Sender, senderJID)
	mk := func(user, peer, member string) *bridge.Event {
		return &bridge.Event{
			Kind: bridge.KindMembership, Origin: mapping.NetworkMatrix, User: user, Peer: peer,
			Membership: &bridge.MembershipPayload{Membership: membership, RoomID: m.RoomID, Member: member, Sender: sender, IsDirect: m.IsDirect},
		}
	}
	var out []*bridge.Event
	switch {
	case targetKind == kindGhost && senderKind == kindMatrix:
		// A Matrix user invites, kicks or bans a ghost.
		out = append(out, mk(m.Sender, targetJID, targetJID))
		s.rooms.add(m.RoomID, "", m.Sender)
		if gone {
			s.rooms.remove(m.RoomID, m.StateKey, "")
		} else {
			s.rooms.add(m.RoomID, m.StateKey, "")
		}
	case targetKind == kindGhost:
		// The ghost's own join or leave (or the bot acting on it): tell
		// every Matrix user known in the room.
		for _, u := range s.rooms.usersIn(m.RoomID) {
			out = append(out, mk(u, targetJID, targetJID))
		}
		if gone {
			s.rooms.remove(m.RoomID, m.StateKey, "")
		} else {
			s.rooms.add(m.RoomID, m.StateKey, "")
		}
	case senderKind == kindGhost:
		// A ghost invites or kicks a Matrix user.
		out = append(out, mk(m.StateKey, senderJID, m.StateKey))
		if gone {
			s.rooms.remove(m.RoomID, "", m.StateKey)
		} else {
			s.rooms.add(m.RoomID, m.Sender, m.StateKey)
		}
	default:
		// A Matrix user's own membership in a room with ghosts: the
		// homeserver sends it because a ghost is joined there.
		for _, g := range s.rooms.ghostsIn(m.RoomID) {
			if _, jid := s.classify(g); jid != "" {
				out = append(out, mk(m.StateKey, jid, m.StateKey))
			}
		}
		if gone {
			s.rooms.remove(m.RoomID, "", m.StateKey)
		} else if len(out) > 0 {
			s.rooms.add(m.RoomID, "", m.StateKey)
		}
	}
	for _, ev := range out {
		// Ids derived from the Matrix event let the bus drop the copies a
		// retried transaction would publish again.
		if m.EventID != "" {
			ev.ID = bridge.EncodeToken(m.EventID) + "." + bridge.EncodeToken(ev.User)
		}
	}
	return out
}
