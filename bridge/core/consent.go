package core

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// toXMPP asks the XMPP side: the puppet of mxid sends typ to jid.
func (c *Core) toXMPP(ctx context.Context, mxid, jid string, typ bridge.SubscriptionType) error {
	return c.bus.Publish(ctx, bridge.Out, &bridge.Event{Kind: bridge.KindSubscription, Origin: mapping.NetworkMatrix, User: mxid, Peer: jid, Subscription: &bridge.SubscriptionPayload{Type: typ}})
}

// toMatrix asks the Matrix side: the ghost of jid does membership towards mxid.
func (c *Core) toMatrix(ctx context.Context, jid, mxid, membership, roomID string) error {
	return c.bus.Publish(ctx, bridge.Out, &bridge.Event{Kind: bridge.KindMembership, Origin: mapping.NetworkXMPP, User: jid, Peer: mxid, Membership: &bridge.MembershipPayload{Membership: membership, RoomID: roomID, IsDirect: true}})
}

// setLink changes the link of (mxid, jid) and returns the one before.
func (c *Core) setLink(ctx context.Context, mxid, jid string, change func(*bridge.Link)) (before bridge.Link, err error) {
	_, err = c.bus.Store().Links.Update(ctx, bridge.PairKey(mxid, jid), func(cur bridge.Link, _ bool) (bridge.Link, bool, error) {
		before = cur
		cur.MatrixUser, cur.XMPPUser = mxid, jid
		change(&cur)
		cur.UpdatedAt = time.Now().UTC()
		return cur, true, nil
	})
	return before, err
}

func (c *Core) link(ctx context.Context, mxid, jid string) (bridge.Link, error) {
	l, _, err := c.bus.Store().Links.Get(ctx, bridge.PairKey(mxid, jid))
	if errors.Is(err, bridge.ErrNotFound) {
		return bridge.Link{}, nil
	}
	return l, err
}

