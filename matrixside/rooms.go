package matrixside

import (
	"context"
	"sync"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// rooms remembers which ghosts and which Matrix users share which rooms,
// learnt from membership events, from what the ghosts did, and from the
// links bucket at start. It lets the side name the ghost a Matrix user's
// leave concerns, the counterpart of a ghost's own join, the room a ghost
// shares with someone, and whom to poll.
type rooms struct {
	mu     sync.Mutex
	byRoom map[id.RoomID]*roomInfo
}

type roomInfo struct {
	ghosts map[id.UserID]struct{}
	users  map[id.UserID]struct{} // real Matrix users (not ghosts, not the bot)
	// invited holds members whose last known membership is invite, so a
	// leave of their own can be told apart as a rejection (Dendrite sends
	// no prev_content to appservices).
	invited map[id.UserID]struct{}
}

func newRooms() *rooms { return &rooms{byRoom: map[id.RoomID]*roomInfo{}} }

func (r *rooms) info(roomID id.RoomID) *roomInfo {
	ri := r.byRoom[roomID]
	if ri == nil {
		ri = &roomInfo{ghosts: map[id.UserID]struct{}{}, users: map[id.UserID]struct{}{}, invited: map[id.UserID]struct{}{}}
		r.byRoom[roomID] = ri
	}
	return ri
}

// add records that ghost and/or user (either may be empty) are in roomID.
func (r *rooms) add(roomID id.RoomID, ghost, user id.UserID) {
	if roomID == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ri := r.info(roomID)
	if ghost != "" {
		ri.ghosts[ghost] = struct{}{}
	}
	if user != "" {
		ri.users[user] = struct{}{}
	}
}

// remove forgets ghost and/or user in roomID.
func (r *rooms) remove(roomID id.RoomID, ghost, user id.UserID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ri := r.byRoom[roomID]
	if ri == nil {
		return
	}
	delete(ri.ghosts, ghost)
	delete(ri.users, user)
	if len(ri.ghosts) == 0 && len(ri.users) == 0 && len(ri.invited) == 0 {
		delete(r.byRoom, roomID)
	}
}

// setInvited records whether member's membership in roomID is now invite,
// and reports whether it was before.
func (r *rooms) setInvited(roomID id.RoomID, member id.UserID, invited bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	ri := r.info(roomID)
	_, was := ri.invited[member]
	if invited {
		ri.invited[member] = struct{}{}
	} else {
		delete(ri.invited, member)
	}
	return was
}

func (r *rooms) ghostsIn(roomID id.RoomID) []id.UserID { return r.members(roomID, true) }
func (r *rooms) usersIn(roomID id.RoomID) []id.UserID  { return r.members(roomID, false) }

func (r *rooms) members(roomID id.RoomID, ghosts bool) []id.UserID {
	r.mu.Lock()
	defer r.mu.Unlock()
	ri := r.byRoom[roomID]
	if ri == nil {
		return nil
	}
	set := ri.users
	if ghosts {
		set = ri.ghosts
	}
	out := make([]id.UserID, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	return out
}

// shared returns a room where ghost and user are both known, if any.
func (r *rooms) shared(ghost, user id.UserID) id.RoomID {
	r.mu.Lock()
	defer r.mu.Unlock()
	for roomID, ri := range r.byRoom {
		_, g := ri.ghosts[ghost]
		_, u := ri.users[user]
		if g && u {
			return roomID
		}
	}
	return ""
}

// allUsers returns every Matrix user sharing a room with a ghost.
func (r *rooms) allUsers() map[id.UserID]struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[id.UserID]struct{}{}
	for _, ri := range r.byRoom {
		if len(ri.ghosts) == 0 {
			continue
		}
		for u := range ri.users {
			out[u] = struct{}{}
		}
	}
	return out
}

// loadLinks fills the room index from the links bucket (the core's; the
// side only reads it).
func (s *Side) loadLinks(ctx context.Context) {
	n := 0
	err := s.store.Links.Range(ctx, func(_ string, l bridge.Link) error {
		if l.RoomID == "" {
			return nil
		}
		ghost, err := s.ghostOf(l.XMPPUser)
		if err != nil {
			return nil
		}
		s.rooms.add(id.RoomID(l.RoomID), ghost, id.UserID(l.MatrixUser))
		n++
		return nil
	})
	if err != nil {
		s.log.Warn("reading links failed", "err", err)
	}
	s.log.Debug("links loaded", "rooms", n)
}
