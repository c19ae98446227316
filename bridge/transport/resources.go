package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// ResourcesSubject is where the XMPP side answers [bridge.ResourceLister]:
// a JSON list of bare JIDs in, a JSON map of JID → resources out.
const ResourcesSubject = requestSubjectRoot + "xmpp.resources"

var _ bridge.ResourceLister = (*Publisher)(nil)

// XMPPResources asks the XMPP side, through the bus, for the resources of
// users. No side listening is [bridge.ErrDisconnected].
func (p *Publisher) XMPPResources(ctx context.Context, users []mapping.BareJID) (map[mapping.BareJID][]mapping.Resource, error) {
	data, err := json.Marshal(users)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	msg, err := p.bus.Conn().RequestWithContext(ctx, ResourcesSubject, data)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("transport: xmpp side: %w", bridge.ErrDisconnected)
	}
	if err != nil {
		return nil, fmt.Errorf("transport: resources: %w", err)
	}
	if code := msg.Header.Get(errorHeader); code != "" {
		return nil, fmt.Errorf("transport: xmpp side: %s", msg.Data)
	}
	var out map[mapping.BareJID][]mapping.Resource
	if err := json.Unmarshal(msg.Data, &out); err != nil {
		return nil, fmt.Errorf("transport: resources: %w", err)
	}
	return out, nil
}

// ServeResources returns the server that answers resource requests with
// the XMPP side's lister.
func ServeResources(bus *bridge.Bus, l bridge.ResourceLister, log *slog.Logger) *Server {
	s := newServer(bus, log)
	s.parts = append(s.parts, func(ctx context.Context, ready func()) error {
		sub, err := bus.Conn().Subscribe(ResourcesSubject, func(m *nats.Msg) {
			reply := nats.NewMsg(m.Reply)
			var users []mapping.BareJID
			var out map[mapping.BareJID][]mapping.Resource
			err := json.Unmarshal(m.Data, &users)
			if err == nil {
				out, err = l.XMPPResources(ctx, users)
			}
			if err == nil {
				reply.Data, err = json.Marshal(out)
			}
			if err != nil {
				reply.Header.Set(errorHeader, "failed")
				reply.Data = []byte(err.Error())
			}
			if m.Reply != "" {
				if err := m.RespondMsg(reply); err != nil {
					s.log.Warn("answering a resources request failed", "err", err)
				}
			}
		})
		if err != nil {
			return fmt.Errorf("transport: subscribe %s: %w", ResourcesSubject, err)
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
