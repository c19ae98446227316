package matrixfed

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// room is what the gateway keeps of one room a ghost was invited to or
// joined, in the pb_federation bucket under "room.<token of the room ID>".
type room struct {
	ID      id.RoomID      `json:"id"`
	Version id.RoomVersion `json:"version,omitempty"`
	// Via is the server to make_join and make_leave through: the
	// inviter's.
	Via string `json:"via"`
	// Ghosts and Members map a ghost, and a remote user, to its
	// membership: "invite" or "join" (gone members are removed); a ghost
	// is "joining" from its make_join until send_join answered.
	Ghosts  map[id.UserID]string `json:"ghosts"`
	Members map[id.UserID]string `json:"members"`
	// IsDirect is the invite's is_direct.
	IsDirect bool `json:"is_direct,omitempty"`
}

const roomKeyPrefix = "room."

func roomKey(r id.RoomID) string { return roomKeyPrefix + bridge.EncodeToken(string(r)) }

// rooms is the gateway's memory of its rooms, written through to the
// bucket before a change is acted on, so that a kill -9 loses nothing.
// Every method is safe for concurrent use.
type rooms struct {
	kv *bridge.Bucket[json.RawMessage]

	mu       sync.Mutex
	byID     map[id.RoomID]*room
	byGhost  map[id.UserID]map[id.RoomID]struct{}
	byMember map[id.UserID]map[id.RoomID]struct{}
}

func newRooms(kv *bridge.Bucket[json.RawMessage]) *rooms {
	return &rooms{kv: kv, byID: map[id.RoomID]*room{}, byGhost: map[id.UserID]map[id.RoomID]struct{}{}, byMember: map[id.UserID]map[id.RoomID]struct{}{}}
}

// load reads every room from the bucket.
func (rs *rooms) load(ctx context.Context) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.kv.Range(ctx, func(key string, v json.RawMessage) error {
		if !strings.HasPrefix(key, roomKeyPrefix) {
			return nil
		}
		var r room
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("matrixfed: room %s: %w", key, err)
		}
		if r.Ghosts == nil {
			r.Ghosts = map[id.UserID]string{}
		}
		if r.Members == nil {
			r.Members = map[id.UserID]string{}
		}
		rs.byID[r.ID] = &r
		rs.index(&r)
		return nil
	})
}

func (rs *rooms) index(r *room) {
	add := func(idx map[id.UserID]map[id.RoomID]struct{}, u id.UserID) {
		m := idx[u]
		if m == nil {
			m = map[id.RoomID]struct{}{}
			idx[u] = m
		}
		m[r.ID] = struct{}{}
	}
	for g := range r.Ghosts {
		add(rs.byGhost, g)
	}
	for u := range r.Members {
		add(rs.byMember, u)
	}
}

func (rs *rooms) unindex(r *room) {
	del := func(idx map[id.UserID]map[id.RoomID]struct{}, u id.UserID) {
		delete(idx[u], r.ID)
		if len(idx[u]) == 0 {
			delete(idx, u)
		}
	}
	for g := range r.Ghosts {
		del(rs.byGhost, g)
	}
	for u := range r.Members {
		del(rs.byMember, u)
	}
}

// update changes room rid with fn (a fresh room if unknown, with create
// true) and stores it; a room with no ghost left is deleted. fn returns
// false to leave everything as it was. The store is written before the
// memory: if it fails, nothing changed.
func (rs *rooms) update(ctx context.Context, rid id.RoomID, create bool, fn func(r *room) bool) (room, bool, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	old := rs.byID[rid]
	if old == nil && !create {
		return room{}, false, nil
	}
	next := &room{ID: rid, Ghosts: map[id.UserID]string{}, Members: map[id.UserID]string{}}
	if old != nil {
		*next = *old
		next.Ghosts, next.Members = maps.Clone(old.Ghosts), maps.Clone(old.Members)
	}
	if !fn(next) {
		return copyRoom(old), false, nil
	}
	if len(next.Ghosts) == 0 {
		if old != nil {
			if err := rs.kv.Delete(ctx, roomKey(rid)); err != nil {
				return room{}, false, err
			}
			rs.unindex(old)
			delete(rs.byID, rid)
		}
		return *next, true, nil
	}
	data, err := json.Marshal(next)
	if err != nil {
		return room{}, false, err
	}
	if _, err := rs.kv.Put(ctx, roomKey(rid), data); err != nil {
		return room{}, false, err
	}
	if old != nil {
		rs.unindex(old)
	}
	rs.byID[rid] = next
	rs.index(next)
	return copyRoom(next), true, nil
}

func copyRoom(r *room) room {
	if r == nil {
		return room{}
	}
	c := *r
	c.Ghosts, c.Members = maps.Clone(r.Ghosts), maps.Clone(r.Members)
	return c
}

// get returns a copy of a room.
func (rs *rooms) get(rid id.RoomID) (room, bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	r, ok := rs.byID[rid]
	return copyRoom(r), ok
}

// shared returns a room where ghost and user are both (joined or
// invited), or "".
func (rs *rooms) shared(ghost, user id.UserID) id.RoomID {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for rid := range rs.byGhost[ghost] {
		if _, ok := rs.byID[rid].Members[user]; ok {
			return rid
		}
	}
	return ""
}

// destinations returns the servers of the remote members joined to a
// room the ghost has joined: the only servers its presence may go to.
func (rs *rooms) destinations(ghost id.UserID) []string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	set := map[string]struct{}{}
	for rid := range rs.byGhost[ghost] {
		r := rs.byID[rid]
		if r.Ghosts[ghost] != "join" {
			continue
		}
		for u, m := range r.Members {
			if m == "join" {
				set[u.Homeserver()] = struct{}{}
			}
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// joinedGhosts returns every ghost joined to at least one room.
func (rs *rooms) joinedGhosts() []id.UserID {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var out []id.UserID
	for g, rids := range rs.byGhost {
		for rid := range rids {
			if rs.byID[rid].Ghosts[g] == "join" {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// sharesRoom reports whether the remote user is joined to a room where
// ghost is joined too.
func (rs *rooms) sharesRoom(user, ghost id.UserID) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for rid := range rs.byGhost[ghost] {
		r := rs.byID[rid]
		if r.Ghosts[ghost] == "join" && r.Members[user] == "join" {
			return true
		}
	}
	return false
}

// watchedBy reports whether the remote user shares a joined room with
// any ghost.
func (rs *rooms) watchedBy(user id.UserID) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for rid := range rs.byMember[user] {
		r := rs.byID[rid]
		if r.Members[user] != "join" {
			continue
		}
		for _, m := range r.Ghosts {
			// A joining ghost too: the room's server pushes its users'
			// presence as soon as the join is in, maybe before send_join
			// has answered.
			if m == "join" || m == "joining" {
				return true
			}
		}
	}
	return false
}

// pendingInvites counts the rooms invited through server where no ghost
// has joined yet.
func (rs *rooms) pendingInvites(server string) int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	n := 0
	for _, r := range rs.byID {
		if r.Via != server {
			continue
		}
		joined := false
		for _, m := range r.Ghosts {
			joined = joined || m == "join"
		}
		if !joined {
			n++
		}
	}
	return n
}
