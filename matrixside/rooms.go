package matrixside

import (
	"context"
	"github.com/presence-bridge/presence-bridge/mapping"
	"sync"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// rooms remembers which ghosts and which Matrix users share which rooms,
// learnt from membership events and the links bucket. It lets the side
// name the ghost a Matrix user's leave concerns, and the counterpart of a
// ghost's own join.
type rooms struct {
	mu     sync.Mutex
	byRoom map[string]*roomInfo
}

type roomInfo struct {
	ghosts map[string]struct{} // ghost MXIDs
	users  map[string]struct{} // Matrix user IDs (not ghosts, not the bot)
	// invited holds members whose last known membership is invite, so a
	// leave of their own can be told apart as a rejection (Dendrite sends
	// no prev_content to appservices).
	invited map[string]struct{}
}

func newRooms() *rooms { return &rooms{byRoom: map[string]*roomInfo{}} }

func (r *rooms) info(roomID string) *roomInfo {
	ri := r.byRoom[roomID]
	if ri == nil {
		ri = &roomInfo{ghosts: map[string]struct{}{}, users: map[string]struct{}{}, invited: map[string]struct{}{}}
		r.byRoom[roomID] = ri
	}
	return ri
}

// add records that ghost and/or user (either may be empty) are in roomID.
func (r *rooms) add(roomID, ghost, user string) {
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
func (r *rooms) remove(roomID, ghost, user string) {
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
func (r *rooms) setInvited(roomID, member string, invited bool) bool {
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

func (r *rooms) ghostsIn(roomID string) []string { return r.members(roomID, true) }
func (r *rooms) usersIn(roomID string) []string  { return r.members(roomID, false) }

func (r *rooms) members(roomID string, ghosts bool) []string {
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
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	return out
}

// allUsers returns every Matrix user sharing a room with a ghost.
func (r *rooms) allUsers() map[string]struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]struct{}{}
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

// loadLinks fills the room index from the links bucket.
func (s *Side) loadLinks(ctx context.Context) {
	n := 0
	err := s.bus.Store().Links.Range(ctx, func(_ string, l bridge.Link) error {
		if l.RoomID == "" {
			return nil
		}
		ghostTyped, err := s.ns.GhostMXID(mapping.BareJID(l.XMPPUser))
		ghost := string(ghostTyped)
		if err != nil {
			return nil
		}
		s.rooms.add(l.RoomID, ghost, l.MatrixUser)
		n++
		return nil
	})
	if err != nil {
		s.log.Warn("reading links failed", "err", err)
	}
	s.log.Debug("links loaded", "rooms", n)
}
