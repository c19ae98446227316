package matrixfed

import (
	"context"
	stdjson "encoding/json"
	"io"
	"net/http"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// The spec's bounds on one transaction, and the gateway's on what a
// remote server can make it keep.
const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
	// maxPendingInvites bounds the rooms one server has invited ghosts to
	// that no ghost joined yet (each is a record in the bucket).
	maxPendingInvites = 100
	// maxRoomMembers bounds the remote members kept per room.
	maxRoomMembers = 1000
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = stdjson.NewEncoder(w).Encode(v)
}

// ghostJID returns the XMPP user whose ghost u is, if it is one of ours.
func (g *Gateway) ghostJID(u id.UserID) (mapping.BareJID, bool) {
	jid, err := g.ns.ParseGhostMXID(mapping.UserID(u))
	return jid, err == nil
}

// serveInvite accepts an invite of a ghost (PUT /v2/invite; mautrix has
// no handler): the event must be an m.room.member invite of one of our
// ghosts, sent and signed by the origin. The gateway signs it and returns
// it, records the room and reports the invite to the core, which asks the
// XMPP user; the ghost joins only when the core says so.
func (g *Gateway) serveInvite(w http.ResponseWriter, r *http.Request) {
	origin := federation.OriginServerName(r.Context())
	var req struct {
		Event       stdjson.RawMessage `json:"event"`
		RoomVersion id.RoomVersion     `json:"room_version"`
	}
	body, err := io.ReadAll(r.Body)
	if err != nil || stdjson.Unmarshal(body, &req) != nil {
		mautrix.MBadJSON.WithMessage("Bad invite").Write(w)
		return
	}
	if !supported(req.RoomVersion) {
		mautrix.RespError{ErrCode: "M_INCOMPATIBLE_ROOM_VERSION", StatusCode: http.StatusBadRequest, Err: "Unsupported room version",
			ExtraData: map[string]any{"room_version": req.RoomVersion}}.Write(w)
		return
	}
	p, err := parsePDU(req.Event)
	if err != nil {
		mautrix.MBadJSON.WithMessage("Bad invite event").Write(w)
		return
	}
	mc, ok := memberOf(p)
	target := id.UserID("")
	if ok {
		target = id.UserID(*p.StateKey)
	}
	jid, isGhost := g.ghostJID(target)
	switch {
	case !ok || mc.Membership != "invite" || string(p.RoomID) != r.PathValue("roomID"):
		mautrix.MBadJSON.WithMessage("Not an invite").Write(w)
		return
	case !isGhost:
		mautrix.MNotFound.WithMessage("No such user").Write(w)
		return
	case p.Sender.Homeserver() != origin:
		mautrix.MForbidden.WithMessage("Sender is not of the origin").Write(w)
		return
	}
	if err := g.verifyEvent(r.Context(), p, req.RoomVersion, origin); err != nil {
		g.logs.warn(g.log, "badsig:"+origin, "invite with a bad signature refused", "origin", origin)
		mautrix.MForbidden.WithMessage("Bad event signature").Write(w)
		return
	}
	// The gateway's signature joins the inviter's.
	err = p.Sign(req.RoomVersion, g.cfg.ServerName, g.key.ID, g.key.Priv)
	signed, merr := marshalPDU(p)
	if err != nil || merr != nil {
		mautrix.MUnknown.WithMessage("Could not sign").Write(w)
		return
	}
	ctx := r.Context()
	if _, known := g.rooms.get(p.RoomID); !known && g.rooms.pendingInvites(origin) >= maxPendingInvites {
		g.logs.warn(g.log, "invites:"+origin, "too many pending invites from one server; refused", "origin", origin)
		mautrix.MForbidden.WithMessage("Too many pending invites").Write(w)
		return
	}
	_, _, err = g.rooms.update(ctx, p.RoomID, true, func(rm *room) bool {
		rm.Version, rm.Via, rm.IsDirect = req.RoomVersion, origin, mc.IsDirect
		if rm.Ghosts[target] == "" {
			rm.Ghosts[target] = "invite"
		}
		rm.Members[p.Sender] = "join"
		return true
	})
	if err == nil {
		err = g.obs.MatrixMembership(ctx, bridge.MatrixMembership{
			Stamp: bridge.Stamp{ID: eventReportID(r.PathValue("eventID"), p.Sender, jid)},
			User:  mapping.UserID(p.Sender), Ghost: jid, GhostChanged: true,
			Membership: bridge.MembershipInvite, RoomID: string(p.RoomID), IsDirect: mc.IsDirect,
		})
	}
	if err != nil {
		g.log.Warn("invite not recorded; the inviting server will try again", "room", p.RoomID, "err", err)
		mautrix.MUnknown.WithMessage("Try again").Write(w)
		return
	}
	g.log.Info("ghost invited", "ghost", target, "by", p.Sender, "room", p.RoomID)
	writeJSON(w, http.StatusOK, map[string]any{"event": signed})
}

