package matrixside

import (
	"context"
	"encoding/json"
	"net/url"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// inbound remembers the last presence published per Matrix user, so that
// only changes reach the bus whichever way presence was read.
type inbound struct {
	mu   sync.Mutex
	last map[string]mapping.Presence
}

func newInbound() *inbound { return &inbound{last: map[string]mapping.Presence{}} }

// lastActiveSlack: last_active_ago is relative and read at slightly
// different moments, so the absolute instant jitters; differences below
// this are not a change worth telling XMPP contacts about.
const lastActiveSlack = time.Minute

func samePresence(a, b mapping.Presence) bool {
	if a.State != b.State || a.Status != b.Status || a.CurrentlyActive != b.CurrentlyActive {
		return false
	}
	if a.LastActive.IsZero() != b.LastActive.IsZero() {
		return false
	}
	d := a.LastActive.Sub(b.LastActive)
	return d < lastActiveSlack && d > -lastActiveSlack
}

// changed records p for mxid and reports whether it differs from before.
func (in *inbound) changed(mxid string, p mapping.Presence) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if old, ok := in.last[mxid]; ok && samePresence(old, p) {
		return false
	}
	in.last[mxid] = p
	return true
}

func (in *inbound) forget(mxid string) {
	in.mu.Lock()
	delete(in.last, mxid)
	in.mu.Unlock()
}

// toMatrixState converts wire presence; ok is false for values the bridge
// cannot use ("" is what Dendrite answers for a user who never had one).
func toMatrixState(w wirePresence) (mapping.MatrixState, bool) {
	mp, err := mapping.ParseMatrixPresence(w.Presence)
	if err != nil {
		return mapping.MatrixState{}, false
	}
	ms := mapping.MatrixState{Presence: mp}
	if w.StatusMsg != nil {
		ms.StatusMsg = *w.StatusMsg
	}
	if w.LastActiveAgo != nil && *w.LastActiveAgo >= 0 {
		ms.HasLastActive = true
		ms.LastActiveAgo = time.Duration(*w.LastActiveAgo) * time.Millisecond
	}
	if w.CurrentlyActive != nil {
		ms.CurrentlyActive = *w.CurrentlyActive
	}
	return ms, true
}

// observePresence publishes a Matrix user's presence if it changed. The
// presence of ghosts and of the bot never enters the bus.
func (s *Side) observePresence(ctx context.Context, mxid string, w wirePresence, now time.Time) {
	if kind, _ := s.classify(mxid); kind != kindMatrix {
		return
	}
	ms, ok := toMatrixState(w)
	if !ok {
		return
	}
	p := s.tr.FromMatrix(ms, now)
	if !s.in.changed(mxid, p) {
		return
	}
	if s.bus == nil {
		return
	}
	if err := s.bus.Publish(ctx, bridge.In, &bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkMatrix, User: mxid, Presence: &p}); err != nil {
		s.log.Warn("publishing matrix presence failed", "user", mxid, "err", err)
		s.in.forget(mxid) // so the next reading tries again
	}
}

// stopReading reports whether sync and poll should stop because the
// homeserver pushes presence itself.
func (s *Side) stopReading() bool {
	return s.cfg.PresenceSource == SourceAuto && s.ephemeralSeen.Load()
}

// syncFilter asks for presence with a large limit (the default of 10 loses
// bursts) and, of rooms, only membership: the homeserver needs the bot's
// own joins to report the presence of a newly shared room's members.
const syncFilter = `{"account_data":{"types":[]},"presence":{"types":["m.presence"],"limit":1000},` +
	`"room":{"account_data":{"types":[]},"ephemeral":{"types":[]},"state":{"types":["m.room.member"],"lazy_load_members":true},` +
	`"timeline":{"types":["m.room.member"],"limit":20}}}`

const syncTimeout = 30 * time.Second

type syncResponse struct {
	NextBatch string `json:"next_batch"`
	Presence  struct {
		Events []rawEvent `json:"events"`
	} `json:"presence"`
}

// runSync long-polls /sync as the bot with set_presence=offline (without
// it every sync would show the bot online) and publishes the presence of
// everyone sharing a room with the bot.
func (s *Side) runSync(ctx context.Context) {
	since := ""
	backoff := time.Duration(0)
	for ctx.Err() == nil && !s.stopReading() {
		q := url.Values{"filter": {syncFilter}, "set_presence": {"offline"}, "timeout": {"0"}}
		if since != "" {
			q.Set("timeout", "30000")
			q.Set("since", since)
		}
		var resp syncResponse
		rctx, cancel := context.WithTimeout(ctx, syncTimeout+30*time.Second)
		err := s.c.do(rctx, s.c.long, "GET", clientV3+"/sync?"+q.Encode(), nil, &resp)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			backoff = min(max(backoff*2, time.Second), 30*time.Second)
			s.log.Warn("sync failed, retrying", "retry_in", backoff, "err", err)
			if !sleepCtx(ctx, backoff) {
				return
			}
			continue
		}
		backoff = 0
		now := time.Now()
		for _, ev := range resp.Presence.Events {
			if ev.Type != "m.presence" {
				continue
			}
			var w wirePresence
			if json.Unmarshal(ev.Content, &w) == nil {
				s.observePresence(ctx, ev.Sender, w, now)
			}
		}
		since = resp.NextBatch
	}
}

// runPoll reads GET /presence of watched users and users with a link or
// a shared room with a ghost, once per poll interval.
func (s *Side) runPoll(ctx context.Context) {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		if s.stopReading() {
			return
		}
		s.pollOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Side) pollOnce(ctx context.Context) {
	users := s.rooms.allUsers()
	s.watchMu.Lock()
	for u := range s.watched {
		users[u] = struct{}{}
	}
	s.watchMu.Unlock()
	if s.bus != nil {
		_ = s.bus.Store().Links.Range(ctx, func(_ string, l bridge.Link) error {
			if l.MatrixUser != "" && l.State != bridge.LinkDenied && l.State != bridge.LinkRevoked {
				users[l.MatrixUser] = struct{}{}
			}
			return ctx.Err()
		})
	}
	for u := range users {
		if ctx.Err() != nil {
			return
		}
		if kind, _ := s.classify(u); kind != kindMatrix {
			continue
		}
		w, err := s.c.getPresence(ctx, u)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("presence poll failed", "user", u, "err", err)
			}
			if retry, _ := retryable(err); retry {
				return // the homeserver is away or in trouble: next round
			}
			continue
		}
		s.observePresence(ctx, u, w, time.Now())
	}
	s.pollRounds.Add(1)
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
