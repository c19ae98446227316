package matrixside

import (
	"context"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// onPresenceOut handles a command of the core to show an XMPP user's
// presence on their ghost. It only records the wish: the outbox sends it.
func (s *Side) onPresenceOut(_ context.Context, ev *bridge.Event) {
	if ev.Kind != bridge.KindPresence || ev.Presence == nil || ev.Origin != mapping.NetworkXMPP {
		s.log.Warn("ignoring unexpected presence command", "origin", ev.Origin, "user", ev.User, "id", ev.ID)
		return
	}
	s.setGhostPresence(ev.User, *ev.Presence, time.Now())
}

// setGhostPresence translates p for the ghost of jid and queues it.
func (s *Side) setGhostPresence(jid string, p mapping.Presence, now time.Time) {
	if p.State == mapping.StateUnknown {
		// Unknown must never look offline; leave the ghost as it is.
		return
	}
	mxidTyped, err := s.ns.GhostMXID(mapping.BareJID(jid))
	mxid := string(mxidTyped)
	if err != nil {
		s.log.Warn("no ghost for user", "user", jid, "err", err)
		return
	}
	m := s.tr.ToMatrix(p, now)
	local := mxid[1 : len(mxid)-len(s.ns.HomeserverDomain)-1]
	s.out.set(mxid, local, jid, wireState{Presence: m.Presence.String(), Status: truncateUTF8(m.StatusMsg, s.cfg.MaxStatusLength)})
}

// sendPresence is the outbox's send function: register the ghost if this
// process has not yet, then PUT its presence. A 403 may mean the ghost was
// deactivated or the homeserver lost it: register again once.
func (s *Side) sendPresence(ctx context.Context, g *ghostOut, w wireState) error {
	for attempt := 0; ; attempt++ {
		err := s.ghosts.ensure(ctx, g.mxid, g.local, g.jid)
		if err == nil {
			err = s.c.setPresence(ctx, g.path, w.Presence, w.Status)
		}
		if err == nil || attempt > 0 || httpStatus(err) != 403 {
			return err
		}
		var he *HTTPError
		if errors.As(err, &he) {
			s.log.Warn("ghost request forbidden, registering again", "ghost", g.mxid, "errcode", he.ErrCode)
		}
		s.ghosts.forget(g.mxid)
	}
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
