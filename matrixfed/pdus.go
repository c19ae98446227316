package matrixfed

import (
	"context"
	stdjson "encoding/json"
	"encoding/json/v2"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// Room versions whose events the gateway can sign and name: v3 and later
// (v1 and v2 carry their event IDs inside the event, a format
// federation/pdu keeps apart).
var supportedVersions = []id.RoomVersion{"3", "4", "5", "6", "7", "8", "9", "10", "11"}

func supported(v id.RoomVersion) bool {
	for _, s := range supportedVersions {
		if s == v {
			return true
		}
	}
	return false
}

// parsePDU decodes an event with federation/pdu (encoding/json/v2, which
// keeps unknown fields so that hashes and signatures stay right).
func parsePDU(raw []byte) (*pdu.PDU, error) {
	var p pdu.PDU
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

func marshalPDU(p *pdu.PDU) (stdjson.RawMessage, error) {
	b, err := json.Marshal(p)
	return stdjson.RawMessage(b), err
}

// memberContent is what the gateway reads of an m.room.member event.
type memberContent struct {
	Membership string `json:"membership"`
	IsDirect   bool   `json:"is_direct,omitempty"`
}

func memberOf(p *pdu.PDU) (memberContent, bool) {
	if p.Type != "m.room.member" || p.StateKey == nil || *p.StateKey == "" {
		return memberContent{}, false
	}
	var c memberContent
	if err := json.Unmarshal(p.Content, &c); err != nil || c.Membership == "" {
		return memberContent{}, false
	}
	return c, true
}

// signEvent fills in the timestamp of an event template from make_join or
// make_leave, signs it and returns it with its event ID.
func (g *Gateway) signEvent(raw []byte, version id.RoomVersion) (stdjson.RawMessage, id.EventID, error) {
	p, err := parsePDU(raw)
	if err != nil {
		return nil, "", fmt.Errorf("matrixfed: event template: %w", err)
	}
	p.OriginServerTS = time.Now().UnixMilli()
	p.Hashes, p.Signatures = nil, nil
	if err := p.Sign(version, g.cfg.ServerName, g.key.ID, g.key.Priv); err != nil {
		return nil, "", fmt.Errorf("matrixfed: sign: %w", err)
	}
	evID, err := p.GetEventID(version)
	if err != nil {
		return nil, "", fmt.Errorf("matrixfed: event id: %w", err)
	}
	out, err := marshalPDU(p)
	return out, evID, err
}

// verifyEvent checks that server signed the event, with a key fetched
// through ServerAuth's cache.
func (g *Gateway) verifyEvent(ctx context.Context, p *pdu.PDU, version id.RoomVersion, server string) error {
	return p.VerifySignature(version, server, func(serverName string, keyID id.KeyID, _ time.Time) (id.SigningKey, time.Time, error) {
		resp, err := g.auth.GetKeysWithCache(ctx, serverName, keyID, 5*time.Minute)
		if err != nil {
			return "", time.Time{}, err
		}
		k, ok := resp.VerifyKeys[keyID]
		if !ok {
			return "", time.Time{}, errors.New("matrixfed: unknown key")
		}
		return k.Key, resp.ValidUntilTS.Time, nil
	})
}