// eventReportID derives a report's ID from the Matrix event, so that the
// transport drops the copies a re-sent transaction would make.
func eventReportID(eventID string, user id.UserID, jid mapping.BareJID) string {
	if eventID == "" {
		return ""
	}
	return bridge.EncodeToken(eventID) + "." + bridge.EncodeToken(string(user)) + "." + bridge.EncodeToken(string(jid))
}

type transaction struct {
	Origin string               `json:"origin"`
	PDUs   []stdjson.RawMessage `json:"pdus"`
	EDUs   []struct {
		Type    string             `json:"edu_type"`
		Content stdjson.RawMessage `json:"content"`
	} `json:"edus"`
}

// serveSend handles an inbound transaction (PUT /v1/send; mautrix has no
// handler): member events of rooms with a ghost, and m.presence EDUs.
// A durable report that fails makes it a 500: the origin sends the
// transaction again, and every step is idempotent.
func (g *Gateway) serveSend(w http.ResponseWriter, r *http.Request) {
	origin := federation.OriginServerName(r.Context())
	var txn transaction
	body, err := io.ReadAll(r.Body)
	if err != nil || stdjson.Unmarshal(body, &txn) != nil {
		mautrix.MBadJSON.WithMessage("Bad transaction").Write(w)
		return
	}
	if txn.Origin != "" && txn.Origin != origin {
		mautrix.MForbidden.WithMessage("Transaction origin is not the request's").Write(w)
		return
	}
	if len(txn.PDUs) > maxTxnPDUs || len(txn.EDUs) > maxTxnEDUs {
		mautrix.MBadJSON.WithMessage("Too many PDUs or EDUs").Write(w)
		return
	}
	results := map[id.EventID]map[string]string{}
	for _, raw := range txn.PDUs {
		evID, perr, err := g.handlePDU(r.Context(), origin, raw)
		if err != nil {
			g.log.Warn("transaction not handled; the origin will send it again", "origin", origin, "err", err)
			mautrix.MUnknown.WithMessage("Try again").Write(w)
			return
		}
		if evID != "" {
			res := map[string]string{}
			if perr != "" {
				res["error"] = perr
			}
			results[evID] = res
		}
	}
	for _, e := range txn.EDUs {
		if e.Type == "m.presence" {
			g.handlePresenceEDU(r.Context(), origin, e.Content)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"pdus": results})
}