// all runs steps in order and stops at the first error, so that a failed
// event is redelivered (every step is idempotent).
func all(steps ...func() error) error {
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// onSubscription handles a subscription stanza from an XMPP user (User) to
// the puppet of a Matrix user (Peer).
func (c *Core) onSubscription(ctx context.Context, ev *bridge.Event) error {
	jid, mxid, typ := ev.User, ev.Peer, ev.Subscription.Type
	if !c.bridged(mapping.NetworkXMPP, jid) || !c.bridged(mapping.NetworkMatrix, mxid) {
		c.log.Info("subscription refused by access rules", "xmpp_domain", domainOf(jid))
		if typ == bridge.Subscribe {
			return c.toXMPP(ctx, mxid, jid, bridge.Unsubscribed)
		}
		return nil
	}
	l, err := c.link(ctx, mxid, jid)
	if err != nil {
		return err
	}
	switch typ {
	case bridge.Subscribe:
		return c.xmppSubscribe(ctx, l, mxid, jid)
	case bridge.Subscribed:
		if l.State == bridge.LinkAsked && l.Initiator == mapping.NetworkMatrix {
			// The XMPP user said yes to the Matrix user's invite.
			return all(
				func() error {
					_, err := c.setLink(ctx, mxid, jid, func(l *bridge.Link) { l.State = bridge.LinkApproved })
					return err
				},
				func() error { return c.toMatrix(ctx, jid, mxid, "join", l.RoomID) },
				func() error { return c.sendStoredPresence(ctx, mapping.NetworkXMPP, jid) },
			)
		}
		return nil
	case bridge.Unsubscribe, bridge.Unsubscribed:
		if l.State != bridge.LinkAsked && l.State != bridge.LinkApproved {
			return nil
		}
		return c.revoke(ctx, l, mxid, jid, mapping.NetworkXMPP)
	}
	return nil
}

func (c *Core) xmppSubscribe(ctx context.Context, l bridge.Link, mxid, jid string) error {
	switch {
	case c.cfg.Policy == PolicyReject:
		return c.toXMPP(ctx, mxid, jid, bridge.Unsubscribed)
	case l.State == bridge.LinkApproved:
		// Already agreed (a re-sent request, or the other direction).
		return c.toXMPP(ctx, mxid, jid, bridge.Subscribed)
	case l.State == bridge.LinkAsked && l.Initiator == mapping.NetworkXMPP:
		return nil // asked already: never prompt the Matrix user twice
	case l.State == bridge.LinkAsked && l.Initiator == mapping.NetworkMatrix:
		// The Matrix user invited first: this request is the answer.
		return all(
			func() error {
				_, err := c.setLink(ctx, mxid, jid, func(l *bridge.Link) { l.State = bridge.LinkApproved })
				return err
			},
			func() error { return c.toXMPP(ctx, mxid, jid, bridge.Subscribed) },
			func() error { return c.toMatrix(ctx, jid, mxid, "join", l.RoomID) },
			func() error { return c.sendStoredPresence(ctx, mapping.NetworkXMPP, jid) },
		)
	case c.cfg.Policy == PolicyAccept:
		return all(
			func() error {
				_, err := c.setLink(ctx, mxid, jid, func(l *bridge.Link) { l.State, l.Initiator = bridge.LinkApproved, mapping.NetworkXMPP })
				return err
			},
			func() error { return c.toXMPP(ctx, mxid, jid, bridge.Subscribed) },
			func() error { return c.toXMPP(ctx, mxid, jid, bridge.Subscribe) },
			func() error { return c.toMatrix(ctx, jid, mxid, "invite", "") },
		)
	default: // ask
		c.log.Info("asking Matrix user for consent", "xmpp_domain", domainOf(jid))
		return all(
			func() error {
				_, err := c.setLink(ctx, mxid, jid, func(l *bridge.Link) { l.State, l.Initiator, l.RoomID = bridge.LinkAsked, mapping.NetworkXMPP, "" })
				return err
			},
			func() error { return c.toMatrix(ctx, jid, mxid, "invite", "") },
		)
	}
}

// onMembership handles a Matrix membership change between a Matrix user
// (User) and a ghost (Peer, as the ghost's JID).
func (c *Core) onMembership(ctx context.Context, ev *bridge.Event) error {
	mxid, jid, m := ev.User, ev.Peer, ev.Membership
	ghostChanged := m.Member == jid
	if !c.bridged(mapping.NetworkMatrix, mxid) || !c.bridged(mapping.NetworkXMPP, jid) {
		if ghostChanged && m.Membership == "invite" {
			return c.toMatrix(ctx, jid, mxid, "reject", m.RoomID)
		}
		return nil
	}
	l, err := c.link(ctx, mxid, jid)
	if err != nil {
		return err
	}
	switch {
	case ghostChanged && m.Membership == "invite":
		return c.matrixInvite(ctx, l, mxid, jid, m.RoomID)
	case ghostChanged && (m.Membership == "leave" || m.Membership == "ban"):
		if m.Sender == "" || m.Sender == mxid {
			// Kicked or banned by the Matrix user: that revokes.
			if l.State == bridge.LinkApproved || l.State == bridge.LinkAsked {
				return c.revoke(ctx, l, mxid, jid, mapping.NetworkMatrix)
			}
		}
		return nil
	case !ghostChanged && m.Membership == "join":
		if l.State == bridge.LinkAsked && l.Initiator == mapping.NetworkXMPP && (l.RoomID == "" || l.RoomID == m.RoomID) {
			return all(
				func() error {
					_, err := c.setLink(ctx, mxid, jid, func(l *bridge.Link) { l.State, l.RoomID = bridge.LinkApproved, m.RoomID })
					return err
				},
				func() error { return c.toXMPP(ctx, mxid, jid, bridge.Subscribed) },
				func() error { return c.toXMPP(ctx, mxid, jid, bridge.Subscribe) },
				func() error { return c.sendStoredPresence(ctx, mapping.NetworkXMPP, jid) },
			)
		}
		return nil
	case !ghostChanged && (m.Membership == "leave" || m.Membership == "ban" || m.Membership == "reject"):
		if l.State == bridge.LinkApproved || l.State == bridge.LinkAsked {
			if l.RoomID == "" {
				l.RoomID = m.RoomID
			}
			return c.revoke(ctx, l, mxid, jid, mapping.NetworkMatrix)
		}
	}
	return nil
}

func (c *Core) matrixInvite(ctx context.Context, l bridge.Link, mxid, jid, roomID string) error {
	switch l.State {
	case bridge.LinkApproved:
		return all(
			func() error {
				_, err := c.setLink(ctx, mxid, jid, func(l *bridge.Link) { l.RoomID = roomID })
				return err
			},
			func() error { return c.toMatrix(ctx, jid, mxid, "join", roomID) },
			func() error { return c.sendStoredPresence(ctx, mapping.NetworkXMPP, jid) },
		)
	case bridge.LinkAsked:
		if l.Initiator == mapping.NetworkXMPP {
			// Both asked: the invite is the Matrix user's yes.
			return all(
				func() error {
					_, err := c.setLink(ctx, mxid, jid, func(l *bridge.Link) { l.State, l.RoomID = bridge.LinkApproved, roomID })
					return err
				},
				func() error { return c.toMatrix(ctx, jid, mxid, "join", roomID) },
				func() error { return c.toXMPP(ctx, mxid, jid, bridge.Subscribed) },
				func() error { return c.toXMPP(ctx, mxid, jid, bridge.Subscribe) },
			)
		}
	}
	// The XMPP user decides: the puppet asks.
	return all(
		func() error {
			_, err := c.setLink(ctx, mxid, jid, func(l *bridge.Link) { l.State, l.Initiator, l.RoomID = bridge.LinkAsked, mapping.NetworkMatrix, roomID })
			return err
		},
		func() error { return c.toXMPP(ctx, mxid, jid, bridge.Subscribe) },
	)
}

// revoke ends the link from either side: both XMPP directions close, the
// ghost leaves the room, and each side sees the other go offline.
func (c *Core) revoke(ctx context.Context, l bridge.Link, mxid, jid string, by mapping.Network) error {
	state := bridge.LinkRevoked
	if l.State == bridge.LinkAsked {
		state = bridge.LinkDenied
	}
	c.log.Info("link ended", "by", by, "state", state)
	steps := []func() error{
		func() error {
			_, err := c.setLink(ctx, mxid, jid, func(l *bridge.Link) { l.State = state })
			return err
		},
		func() error { return c.toXMPP(ctx, mxid, jid, bridge.Unsubscribed) },
		func() error { return c.toXMPP(ctx, mxid, jid, bridge.Unsubscribe) },
	}
	if !c.hasOtherLinks(ctx, mxid, jid) {
		steps = append(steps, func() error {
			return c.bus.Publish(ctx, bridge.Out, c.presenceOut(mapping.NetworkXMPP, jid, mapping.Presence{State: mapping.StateOffline}))
		})
	}
	if l.RoomID != "" {
		steps = append(steps, func() error { return c.toMatrix(ctx, jid, mxid, "leave", l.RoomID) })
	}
	return all(steps...)
}

// hasOtherLinks reports whether jid's ghost is linked with anyone but mxid,
// so that taking it offline would hide it from them too.
func (c *Core) hasOtherLinks(ctx context.Context, mxid, jid string) bool {
	suffix := "." + bridge.EncodeToken(jid)
	self := bridge.PairKey(mxid, jid)
	found := false
	_ = c.bus.Store().Links.Range(ctx, func(key string, l bridge.Link) error {
		if key != self && strings.HasSuffix(key, suffix) && l.State == bridge.LinkApproved {
			found = true
		}
		return nil
	})
	return found
}

// sendStoredPresence re-sends the last known presence of user to the other
// side, so a newly linked person sees it at once.
func (c *Core) sendStoredPresence(ctx context.Context, net mapping.Network, user string) error {
	if c.optedOut(net, user) {
		return nil
	}
	rec, ok := c.latest(ctx, net, user)
	if !ok {
		return nil
	}
	return c.bus.Publish(ctx, bridge.Out, c.presenceOut(net, user, rec.Presence))
}
