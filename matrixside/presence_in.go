package matrixside

import (
	"context"
	"net/http"
	"sync"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// inbound remembers the last presence reported per Matrix user, so that
// only changes reach the core whichever way presence was read. It keeps
// at most max_tracked users, the one changed least recently forgotten: its
// next presence is reported again even if unchanged, and it is not
// reported offline if the homeserver becomes unreachable.
type inbound struct {
	mu   sync.Mutex
	last *lru[mapping.UserID, mapping.Presence]
}

func newInbound(max int) *inbound {
	return &inbound{last: newLRU[mapping.UserID, mapping.Presence](max, nil)}
}

func (in *inbound) evictedCount() uint64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.last.evicted
}

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

// changed records p for u and reports whether it differs from before.
func (in *inbound) changed(u mapping.UserID, p mapping.Presence) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if old, ok := in.last.peek(u); ok && samePresence(old, p) {
		return false
	}
	in.last.put(u, p)
	return true
}

// seed records p as reported for u unless something is known of u: what
// an earlier process reported, read back at start (loadReported).
func (in *inbound) seed(u mapping.UserID, p mapping.Presence) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, ok := in.last.peek(u); ok || in.last.len() >= in.last.max {
		return false
	}
	in.last.put(u, p)
	return true
}

func (in *inbound) forget(u mapping.UserID) {
	in.mu.Lock()
	in.last.remove(u)
	in.mu.Unlock()
}

// goOffline records every user last reported online as offline, keeping
// their status and last activity, and returns those presences.
func (in *inbound) goOffline() map[mapping.UserID]mapping.Presence {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := map[mapping.UserID]mapping.Presence{}
	in.last.each(func(u mapping.UserID, p mapping.Presence) {
		if p.State.Online() {
			p.State, p.CurrentlyActive = mapping.StateOffline, false
			out[u] = p
		}
	})
	for u, p := range out {
		in.last.put(u, p)
	}
	return out
}

// presenceContent is m.presence content and the GET /presence answer, as
// the bridge reads it. A gap of mautrix: its PresenceEventContent and
// RespPresence carry last_active_ago as a plain integer, so "not known"
// and "active right now" look alike.
type presenceContent struct {
	Presence        event.Presence `json:"presence"`
	StatusMsg       *string        `json:"status_msg"`
	LastActiveAgo   *int64         `json:"last_active_ago"`
	CurrentlyActive *bool          `json:"currently_active"`
}

// matrixState converts presence content; ok is false for values the bridge
// cannot use ("" is what Dendrite answers for a user who never had one).
func (w presenceContent) matrixState() (mapping.MatrixState, bool) {
	mp, err := mapping.ParseMatrixPresence(string(w.Presence))
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

// presenceOf reads an m.presence event (from a transaction or /sync), with
// the presence of its parsed content and the optional fields from its raw
// content.
func presenceOf(evt *event.Event) (mapping.MatrixState, bool) {
	p := evt.Content.AsPresence()
	w := presenceContent{Presence: p.Presence}
	if v, ok := evt.Content.Raw["status_msg"].(string); ok {
		w.StatusMsg = &v
	}
	if v, ok := evt.Content.Raw["last_active_ago"].(float64); ok {
		ago := int64(v)
		w.LastActiveAgo = &ago
	}
	if v, ok := evt.Content.Raw["currently_active"].(bool); ok {
		w.CurrentlyActive = &v
	}
	return w.matrixState()
}

// onPresenceEvent handles an m.presence event from a transaction or /sync.
func (s *Side) onPresenceEvent(ctx context.Context, evt *event.Event) {
	if evt.Sender == "" {
		return
	}
	evt.Type.Class = event.EphemeralEventType
	if !parseContent(evt) {
		return
	}
	if ms, ok := presenceOf(evt); ok {
		s.observePresence(ctx, evt.Sender, ms, time.Now())
	}
}

// observePresence reports a Matrix user's presence if it changed. The
// presence of ghosts and of the bot is never reported.
func (s *Side) observePresence(ctx context.Context, sender id.UserID, ms mapping.MatrixState, now time.Time) {
	kind, _ := s.classify(sender)
	if kind != kindMatrix {
		return
	}
	u := mapping.UserID(sender) // validated by classify
	p := s.tr.FromMatrix(ms, now)
	if !s.in.changed(u, p) {
		return
	}
	if err := s.obs.MatrixPresence(ctx, bridge.MatrixPresence{User: u, Presence: p}); err != nil {
		s.log.Warn("reporting matrix presence failed", "user", u, "err", err)
		s.in.forget(u) // so the next reading tries again
	}
}

// stopReading reports whether sync and poll should stop because the
// homeserver pushes presence itself.
func (s *Side) stopReading() bool {
	return s.cfg.PresenceSource == SourceAuto && s.ephemeralSeen.Load()
}

// readPresence reads u's presence with GET /presence as the bot, and
// reports it if it changed.
func (s *Side) readPresence(ctx context.Context, u id.UserID) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var w presenceContent
	_, err := s.bot.MakeRequest(ctx, http.MethodGet, s.bot.BuildClientURL("v3", "presence", u, "status"), nil, &w)
	if err != nil {
		return err
	}
	if ms, ok := w.matrixState(); ok {
		s.observePresence(ctx, u, ms, time.Now())
	}
	return nil
}

// runPoll reads the presence of the Matrix users who share a room with a
// ghost or have a link with an XMPP user, once per poll interval.
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
	// Links are the core's; the side only reads them.
	err := s.store.Links.Range(ctx, func(_ string, l bridge.Link) error {
		if l.MatrixUser != "" && l.State != bridge.LinkDenied && l.State != bridge.LinkRevoked {
			users[id.UserID(l.MatrixUser)] = struct{}{}
		}
		return ctx.Err()
	})
	if err != nil && ctx.Err() == nil {
		s.log.Warn("reading links failed", "err", err)
	}
	for u := range users {
		if ctx.Err() != nil {
			return
		}
		if kind, _ := s.classify(u); kind != kindMatrix {
			continue
		}
		if err := s.readPresence(ctx, u); err != nil {
			if ctx.Err() == nil {
				s.log.Debug("presence poll failed", "user", u, "err", err)
			}
			if retry, _ := retryable(err); retry {
				return // the homeserver is away or in trouble: next round
			}
		}
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
