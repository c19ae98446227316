package opsapi

import (
	"encoding/json"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Updates publishes every presence the core records on UpdateSubject. It
// implements [bridge.PresenceWatcher]: install it with core.SetWatcher.
// Publishing on core NATS only buffers, so the core's path is not slowed
// by watchers; with nobody subscribed the server drops the message.
type Updates struct {
	nc  *nats.Conn
	log *slog.Logger
}

var _ bridge.PresenceWatcher = (*Updates)(nil)

// NewUpdates returns a publisher of updates on nc.
func NewUpdates(nc *nats.Conn, log *slog.Logger) *Updates {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Updates{nc: nc, log: log}
}

// PresenceChanged publishes one update; an opted-out person's carries no
// presence.
func (u *Updates) PresenceChanged(net mapping.Network, user string, rec bridge.PresenceRecord, optedOut bool) {
	up := Update{Network: net, User: user, OptedOut: optedOut, Seq: rec.Seq, ObservedAt: rec.UpdatedAt}
	if !optedOut {
		p := rec.Presence
		up.Presence = &p
	}
	data, err := json.Marshal(up)
	if err != nil {
		u.log.Error("encoding a presence update failed", "err", err)
		return
	}
	if err := u.nc.Publish(UpdateSubject(net, user), data); err != nil {
		u.log.Debug("publishing a presence update failed", "network", net, "err", err)
	}
}
