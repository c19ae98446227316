package xmppside

import (
	"context"
	"errors"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// What a new process of the component (a restart, or a standby taking
// over after the active one died) must know that the last one kept in
// memory, and where it finds it:
//
//   - Who may see each puppet, and so who gets its presence and its
//     unavailable (at every change, on shutdown): the From/Both contacts
//     of the subscriptions bucket, which the component writes. Puppets
//     send presence to nobody else: probe answers go to From contacts
//     (at the full JID that probed, which the unavailable to the bare JID
//     covers), and there is no directed presence to anyone outside the
//     bucket. The one contact a puppet may still be shown to without
//     From is one whose From was revoked just before the last process
//     died: the Directed bucket keeps them until they got unavailable
//     (directed.go). So the announce after the first connect and the
//     goodbye at shutdown reach everyone the last process showed a
//     puppet to.
//   - What each puppet shows: the core's presence bucket, read lazily
//     (currentPresence).
//   - Whom Matrix believes online among the XMPP users: the core's
//     presence bucket too, read here at start (loadBelieved), so that the
//     offline grace reports them offline even if this process never gets
//     a stream. After the first connect the re-probe reports everyone
//     again, as after any start (a restart of the Matrix side may have
//     shown every ghost offline meanwhile).
//
// Rebuilt from the network, not stored: XMPP users' resources (the
// re-probe), the outbox (the announce sends every puppet's current
// presence), the rate limiters' buckets.

// loadBelieved reads from the core's presence bucket (read, never
// written) the XMPP users holding a pair with a puppet whom Matrix was
// last told are online, at most Limits.TrackedUsers of them, with their
// presence. A bucket that cannot be read is logged, and the component
// starts without them.
func (c *Component) loadBelieved(ctx context.Context) map[mapping.BareJID]mapping.Presence {
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	prefix := mapping.NetworkXMPP.String() + "." // of bridge.PresenceKey
	keys, err := c.store.Presence.KeysMatching(lctx, prefix+"*")
	if err != nil {
		c.log.Warn("reading the XMPP users' last presence failed; starting without it", "err", err)
		return nil
	}
	out := make(map[mapping.BareJID]mapping.Presence)
	for _, key := range keys {
		if ctx.Err() != nil || len(out) >= c.cfg.Limits.TrackedUsers {
			break
		}
		raw, err := bridge.DecodeToken(key[len(prefix):])
		if err != nil {
			continue
		}
		bare, err := mapping.NewBareJID(raw)
		if err != nil || !c.subs.known(bare) {
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, storeTimeout)
		rec, _, err := c.store.Presence.Get(gctx, key)
		cancel()
		if errors.Is(err, bridge.ErrNotFound) {
			continue
		}
		if err != nil {
			c.log.Warn("reading an XMPP user's last presence failed", "user", bare, "err", err)
			continue
		}
		if rec.Presence.State.Online() {
			out[bare] = rec.Presence
		}
	}
	return out
}

// believedOffline reports offline, keeping their status, the users of
// believed (see loadBelieved), unless the component has a stream. It
// returns how many were reported.
func (c *Component) believedOffline(ctx context.Context, believed map[mapping.BareJID]mapping.Presence) int {
	n := 0
	for bare, p := range believed {
		if c.connected() || ctx.Err() != nil {
			return n
		}
		rctx, cancel := context.WithTimeout(ctx, reportTimeout)
		err := c.obs.XMPPPresence(rctx, bridge.XMPPPresence{User: bare, Presence: mapping.Presence{State: mapping.StateOffline, Status: p.Status}})
		cancel()
		if err != nil {
			c.log.Error("reporting presence failed", "user", bare, "err", err)
			continue
		}
		n++
	}
	return n
}
