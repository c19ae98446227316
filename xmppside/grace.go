package xmppside

import (
	"context"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// setLink tells the grace timer whether the component has a stream. Only
// serve calls it, so keeping the latest value in the one-slot channel is
// enough and never blocks.
func (c *Component) setLink(up bool) {
	for {
		select {
		case c.link <- up:
			return
		default:
		}
		select {
		case <-c.link:
		default:
		}
	}
}

// graceLoop reports every XMPP user last reported online as offline once
// the component has been without a stream for Config.OfflineGrace,
// counted from the start too: until the first connect, the users Matrix
// believes online by the core's bucket (believed, see loadBelieved), since
// a process taking over from one that died has reported nobody yet. The
// server keeps nothing for a component that lost its stream and says
// nothing when it comes back, so without this their ghosts would show the
// last presence forever. After the reconnect the probes bring the real
// presences back. It returns when ctx ends.
func (c *Component) graceLoop(ctx context.Context, believed map[mapping.BareJID]mapping.Presence) {
	timer := time.NewTimer(c.cfg.OfflineGrace)
	fire := timer.C
	defer func() { timer.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case up := <-c.link:
			switch {
			case up:
				timer.Stop()
				fire = nil
				believed = nil // the re-probe reports everyone
			case !up && fire == nil:
				timer = time.NewTimer(c.cfg.OfflineGrace)
				fire = timer.C
			}
		case <-fire:
			fire = nil
			n := c.users.allOffline(ctx, c.connected, func(ctx context.Context, bare mapping.BareJID, p mapping.Presence) error {
				rctx, cancel := context.WithTimeout(ctx, reportTimeout)
				defer cancel()
				err := c.obs.XMPPPresence(rctx, bridge.XMPPPresence{User: bare, Presence: p})
				if err != nil {
					c.log.Error("reporting presence failed", "user", bare, "err", err)
				}
				return err
			})
			n += c.believedOffline(ctx, believed)
			believed = nil
			c.log.Warn("no xmpp stream for the offline grace; XMPP users reported offline", "grace", c.cfg.OfflineGrace, "users", n)
		}
	}
}
