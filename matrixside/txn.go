package matrixside

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// transaction is the body of PUT /_matrix/app/v1/transactions/{txnId}.
// Ephemeral events (MSC2409) come under the stable or the unstable key.
type transaction struct {
	Events            []json.RawMessage `json:"events"`
	Ephemeral         []json.RawMessage `json:"ephemeral"`
	EphemeralUnstable []json.RawMessage `json:"de.sorunome.msc2409.ephemeral"`
}

// rawEvent is the part of a room or ephemeral event the bridge reads.
type rawEvent struct {
	Type     string          `json:"type"`
	EventID  string          `json:"event_id"`
	RoomID   string          `json:"room_id"`
	Sender   string          `json:"sender"`
	StateKey *string         `json:"state_key"`
	Content  json.RawMessage `json:"content"`
	Unsigned struct {
		PrevContent *memberContent `json:"prev_content"`
	} `json:"unsigned"`
	PrevContent *memberContent `json:"prev_content"` // older servers put it here
}

type memberContent struct {
	Membership string `json:"membership"`
	IsDirect   bool   `json:"is_direct"`
}

// memberEvent is one m.room.member event of a transaction.
type memberEvent struct {
	EventID        string
	RoomID         string
	Sender         string
	StateKey       string
	Membership     string
	PrevMembership string
	IsDirect       bool
}

// presenceEvent is one m.presence ephemeral event.
type presenceEvent struct {
	Sender  string
	Content wirePresence
}

// parsedTxn is what the bridge takes from a transaction.
type parsedTxn struct {
	Members  []memberEvent
	Presence []presenceEvent
	// Commands are text messages that start with the command prefix.
	Commands []commandEvent
	// Skipped counts events that were malformed or of no interest.
	Skipped int
}

// parseTransaction decodes a transaction body. A body that is not JSON or
// not a JSON object with arrays where arrays belong is an error wrapping
// ErrBadTransaction (errcode M_NOT_JSON or M_BAD_JSON); single malformed
// events are skipped, so one bad event cannot block the homeserver's queue.
func parseTransaction(body []byte) (*parsedTxn, string, error) {
	if !json.Valid(body) {
		return nil, "M_NOT_JSON", fmt.Errorf("%w: not JSON", ErrBadTransaction)
	}
	if b := bytes.TrimLeft(body, " \t\r\n"); len(b) == 0 || b[0] != '{' {
		return nil, "M_BAD_JSON", fmt.Errorf("%w: not a JSON object", ErrBadTransaction)
	}
	var t transaction
	if err := json.Unmarshal(body, &t); err != nil {
		return nil, "M_BAD_JSON", fmt.Errorf("%w: %v", ErrBadTransaction, err)
	}
	out := &parsedTxn{}
	for _, raw := range t.Events {
		var ev rawEvent
		if json.Unmarshal(raw, &ev) == nil && ev.Type == "m.room.message" {
			if c, ok := parseCommand(ev); ok {
				out.Commands = append(out.Commands, c)
			} else {
				out.Skipped++
			}
			continue
		}
		if json.Unmarshal(raw, &ev) != nil || ev.Type != "m.room.member" || ev.StateKey == nil {
			out.Skipped++
			continue
		}
		var c memberContent
		if json.Unmarshal(ev.Content, &c) != nil || c.Membership == "" || ev.RoomID == "" || ev.Sender == "" || *ev.StateKey == "" {
			out.Skipped++
			continue
		}
		m := memberEvent{EventID: ev.EventID, RoomID: ev.RoomID, Sender: ev.Sender, StateKey: *ev.StateKey, Membership: c.Membership, IsDirect: c.IsDirect}
		switch {
		case ev.Unsigned.PrevContent != nil:
			m.PrevMembership = ev.Unsigned.PrevContent.Membership
		case ev.PrevContent != nil:
			m.PrevMembership = ev.PrevContent.Membership
		}
		out.Members = append(out.Members, m)
	}
	for _, list := range [][]json.RawMessage{t.Ephemeral, t.EphemeralUnstable} {
		for _, raw := range list {
			var ev rawEvent
			if json.Unmarshal(raw, &ev) != nil || ev.Type != "m.presence" || ev.Sender == "" {
				out.Skipped++
				continue
			}
			var p wirePresence
			if json.Unmarshal(ev.Content, &p) != nil || p.Presence == "" {
				out.Skipped++
				continue
			}
			out.Presence = append(out.Presence, presenceEvent{Sender: ev.Sender, Content: p})
		}
	}
	return out, "", nil
}
