package matrixside

import (
	"errors"
	"strings"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// userKind says what a Matrix user ID is to the bridge.
type userKind uint8

const (
	kindInvalid  userKind = iota // not a user ID the bridge can handle
	kindMatrix                   // a real Matrix user: a valid mapping.UserID
	kindGhost                    // one of our ghosts
	kindBadGhost                 // in our namespace but does not decode
	kindBot                      // the bridge bot
)

// classify tells ghosts (with their bare JID), the bot and real users
// apart. It is where a Matrix user ID from the wire is validated.
func (s *Side) classify(u id.UserID) (userKind, mapping.BareJID) {
	if u == s.bot.UserID {
		return kindBot, ""
	}
	jid, err := s.ns.ParseGhostMXID(mapping.UserID(u))
	switch {
	case err == nil:
		return kindGhost, jid
	case errors.Is(err, mapping.ErrNotGhost):
		if s.inGhostNamespace(u) {
			return kindBadGhost, ""
		}
		return kindMatrix, ""
	}
	return kindInvalid, ""
}

// inGhostNamespace reports whether u matches the registration's user
// namespace, whether or not it decodes.
func (s *Side) inGhostNamespace(u id.UserID) bool {
	return strings.HasPrefix(string(u), "@"+s.ns.GhostPrefix) && strings.HasSuffix(string(u), ":"+s.ns.HomeserverDomain)
}

// parseContent parses evt's content for its type (with the class set),
// and reports whether that worked, or had been done already.
func parseContent(evt *event.Event) bool {
	err := evt.Content.ParseRaw(evt.Type)
	return err == nil || errors.Is(err, event.ErrContentAlreadyParsed)
}

// memberEvent is what the side reads of an m.room.member event.
type memberEvent struct {
	ID             id.EventID
	RoomID         id.RoomID
	Sender, Target id.UserID
	Membership     event.Membership
	Prev           event.Membership // from prev_content, "" if not sent
	IsDirect       bool
}

// memberOf reads an m.room.member event; ok is false if it is not one or
// lacks what the side needs.
func memberOf(evt *event.Event) (memberEvent, bool) {
	if evt.Type.Type != event.StateMember.Type || evt.StateKey == nil || *evt.StateKey == "" || evt.RoomID == "" || evt.Sender == "" {
		return memberEvent{}, false
	}
	evt.Type.Class = event.StateEventType
	if !parseContent(evt) {
		return memberEvent{}, false
	}
	c := evt.Content.AsMember()
	if c.Membership == "" {
		return memberEvent{}, false
	}
	m := memberEvent{ID: evt.ID, RoomID: evt.RoomID, Sender: evt.Sender, Target: id.UserID(*evt.StateKey), Membership: c.Membership, IsDirect: c.IsDirect}
	if prev := evt.Unsigned.PrevContent; prev != nil {
		if prev.ParseRaw(event.StateMember) == nil {
			m.Prev = prev.AsMember().Membership
		}
	}
	return m, true
}

// membershipReports turns one m.room.member event into the reports it
// means, and keeps the room index up to date. It returns nothing for
// events that do not concern a ghost. The bot's own invites are handled by
// the caller.
func (s *Side) membershipReports(m memberEvent) []bridge.MatrixMembership {
	targetKind, targetJID := s.classify(m.Target)
	senderKind, senderJID := s.classify(m.Sender)
	if targetKind == kindBadGhost || senderKind == kindBadGhost {
		s.badGhostLog.note(time.Now(), "room", m.RoomID, "sender", m.Sender, "state_key", m.Target)
		return nil
	}
	if targetKind == kindInvalid || senderKind == kindInvalid || targetKind == kindBot {
		return nil
	}
	membership, err := bridge.ParseMembership(string(m.Membership))
	if err != nil {
		return nil // knock and whatever comes next: nothing to bridge
	}
	wasInvited := s.rooms.setInvited(m.RoomID, m.Target, m.Membership == event.MembershipInvite)
	if membership == bridge.MembershipLeave && m.Sender == m.Target && (m.Prev == event.MembershipInvite || wasInvited) {
		membership = bridge.MembershipReject
	}
	gone := membership.Gone()
	mk := func(user id.UserID, ghost mapping.BareJID, ghostChanged bool) bridge.MatrixMembership {
		r := bridge.MatrixMembership{
			User: mapping.UserID(user), Ghost: ghost, GhostChanged: ghostChanged,
			Membership: membership, RoomID: string(m.RoomID), BySelf: m.Sender == m.Target, IsDirect: m.IsDirect,
		}
		// An id derived from the Matrix event lets the transport drop the
		// copies a transaction sent again would report again.
		if m.ID != "" {
			r.ID = bridge.EncodeToken(string(m.ID)) + "." + bridge.EncodeToken(string(user)) + "." + bridge.EncodeToken(string(ghost))
		}
		return r
	}
	var out []bridge.MatrixMembership
	switch {
	case targetKind == kindGhost && senderKind == kindMatrix:
		// A Matrix user invites, kicks or bans a ghost.
		out = append(out, mk(m.Sender, targetJID, true))
		s.rooms.add(m.RoomID, "", m.Sender)
		if gone {
			s.rooms.remove(m.RoomID, m.Target, "")
		} else {
			s.rooms.add(m.RoomID, m.Target, "")
		}
	case targetKind == kindGhost:
		// The ghost's own join or leave (or the bot acting on it): tell
		// every Matrix user known in the room.
		for _, u := range s.rooms.usersIn(m.RoomID) {
			out = append(out, mk(u, targetJID, true))
		}
		if gone {
			s.rooms.remove(m.RoomID, m.Target, "")
		} else {
			s.rooms.add(m.RoomID, m.Target, "")
		}
	case senderKind == kindGhost:
		// A ghost invites or kicks a Matrix user: this is how the core
		// learns the room of a direct chat the ghost opened.
		out = append(out, mk(m.Target, senderJID, false))
		if gone {
			s.rooms.remove(m.RoomID, "", m.Target)
		} else {
			s.rooms.add(m.RoomID, m.Sender, m.Target)
		}
	default:
		// A Matrix user's own membership in a room with ghosts: the
		// homeserver sends it because a ghost is there.
		for _, g := range s.rooms.ghostsIn(m.RoomID) {
			if kind, jid := s.classify(g); kind == kindGhost {
				out = append(out, mk(m.Target, jid, false))
			}
		}
		if gone {
			s.rooms.remove(m.RoomID, "", m.Target)
		} else if len(out) > 0 {
			s.rooms.add(m.RoomID, "", m.Target)
		}
	}
	return out
}
