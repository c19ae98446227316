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
//   - What was reported of each XMPP user: the core's presence bucket
//     too, read here at start (loadReported), so that the offline grace
//     reports offline the users Matrix was told are online even if this
//     process never gets a stream, and the re-probe after the first
//     connect reports only real changes.
//
// Rebuilt from the network, not stored: XMPP users' resources (the
// re-probe), the outbox (the announce sends every puppet's current
// presence), the rate limiters' buckets.

// loadReported seeds what was reported of XMPP users holding a pair with
// a puppet from the core's presence bucket (read, never written), at most
// Limits.TrackedUsers of them. It returns how many were seeded; a bucket
// that cannot be read is logged, and the component starts without them.
func (c *Component) loadReported(ctx context.Context) int {
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	prefix := mapping.NetworkXMPP.String() + "." // of bridge.PresenceKey
	keys, err := c.store.Presence.KeysMatching(lctx, prefix+"*")
	if err != nil {
		c.log.Warn("reading the XMPP users' last presence failed; starting without it", "err", err)
		return 0
	}
	n := 0
	for _, key := range keys {
		if ctx.Err() != nil || n >= c.cfg.Limits.TrackedUsers {
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
		if c.users.seed(bare, rec.Presence) {
			n++
		}
	}
	return n
}