// handlePDU applies one PDU of a transaction. It returns the event ID
// (empty when the room is not one of the gateway's), a rejection reason
// for the answer, and an error when a durable report failed.
func (g *Gateway) handlePDU(ctx context.Context, origin string, raw []byte) (id.EventID, string, error) {
	p, err := parsePDU(raw)
	if err != nil {
		return "", "", nil
	}
	rm, ok := g.rooms.get(p.RoomID)
	if !ok || rm.Version == "" {
		return "", "", nil
	}
	evID, err := p.GetEventID(rm.Version)
	if err != nil {
		return "", "", nil
	}
	mc, isMember := memberOf(p)
	if !isMember {
		return evID, "", nil
	}
	if p.Sender.Homeserver() != origin {
		return evID, "sender is not of the origin", nil
	}
	if err := g.verifyEvent(ctx, p, rm.Version, origin); err != nil {
		g.logs.warn(g.log, "badsig:"+origin, "event with a bad signature refused", "origin", origin)
		return evID, "bad signature", nil
	}
	return evID, "", g.applyMember(ctx, rm, evID, p.Sender, id.UserID(*p.StateKey), mc)
}

// applyMember records a membership change in a room of the gateway's and
// reports what concerns a ghost, as matrixside does from the
// homeserver's transactions.
func (g *Gateway) applyMember(ctx context.Context, rm room, evID id.EventID, sender, target id.UserID, mc memberContent) error {
	membership, err := bridge.ParseMembership(mc.Membership)
	if err != nil {
		return nil // knock and whatever comes next
	}
	gone := membership.Gone()
	if jid, ok := g.ghostJID(target); ok {
		if !gone || sender == target {
			return nil // a ghost's own events come from the gateway itself
		}
		// A Matrix user kicks or bans a ghost.
		if _, _, err := g.rooms.update(ctx, rm.ID, false, func(r *room) bool {
			delete(r.Ghosts, target)
			return true
		}); err != nil {
			return err
		}
		return g.obs.MatrixMembership(ctx, bridge.MatrixMembership{
			Stamp: bridge.Stamp{ID: eventReportID(string(evID), sender, jid)},
			User:  mapping.UserID(sender), Ghost: jid, GhostChanged: true,
			Membership: membership, RoomID: string(rm.ID), IsDirect: rm.IsDirect,
		})
	}
	if _, err := mapping.NewUserID(string(target)); err != nil {
		return nil
	}
	if membership == bridge.MembershipLeave && sender == target && rm.Members[target] == "invite" {
		membership = bridge.MembershipReject
	}
	newServer := false
	after, _, err := g.rooms.update(ctx, rm.ID, false, func(r *room) bool {
		if gone {
			delete(r.Members, target)
		} else {
			if _, known := r.Members[target]; !known && len(r.Members) >= maxRoomMembers {
				return false
			}
			if membership == bridge.MembershipJoin && !serverJoined(r, target.Homeserver()) {
				newServer = true
			}
			r.Members[target] = mc.Membership
		}
		return true
	})
	if err != nil {
		return err
	}
	for ghost := range rm.Ghosts {
		jid, ok := g.ghostJID(ghost)
		if !ok {
			continue
		}
		if err := g.obs.MatrixMembership(ctx, bridge.MatrixMembership{
			Stamp: bridge.Stamp{ID: eventReportID(string(evID), target, jid)},
			User:  mapping.UserID(target), Ghost: jid, Membership: membership,
			RoomID: string(rm.ID), BySelf: sender == target, IsDirect: rm.IsDirect,
		}); err != nil {
			return err
		}
	}
	if newServer {
		// A server that joins sees the ghosts' presence at once.
		for ghost, m := range after.Ghosts {
			if m == "join" {
				g.out.pushAfterJoin(ghost, []string{target.Homeserver()})
			}
		}
	}
	return nil
}

func serverJoined(r *room, server string) bool {
	for u, m := range r.Members {
		if m == "join" && u.Homeserver() == server {
			return true
		}
	}
	return false
}

// presenceEDU is the content of an m.presence EDU.
type presenceEDU struct {
	Push []struct {
		UserID          id.UserID `json:"user_id"`
		Presence        string    `json:"presence"`
		StatusMsg       *string   `json:"status_msg,omitempty"`
		LastActiveAgo   *int64    `json:"last_active_ago,omitempty"`
		CurrentlyActive bool      `json:"currently_active,omitempty"`
	} `json:"push"`
	Poll   []id.UserID `json:"poll,omitempty"`
	Unpoll []id.UserID `json:"unpoll,omitempty"`
}

