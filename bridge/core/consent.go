package core

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// now is the clock of the links and settings the core writes.
func now() time.Time { return time.Now().UTC() }

// pair is one (Matrix user, XMPP user) pair and the core's view of it.
type pair struct {
	mxid mapping.UserID
	jid  mapping.BareJID
}

func (p pair) key() string { return bridge.PairKey(string(p.mxid), string(p.jid)) }

// toXMPP: the puppet of the Matrix user sends typ to the XMPP user.
func (c *Core) toXMPP(ctx context.Context, p pair, typ bridge.SubscriptionType) func() error {
	return func() error {
		return c.xmpp.SendSubscription(ctx, bridge.PuppetSubscription{Puppet: p.mxid, Contact: p.jid, Type: typ})
	}
}

// toMatrix: the ghost of the XMPP user acts towards the Matrix user.
func (c *Core) toMatrix(ctx context.Context, p pair, m bridge.Membership, roomID string) func() error {
	return func() error {
		return c.matrix.GhostMembership(ctx, bridge.GhostMembership{Ghost: p.jid, Peer: p.mxid, Membership: m, RoomID: roomID})
	}
}

func (c *Core) link(ctx context.Context, p pair) (bridge.Link, error) {
	l, _, err := c.store.Links.Get(ctx, p.key())
	if errors.Is(err, bridge.ErrNotFound) {
		return bridge.Link{}, nil
	}
	return l, err
}

