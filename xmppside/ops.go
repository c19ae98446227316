package xmppside

import (
	"context"
	"fmt"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// The operations capabilities (bridge/ports_ops.go): a presence probe on
// request, and whether the stream is up for the health check.

var _ bridge.PresenceRequester = (*Component)(nil)

// Healthy reports whether the component has a stream to the XMPP server
// ([ErrNotConnected] if not).
func (c *Component) Healthy() error {
	if !c.connected() {
		return ErrNotConnected
	}
	return nil
}

// RequestPresence probes an XMPP user from a puppet subscribed to their
// presence (RFC 6121 To or Both); the answer comes back as ordinary
// presence and is reported if it changed. It blocks for one stanza write.
func (c *Component) RequestPresence(ctx context.Context, r bridge.PresenceRequest) error {
	contact, err := mapping.NewBareJID(r.User)
	if err != nil {
		return fmt.Errorf("%w: %v", mapping.ErrUnknownValue, err)
	}
	var puppet mapping.BareJID
	for _, mxid := range c.subs.puppets() {
		if c.subs.get(mxid, contact).To {
			if puppet, err = c.ns.PuppetJID(mxid); err == nil {
				break
			}
		}
	}
	if puppet == "" {
		return bridge.ErrNoRoute
	}
	sess, _, release := c.acquireSession()
	defer release()
	if sess == nil {
		return bridge.ErrDisconnected
	}
	probe := stanza.Presence{Header: stanza.Header{From: string(puppet)}, Type: stanza.Probe}
	if err := c.writeFanOut(ctx, sess, &probe, []mapping.BareJID{contact}); err != nil {
		return fmt.Errorf("xmppside: probe: %w", err)
	}
	return nil
}

// StreamConnects counts the streams established to the XMPP server since
// start: one more than the reconnects.
func (c *Component) StreamConnects() int64 { return c.connects.Load() }

var _ bridge.ResourceLister = (*Component)(nil)

// XMPPResources returns the resources the component holds for users.
func (c *Component) XMPPResources(_ context.Context, users []mapping.BareJID) (map[mapping.BareJID][]mapping.Resource, error) {
	out := make(map[mapping.BareJID][]mapping.Resource, len(users))
	c.users.mu.Lock()
	defer c.users.mu.Unlock()
	for _, u := range users {
		if e := c.users.m[u]; e != nil {
			if l := e.res.List(); len(l) > 0 {
				out[u] = l
			}
		}
	}
	return out, nil
}