// handlePresenceEDU reports the presence of remote users, accepted only
// for users of the origin who share a room with a ghost. A poll is
// answered with the current presence of the ghosts asked for, if the
// origin shares a room with them; unpoll needs nothing, since the gateway
// pushes to every server sharing a room with a ghost anyway.
func (g *Gateway) handlePresenceEDU(ctx context.Context, origin string, raw []byte) {
	var edu presenceEDU
	if stdjson.Unmarshal(raw, &edu) != nil {
		return
	}
	now := time.Now()
	for _, u := range edu.Push {
		if u.UserID.Homeserver() != origin {
			g.logs.warn(g.log, "foreign:"+origin, "presence for a user of another server refused", "origin", origin, "user", u.UserID)
			continue
		}
		if _, err := mapping.NewUserID(string(u.UserID)); err != nil || !g.rooms.watchedBy(u.UserID) {
			g.logs.debug(g.log, "unwatched:"+origin, "presence of a user sharing no room with a ghost ignored", "origin", origin, "user", u.UserID)
			continue
		}
		mp, err := mapping.ParseMatrixPresence(u.Presence)
		if err != nil {
			continue
		}
		st := mapping.MatrixState{Presence: mp, CurrentlyActive: u.CurrentlyActive}
		if u.StatusMsg != nil {
			st.StatusMsg = *u.StatusMsg
		}
		if u.LastActiveAgo != nil {
			st.HasLastActive, st.LastActiveAgo = true, time.Duration(*u.LastActiveAgo)*time.Millisecond
		}
		err = g.obs.MatrixPresence(ctx, bridge.MatrixPresence{
			Stamp: bridge.Stamp{ObservedAt: now},
			User:  mapping.UserID(u.UserID), Presence: g.tr.FromMatrix(st, now),
		})
		if err != nil {
			g.log.Warn("presence not reported", "user", u.UserID, "err", err)
		}
	}
	for _, ghost := range edu.Poll {
		if _, ok := g.ghostJID(ghost); ok {
			g.out.push(ghost, []string{origin}) // push checks the shared room
		}
	}
}

// The stubs peers call on any server whose users are in their rooms:
// answered for the ghosts (no devices, no keys), 404 for anyone else.

func (g *Gateway) serveProfile(w http.ResponseWriter, r *http.Request) {
	u := id.UserID(r.URL.Query().Get("user_id"))
	jid, ok := g.ghostJID(u)
	if !ok {
		mautrix.MNotFound.WithMessage("No such user").Write(w)
		return
	}
	switch r.URL.Query().Get("field") {
	case "", "displayname":
		writeJSON(w, http.StatusOK, map[string]string{"displayname": string(jid)})
	default:
		writeJSON(w, http.StatusOK, map[string]string{})
	}
}

func (g *Gateway) serveDevices(w http.ResponseWriter, r *http.Request) {
	u := id.UserID(r.PathValue("userID"))
	if _, ok := g.ghostJID(u); !ok {
		mautrix.MNotFound.WithMessage("No such user").Write(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"user_id": u, "stream_id": 0, "devices": []any{}})
}

func (g *Gateway) serveKeysQuery(w http.ResponseWriter, r *http.Request) {
	var req struct {
		DeviceKeys map[id.UserID]stdjson.RawMessage `json:"device_keys"`
	}
	_ = stdjson.NewDecoder(r.Body).Decode(&req)
	out := map[id.UserID]map[string]any{}
	for u := range req.DeviceKeys {
		if _, ok := g.ghostJID(u); ok {
			out[u] = map[string]any{}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_keys": out})
}

func (g *Gateway) serveKeysClaim(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"one_time_keys": map[string]any{}})
}