// all runs steps in order and stops at the first error, so that a failed
// report is redelivered (every step is idempotent).
func all(steps ...func() error) error {
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// XMPPSubscription handles a subscription stanza from an XMPP user to the
// puppet of a Matrix user. The subscription policy is decided here, and
// only here.
func (c *Core) XMPPSubscription(ctx context.Context, r bridge.XMPPSubscription) error {
	p := pair{r.Puppet, r.Contact}
	if !c.xmppUser(p.jid) || !c.matrixUser(p.mxid) {
		c.refuse(slog.LevelInfo, ReasonAccess, "subscription refused by access rules", "xmpp_domain", p.jid.Domain())
		if r.Type == bridge.Subscribe {
			return c.toXMPP(ctx, p, bridge.Unsubscribed)()
		}
		return nil
	}
	l, err := c.link(ctx, p)
	if err != nil {
		return err
	}
	switch r.Type {
	case bridge.Subscribe:
		return c.xmppSubscribe(ctx, l, p)
	case bridge.Subscribed:
		if l.State == bridge.LinkAsked && l.Initiator == mapping.NetworkMatrix {
			// The XMPP user said yes to the Matrix user's invite.
			return all(
				c.setLink(ctx, p, func(l *bridge.Link) { l.State = bridge.LinkApproved }),
				c.toMatrix(ctx, p, bridge.MembershipJoin, l.RoomID),
				c.sendStoredPresence(ctx, p.jid),
			)
		}
		return nil
	case bridge.Unsubscribe, bridge.Unsubscribed:
		if l.State == "" {
			return nil
		}
		return c.revoke(ctx, l, p, mapping.NetworkXMPP)
	}
	return nil
}

func (c *Core) xmppSubscribe(ctx context.Context, l bridge.Link, p pair) error {
	switch {
	case c.cfg.Policy == PolicyReject:
		return c.toXMPP(ctx, p, bridge.Unsubscribed)()
	case l.State == bridge.LinkApproved:
		// Already agreed (a re-sent request, or the other direction).
		return c.toXMPP(ctx, p, bridge.Subscribed)()
	case l.State == bridge.LinkAsked && l.Initiator == mapping.NetworkXMPP:
		return nil // asked already: never prompt the Matrix user twice
	case l.State == bridge.LinkAsked && l.Initiator == mapping.NetworkMatrix:
		// The Matrix user invited first: this request is the answer.
		return all(
			c.setLink(ctx, p, func(l *bridge.Link) { l.State = bridge.LinkApproved }),
			c.toXMPP(ctx, p, bridge.Subscribed),
			c.toMatrix(ctx, p, bridge.MembershipJoin, l.RoomID),
			c.sendStoredPresence(ctx, p.jid),
		)
	}
	// A new request: it would create a link, register a ghost, open a room
	// and invite a Matrix user.
	if c.cfg.InviteLocalOnly && p.mxid.Server() != c.ns.HomeserverDomain {
		// A rule, not a Matrix user's choice that may change: say no.
		c.refuse(slog.LevelInfo, ReasonRemoteInvite, "subscription refused: ghosts invite only users of the local homeserver", "xmpp_domain", p.jid.Domain(), "matrix_server", p.mxid.Server())
		return c.toXMPP(ctx, p, bridge.Unsubscribed)()
	}
	if reason, ok := c.limits.allow(string(p.jid), p.jid.Domain(), c.clock()); !ok {
		// Left unanswered: "unsubscribed" would tell the XMPP user that
		// the Matrix user refused, which nobody did. Their server re-sends
		// the pending request at their next login, and a forging server
		// learns nothing and costs no stanza.
		c.refuse(slog.LevelWarn, reason, "subscription request over budget left unanswered", "xmpp_domain", p.jid.Domain())
		return nil
	}
	if c.cfg.Policy == PolicyAccept {
		return all(
			c.setLink(ctx, p, func(l *bridge.Link) { l.State, l.Initiator = bridge.LinkApproved, mapping.NetworkXMPP }),
			c.toXMPP(ctx, p, bridge.Subscribed),
			c.toXMPP(ctx, p, bridge.Subscribe),
			c.toMatrix(ctx, p, bridge.MembershipInvite, ""),
		)
	}
	c.log.Info("asking Matrix user for consent", "xmpp_domain", p.jid.Domain())
	return all(
		c.setLink(ctx, p, func(l *bridge.Link) { l.State, l.Initiator, l.RoomID = bridge.LinkAsked, mapping.NetworkXMPP, "" }),
		c.toMatrix(ctx, p, bridge.MembershipInvite, ""),
	)
}

// MatrixMembership handles a membership change between a Matrix user and
// a ghost.
func (c *Core) MatrixMembership(ctx context.Context, r bridge.MatrixMembership) error {
	p := pair{r.User, r.Ghost}
	if !c.matrixUser(p.mxid) || !c.xmppUser(p.jid) {
		c.refuse(slog.LevelInfo, ReasonAccess, "membership refused by access rules", "matrix_server", p.mxid.Server())
		if r.GhostChanged && r.Membership == bridge.MembershipInvite {
			return c.toMatrix(ctx, p, bridge.MembershipReject, r.RoomID)()
		}
		return nil
	}
	l, err := c.link(ctx, p)
	if err != nil {
		return err
	}
	active := live(l.State)
	switch {
	case r.GhostChanged && r.Membership == bridge.MembershipInvite:
		return c.matrixInvite(ctx, l, p, r.RoomID)
	case r.GhostChanged && r.Membership.Gone():
		if !r.BySelf && l.State != "" {
			// Kicked or banned by the Matrix user: that revokes.
			return c.revoke(ctx, l, p, mapping.NetworkMatrix)
		}
	case !r.GhostChanged && r.Membership == bridge.MembershipInvite:
		if !r.BySelf && active && l.RoomID != r.RoomID {
			// The ghost opened a direct chat: remember its room.
			return c.setLink(ctx, p, func(l *bridge.Link) { l.RoomID = r.RoomID })()
		}
	case !r.GhostChanged && r.Membership == bridge.MembershipJoin:
		if l.State == bridge.LinkAsked && l.Initiator == mapping.NetworkXMPP && (l.RoomID == "" || l.RoomID == r.RoomID) {
			return all(
				c.setLink(ctx, p, func(l *bridge.Link) { l.State, l.RoomID = bridge.LinkApproved, r.RoomID }),
				c.toXMPP(ctx, p, bridge.Subscribed),
				c.toXMPP(ctx, p, bridge.Subscribe),
				c.sendStoredPresence(ctx, p.jid),
			)
		}
	case !r.GhostChanged && r.Membership.Gone():
		if l.State != "" {
			if l.RoomID == "" {
				l.RoomID = r.RoomID
			}
			return c.revoke(ctx, l, p, mapping.NetworkMatrix)
		}
	}
	return nil
}

func (c *Core) matrixInvite(ctx context.Context, l bridge.Link, p pair, roomID string) error {
	switch {
	case l.State == bridge.LinkApproved:
		return all(
			c.setLink(ctx, p, func(l *bridge.Link) { l.RoomID = roomID }),
			c.toMatrix(ctx, p, bridge.MembershipJoin, roomID),
			c.sendStoredPresence(ctx, p.jid),
		)
	case l.State == bridge.LinkAsked && l.Initiator == mapping.NetworkXMPP:
		// Both asked: the invite is the Matrix user's yes.
		return all(
			c.setLink(ctx, p, func(l *bridge.Link) { l.State, l.RoomID = bridge.LinkApproved, roomID }),
			c.toMatrix(ctx, p, bridge.MembershipJoin, roomID),
			c.toXMPP(ctx, p, bridge.Subscribed),
			c.toXMPP(ctx, p, bridge.Subscribe),
		)
	}
	// The XMPP user decides: the puppet asks. A new request spends the
	// Matrix user's budget (and their server's, unless it is the local
	// homeserver), the mirror of XMPP requests: invites from anywhere on
	// the federation must not become a flood of subscription requests.
	if l.State == "" {
		if reason, ok := c.matrixLimits.allow(string(p.mxid), p.mxid.Server(), c.clock()); !ok {
			// Declined rather than left pending: nobody would ever answer
			// it, and the Matrix user may invite again later.
			c.refuse(slog.LevelWarn, reason, "invite of a ghost over budget declined", "matrix_server", p.mxid.Server())
			return c.toMatrix(ctx, p, bridge.MembershipReject, roomID)()
		}
	}
	return all(
		c.setLink(ctx, p, func(l *bridge.Link) { l.State, l.Initiator, l.RoomID = bridge.LinkAsked, mapping.NetworkMatrix, roomID }),
		c.toXMPP(ctx, p, bridge.Subscribe),
	)
}

// revoke ends the link from either side: both XMPP directions close, the
// ghost goes offline (unless others still see it) and leaves the room, so
// each side sees the other go offline; then the link is deleted. The
// state is written first: from then on nothing of the pair's people is
// shown on its account, and, if they hold no other link, the core forgets
// them. A link found ended (a step failed, the report came again) is
// finished the same way: every step is idempotent.
//
// Ended links are deleted, not kept: both networks let a person who was
// refused ask again (and rate-limit them, as core.limits does here), so
// a kept denial would change nothing a user sees, except that it could
// never be taken back; and it would be state that grows with every
// refusal.
func (c *Core) revoke(ctx context.Context, l bridge.Link, p pair, by mapping.Network) error {
	state := l.State
	switch l.State {
	case bridge.LinkAsked:
		state = bridge.LinkDenied
	case bridge.LinkApproved:
		state = bridge.LinkRevoked
	}
	c.log.Info("link ended", "by", by, "state", state)
	// Whether the ghost still shows presence to someone else is known
	// once this link no longer counts.
	offline := func() *mapping.Presence {
		if c.approvedLinks(p.jid) > 0 {
			return nil
		}
		return &mapping.Presence{State: mapping.StateOffline}
	}
	return all(
		c.setLink(ctx, p, func(l *bridge.Link) { l.State = state }),
		c.toXMPP(ctx, p, bridge.Unsubscribed),
		c.toXMPP(ctx, p, bridge.Unsubscribe),
		func() error {
			before := offline()
			switch {
			case l.RoomID != "":
				// The ghost shows offline before it leaves: once it has
				// left, the Matrix user would no longer see it change.
				return c.matrix.GhostMembership(ctx, bridge.GhostMembership{Ghost: p.jid, Peer: p.mxid, Membership: bridge.MembershipLeave, RoomID: l.RoomID, Before: before})
			case before != nil:
				return c.matrix.ShowGhost(ctx, bridge.GhostPresence{User: p.jid, Presence: *before})
			}
			return nil
		},
		c.deleteLink(ctx, p),
	)
}

// sendStoredPresence re-sends the last known presence of an XMPP user to
// their ghost, so that a newly linked Matrix user sees it at once. It is
// known if it was reported while the XMPP user held a live link: this
// one, since it was asked, or another.
func (c *Core) sendStoredPresence(ctx context.Context, jid mapping.BareJID) func() error {
	return func() error {
		key := bridge.PresenceKey(mapping.NetworkXMPP, string(jid))
		if c.optedOut(key) {
			return nil
		}
		rec, ok := c.latest(ctx, key)
		if !ok {
			return nil
		}
		return c.matrix.ShowGhost(ctx, bridge.GhostPresence{User: jid, Presence: rec.Presence})
	}
}
