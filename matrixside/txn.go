package matrixside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// maxTxnBody bounds a transaction body; Synapse sends at most 100 PDUs and
// 100 EDUs per transaction, far below this.
const maxTxnBody = 16 << 20

// rawTransaction is the part of mautrix's appservice.Transaction the side
// reads, with each event kept raw so that one malformed event is skipped
// rather than failing the whole transaction (and blocking the homeserver's
// queue with retries). To-device events, device lists and one-time key
// counts are accepted and ignored, as are unknown fields. Ephemeral events
// come under the stable key, or the MSC2409 one for older servers; one
// list is read, the stable one when present (homeservers that send both
// send the same events twice).
type rawTransaction struct {
	Events           []json.RawMessage `json:"events"`
	Ephemeral        []json.RawMessage `json:"ephemeral"`
	MSC2409Ephemeral []json.RawMessage `json:"de.sorunome.msc2409.ephemeral"`
}

func (t *rawTransaction) ephemeral() []json.RawMessage {
	if t.Ephemeral != nil {
		return t.Ephemeral
	}
	return t.MSC2409Ephemeral
}

// parseTransaction decodes a transaction body. A body that is not JSON or
// not a JSON object with arrays where arrays belong is an error wrapping
// ErrBadTransaction, with the errcode to answer.
func parseTransaction(body []byte) (*rawTransaction, mautrix.RespError, error) {
	if !json.Valid(body) {
		return nil, mautrix.MNotJSON, fmt.Errorf("%w: not JSON", ErrBadTransaction)
	}
	if b := bytes.TrimLeft(body, " \t\r\n"); len(b) == 0 || b[0] != '{' {
		return nil, mautrix.MBadJSON, fmt.Errorf("%w: not a JSON object", ErrBadTransaction)
	}
	var t rawTransaction
	if err := json.Unmarshal(body, &t); err != nil {
		return nil, mautrix.MBadJSON, fmt.Errorf("%w: %v", ErrBadTransaction, err)
	}
	return &t, mautrix.RespError{}, nil
}

// serveTransaction handles PUT /transactions/{txnId}. A gap of mautrix:
// AppService.PutTransaction answers 200 and marks the id processed before
// its events are handled (they go to a channel), and keeps the ids in
// memory only. Here a transaction is handled in order, one at a time (so
// presence stays ordered per user), before the answer: if a durable report
// (membership, opt-out) fails, the answer is 500 and the homeserver sends
// the transaction again. Ids are de-duplicated across restarts (txnLog).
func (s *Side) serveTransaction(w http.ResponseWriter, r *http.Request, txnID string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTxnBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			mautrix.MTooLarge.WithMessage("transaction too large").Write(w)
			return
		}
		mautrix.MBadJSON.WithMessage("cannot read body").Write(w)
		return
	}
	txn, code, err := parseTransaction(body)
	if err != nil {
		s.log.Warn("malformed transaction", "txn", txnID, "errcode", code.ErrCode, "err", err)
		code.WithMessage("%v", err).Write(w)
		return
	}
	ctx := r.Context()
	s.txnMu.Lock()
	defer s.txnMu.Unlock()
	seen, err := s.txns.seen(ctx, txnID)
	if err != nil {
		s.log.Error("transaction id lookup failed, homeserver will retry", "txn", txnID, "err", err)
		mautrix.MUnknown.WithStatus(http.StatusServiceUnavailable).WithMessage("try again").Write(w)
		return
	}
	if !seen {
		if err := s.processTxn(ctx, txn); err != nil {
			s.log.Error("transaction failed, homeserver will retry", "txn", txnID, "err", err)
			mautrix.MUnknown.WithMessage("transaction failed").Write(w)
			return
		}
		s.txns.done(txnID)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, "{}")
}

// processTxn handles the events of a transaction in order: memberships,
// commands and bot invites of the timeline, then ephemeral presence.
// Malformed and uninteresting events are skipped.
func (s *Side) processTxn(ctx context.Context, t *rawTransaction) error {
	for _, raw := range t.Events {
		var evt event.Event
		if json.Unmarshal(raw, &evt) != nil {
			continue
		}
		switch evt.Type.Type {
		case event.StateMember.Type:
			if m, ok := memberOf(&evt); ok {
				if err := s.onMember(ctx, m); err != nil {
					return err
				}
			}
		case event.EventMessage.Type:
			if c, ok := commandOf(&evt); ok {
				if err := s.runCommand(ctx, c); err != nil {
					return err
				}
			}
		}
	}
	for _, raw := range t.ephemeral() {
		var evt event.Event
		if json.Unmarshal(raw, &evt) != nil || evt.Type.Type != event.EphemeralEventPresence.Type {
			continue
		}
		s.ephemeralSeen.Store(true)
		s.onPresenceEvent(ctx, &evt)
	}
	return nil
}

// onMember handles an m.room.member event: an invite of the bot by a
// Matrix user is accepted; what concerns a ghost is reported.
func (s *Side) onMember(ctx context.Context, m memberEvent) error {
	if m.Target == s.bot.UserID {
		if m.Membership == event.MembershipInvite {
			if kind, _ := s.classify(m.Sender); kind == kindMatrix {
				s.queueBotJoin(m.RoomID)
			}
		}
		return nil
	}
	for _, r := range s.membershipReports(m) {
		if err := s.obs.MatrixMembership(ctx, r); err != nil {
			return err
		}
	}
	return nil
}
