package matrixside

import (
	"context"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// ShowGhost makes the ghost of c.User show c.Presence. It never blocks:
// it only records the wish, and the outbox sends the latest one. Unknown
// presence leaves the ghost as it is (unknown must never look offline);
// a user without a ghost is logged and dropped.
func (s *Side) ShowGhost(_ context.Context, c bridge.GhostPresence) error {
	s.showGhost(c.User, c.Presence, c.ObservedAt, time.Now())
	return nil
}

// showGhost translates p, observed on XMPP at observedAt (zero: unknown),
// for the ghost of jid and hands it to the outbox. It returns the ghost,
// the version of its state (zero if nothing was asked for), and whether a
// PUT is needed for it.
func (s *Side) showGhost(jid mapping.BareJID, p mapping.Presence, observedAt, now time.Time) (id.UserID, uint64, bool) {
	if p.State == mapping.StateUnknown || p.State == mapping.StateUnset {
		return "", 0, false
	}
	ghost, err := s.ghostOf(jid)
	if err != nil {
		s.log.Warn("no ghost for user", "user", jid, "err", err)
		return "", 0, false
	}
	version, pending := s.out.set(ghost, jid, s.wireOf(p, now), observedAt)
	return ghost, version, pending
}

// wireOf is what a ghost is asked to show for p.
func (s *Side) wireOf(p mapping.Presence, now time.Time) wireState {
	m := s.tr.ToMatrix(p, now)
	return wireState{Presence: event.Presence(m.Presence.String()), Status: mapping.TruncateStatus(m.StatusMsg, s.cfg.MaxStatusLength)}
}

// ghostOf returns the ghost of jid.
func (s *Side) ghostOf(jid mapping.BareJID) (id.UserID, error) {
	g, err := s.ns.GhostMXID(jid)
	return id.UserID(g), err
}

// sendPresence is the outbox's send function: unless the ghost's record
// says the homeserver shows w already (see sideState), register the ghost
// if this process has not yet, then PUT its presence. A 403 may mean the
// ghost was deactivated or the homeserver lost it: register again, once.
func (s *Side) sendPresence(ctx context.Context, g *ghostOut, w wireState, force bool) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	return s.putShown(ctx, g, w, force, func() error {
		cli, err := s.ghosts.ensureWith(ctx, g.ghost, g.jid, g.cli)
		if err != nil {
			return err
		}
		if g.cli == nil {
			g.cli, g.url = cli, presenceURL(cli)
		}
		err = putPresence(ctx, g.cli, g.url, w)
		if httpStatus(err) == 403 {
			s.log.Debug("ghost request forbidden, registering again", "ghost", g.ghost)
			if err = s.ghosts.reregister(ctx, g.cli); err == nil {
				err = putPresence(ctx, g.cli, g.url, w)
			}
		}
		return err
	})
}
