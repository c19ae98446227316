package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Presence requests ([bridge.PresenceRequester]) are a request and reply
// on core NATS, not events: the caller wants to know at once whether the
// side could ask. The reply is empty on success, else carries the
// Pb-Error header: "disconnected", "no-route", "invalid" or "failed".
const (
	requestSubjectRoot = "pb.v1.req."
	errorHeader        = "Pb-Error"
	// requestTimeout bounds a request whose context has no deadline.
	requestTimeout = 10 * time.Second
)

// RequestSubject is the subject on which the side of net takes presence
// requests.
func RequestSubject(net mapping.Network) string {
	return requestSubjectRoot + net.String() + ".presence"
}

var _ bridge.PresenceRequester = (*Publisher)(nil)

// RequestPresence asks the side of r.Network, through the bus, for the
// fresh presence of r.User. No side listening is [bridge.ErrDisconnected].
func (p *Publisher) RequestPresence(ctx context.Context, r bridge.PresenceRequest) error {
	if r.Network != mapping.NetworkXMPP && r.Network != mapping.NetworkMatrix {
		return fmt.Errorf("transport: presence request: %w: network %v", mapping.ErrUnknownValue, r.Network)
	}
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	msg, err := p.bus.Conn().RequestWithContext(ctx, RequestSubject(r.Network), data)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("transport: %v side: %w", r.Network, bridge.ErrDisconnected)
	}
	if err != nil {
		return fmt.Errorf("transport: presence request: %w", err)
	}
	switch code := msg.Header.Get(errorHeader); code {
	case "":
		return nil
	case "disconnected":
		return fmt.Errorf("transport: %v side: %w", r.Network, bridge.ErrDisconnected)
	case "no-route":
		return fmt.Errorf("transport: %v side: %w", r.Network, bridge.ErrNoRoute)
	case "invalid":
		return fmt.Errorf("transport: %v side: %w: %s", r.Network, mapping.ErrUnknownValue, msg.Data)
	default:
		return fmt.Errorf("transport: %v side: %s", r.Network, msg.Data)
	}
}

// ServeRequests returns the server that delivers presence requests for
// net to a side's requester.
func ServeRequests(bus *bridge.Bus, net mapping.Network, rq bridge.PresenceRequester, log *slog.Logger) *Server {
	s := newServer(bus, log)
	s.parts = append(s.parts, func(ctx context.Context, ready func()) error {
		sub, err := bus.Conn().Subscribe(RequestSubject(net), func(m *nats.Msg) {
			reply := nats.NewMsg(m.Reply)
			var r bridge.PresenceRequest
			if err := json.Unmarshal(m.Data, &r); err != nil || r.Network != net {
				reply.Header.Set(errorHeader, "invalid")
				reply.Data = []byte("malformed request")
			} else if err := rq.RequestPresence(ctx, r); err != nil {
				switch {
				case errors.Is(err, bridge.ErrDisconnected):
					reply.Header.Set(errorHeader, "disconnected")
				case errors.Is(err, bridge.ErrNoRoute):
					reply.Header.Set(errorHeader, "no-route")
				case errors.Is(err, mapping.ErrUnknownValue):
					reply.Header.Set(errorHeader, "invalid")
				default:
					reply.Header.Set(errorHeader, "failed")
				}
				reply.Data = []byte(err.Error())
			}
			if m.Reply != "" {
				if err := m.RespondMsg(reply); err != nil {
					s.log.Warn("answering a presence request failed", "err", err)
				}
			}
		})
		if err != nil {
			return fmt.Errorf("transport: subscribe %s: %w", RequestSubject(net), err)
		}
		if err := bus.Conn().Flush(); err != nil {
			_ = sub.Unsubscribe()
			return fmt.Errorf("transport: subscribe: %w", err)
		}
		ready()
		<-ctx.Done()
		_ = sub.Drain()
		return nil
	})
	return s
}
