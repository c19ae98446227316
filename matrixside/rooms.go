package matrixside

import (
	"context"
	"errors"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// rooms remembers which ghosts and which Matrix users share which rooms,
// learnt from membership events, from what the ghosts did, and from the
// links bucket at start. It lets the side name the ghost a Matrix user's
// leave concerns, the counterpart of a ghost's own join, the room a ghost
// shares with someone, and whom to poll.
//
// It is bounded: at most max_tracked rooms, the one changed least recently
// forgotten, and at most maxRoomMembers ghosts, users and invitees each
// per room (the bridge is made of direct chats; in a big room with a
// ghost, members past the bound are not remembered, so their own joins
// and leaves are still reported but the ghost's are not reported to them).
type rooms struct {
	mu     sync.Mutex
	byRoom *lru[id.RoomID, *roomInfo]
}

// maxRoomMembers bounds each member set of a room in the index.
const maxRoomMembers = 1024

type roomInfo struct {
	ghosts map[id.UserID]struct{}
	users  map[id.UserID]struct{} // real Matrix users (not ghosts, not the bot)
	// invited holds members whose last known membership is invite, so a
	// leave of their own can be told apart as a rejection (Dendrite sends
	// no prev_content to appservices).
	invited map[id.UserID]struct{}
}

func newRooms(max int) *rooms { return &rooms{byRoom: newLRU[id.RoomID, *roomInfo](max, nil)} }

func (r *rooms) evictedCount() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byRoom.evicted
}

// info returns the room's entry, made if needed, and marks it used.
func (r *rooms) info(roomID id.RoomID) *roomInfo {
	ri, ok := r.byRoom.get(roomID)
	if !ok {
		ri = &roomInfo{ghosts: map[id.UserID]struct{}{}, users: map[id.UserID]struct{}{}, invited: map[id.UserID]struct{}{}}
		r.byRoom.put(roomID, ri)
	}
	return ri
}

// addMember adds u to set unless the set is full.
func addMember(set map[id.UserID]struct{}, u id.UserID) {
	if len(set) < maxRoomMembers {
		set[u] = struct{}{}
	}
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
		addMember(ri.ghosts, ghost)
	}
	if user != "" {
		addMember(ri.users, user)
	}
}

// remove forgets ghost and/or user in roomID.
func (r *rooms) remove(roomID id.RoomID, ghost, user id.UserID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ri, ok := r.byRoom.peek(roomID)
	if !ok {
		return
	}
	delete(ri.ghosts, ghost)
	delete(ri.users, user)
	if len(ri.ghosts) == 0 && len(ri.users) == 0 && len(ri.invited) == 0 {
		r.byRoom.remove(roomID)
	}
}

// setInvited records whether member's membership in roomID is now invite,
// and reports whether it was before.
func (r *rooms) setInvited(roomID id.RoomID, member id.UserID, invited bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	ri, ok := r.byRoom.peek(roomID)
	if !ok && !invited {
		return false // nothing to forget: no entry made for it
	}
	if !ok {
		ri = r.info(roomID)
	}
	_, was := ri.invited[member]
	if invited {
		addMember(ri.invited, member)
	} else {
		delete(ri.invited, member)
		if len(ri.ghosts) == 0 && len(ri.users) == 0 && len(ri.invited) == 0 {
			r.byRoom.remove(roomID)
		}
	}
	return was
}

func (r *rooms) ghostsIn(roomID id.RoomID) []id.UserID { return r.members(roomID, true) }
func (r *rooms) usersIn(roomID id.RoomID) []id.UserID  { return r.members(roomID, false) }

func (r *rooms) members(roomID id.RoomID, ghosts bool) []id.UserID {
	r.mu.Lock()
	defer r.mu.Unlock()
	ri, ok := r.byRoom.peek(roomID)
	if !ok {
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
	var found id.RoomID
	r.byRoom.each(func(roomID id.RoomID, ri *roomInfo) {
		_, g := ri.ghosts[ghost]
		_, u := ri.users[user]
		if g && u && found == "" {
			found = roomID
		}
	})
	return found
}

// allUsers returns every Matrix user sharing a room with a ghost.
func (r *rooms) allUsers() map[id.UserID]struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[id.UserID]struct{}{}
	r.byRoom.each(func(_ id.RoomID, ri *roomInfo) {
		if len(ri.ghosts) == 0 {
			return
		}
		for u := range ri.users {
			out[u] = struct{}{}
		}
	})
	return out
}

// loadLinks fills the room index, and the set of ghosts with a live link,
// from the links bucket (the core's; the side only reads it).
func (s *Side) loadLinks(ctx context.Context) {
	n := 0
	var approved []mapping.BareJID
	err := s.store.Links.Range(ctx, func(_ string, l bridge.Link) error {
		ghost, err := s.ghostOf(l.XMPPUser)
		if err != nil {
			return nil
		}
		if l.State == bridge.LinkAsked || l.State == bridge.LinkApproved {
			s.ghosts.markLinked(ghost)
		}
		if l.State == bridge.LinkApproved {
			approved = append(approved, l.XMPPUser)
		}
		if l.RoomID == "" {
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
	s.loadReported(ctx)
	s.restoreGhosts(ctx, approved)
}

// restoreGhosts shows, after a start or a takeover, the presence the core
// last recorded for the XMPP users of approved links (pb_presence): what
// the core asked while no instance was active (a handover) is otherwise
// lost. The ghosts' records (pb_ghost_presence) keep the homeserver from
// being asked again what it shows already. An opted-out person's record
// holds their real presence: nothing is restored for them, nor when their
// choice cannot be read.
func (s *Side) restoreGhosts(ctx context.Context, approved []mapping.BareJID) {
	n := 0
	for _, jid := range approved {
		if ctx.Err() != nil {
			return
		}
		key := bridge.PresenceKey(mapping.NetworkXMPP, string(jid))
		gctx, cancel := context.WithTimeout(ctx, stateTimeout)
		set, _, serr := s.store.Settings.Get(gctx, key)
		rec, _, perr := s.store.Presence.Get(gctx, key)
		cancel()
		if (serr == nil && set.OptOut) || (serr != nil && !errors.Is(serr, bridge.ErrNotFound)) || perr != nil {
			continue
		}
		if st := rec.Presence.State; st == mapping.StateUnknown || st == mapping.StateUnset {
			continue
		}
		ghost, err := s.ghostOf(jid)
		if err != nil {
			continue
		}
		if s.out.setIfNone(ghost, jid, s.wireOf(rec.Presence, time.Now())) {
			n++
		}
	}
	s.log.Debug("ghosts' presence restored from the core's records", "ghosts", n)
}
