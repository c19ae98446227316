package matrixside

import (
	"context"
	"errors"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// syncFilter asks for presence with a large limit (the default of 10 loses
// bursts) and, of rooms, only membership: the homeserver needs the bot's
// own joins to report the presence of a newly shared room's members.
// Everything else is excluded with the "*" wildcard.
func syncFilter() *mautrix.Filter {
	none := []event.Type{{Type: "*"}}
	member := []event.Type{event.StateMember}
	return &mautrix.Filter{
		AccountData: &mautrix.FilterPart{NotTypes: none},
		Presence:    &mautrix.FilterPart{Types: []event.Type{event.EphemeralEventPresence}, Limit: 1000},
		Room: &mautrix.RoomFilter{
			AccountData: &mautrix.FilterPart{NotTypes: none},
			Ephemeral:   &mautrix.FilterPart{NotTypes: none},
			State:       &mautrix.FilterPart{Types: member, LazyLoadMembers: true},
			Timeline:    &mautrix.FilterPart{Types: member, Limit: 20},
		},
	}
}

// botSyncer is mautrix's DefaultSyncer with the side's retry policy
// (DefaultSyncer waits a fixed 10 s): a /sync that failed because the
// homeserver is away or limiting is retried as soon as the homeserver
// gate opens, any other failure after a back-off of its own. Its requests
// go through the gate like all others, but never as the trial (see
// withoutTrial).
type botSyncer struct {
	*mautrix.DefaultSyncer
	s       *Side
	ctx     context.Context // runSync's
	backoff time.Duration
	pos     *syncStore
	read    bool // the last response's events were handed to the handlers
}

// ProcessResponse implements mautrix.Syncer: the DefaultSyncer's, then the
// response's position is stored, once its events were handled (mautrix
// saves it before; see syncStore).
func (y *botSyncer) ProcessResponse(ctx context.Context, res *mautrix.RespSync, since string) error {
	y.read = false
	if err := y.DefaultSyncer.ProcessResponse(ctx, res, since); err != nil {
		return err
	}
	if y.read {
		y.pos.commit(ctx, res.NextBatch)
	}
	return nil
}

// OnFailedSync implements mautrix.Syncer.
func (y *botSyncer) OnFailedSync(_ *mautrix.RespSync, err error) (time.Duration, error) {
	if errors.Is(err, mautrix.MUnknownToken) {
		return 0, err // as_token refused: runSync reports it
	}
	if httpStatus(err) == 400 && y.pos.hasPosition() {
		// A stored position the homeserver does not know (its database
		// was reset): sync from scratch.
		y.s.log.Warn("homeserver refused the stored sync position; syncing from scratch", "err", err)
		y.pos.reset(y.ctx)
		return 0, err
	}
	if retry, _ := retryable(err); retry {
		// The homeserver is away or limiting: the gate has closed (and
		// logged it). Try again as soon as it opens, not after a back-off
		// of its own that would keep presence away long after it is back.
		y.s.log.Debug("sync failed, retrying once the homeserver answers", "err", err)
		y.s.health.waitOpen(y.ctx, 30*time.Second)
		return 0, nil
	}
	y.backoff = min(max(y.backoff*2, time.Second), 30*time.Second)
	y.s.log.Warn("sync failed, retrying", "retry_in", y.backoff, "err", err)
	return y.backoff, nil
}

// runSync long-polls /sync as the bot with mautrix's client and syncer,
// with set_presence=offline (without it every sync would show the bot
// online), and reports the presence of everyone sharing a room with the
// bot. It resumes from the position stored by the last process (see
// syncStore), so a restart or a takeover reads what changed meanwhile,
// not everyone's presence again. It stops when ctx ends, or when the
// homeserver turns out to push presence itself (presence source auto).
func (s *Side) runSync(ctx context.Context) {
	cli := s.as.NewMautrixClient(s.cfg.BotMXID())
	pos := newSyncStore(s.state, s.cfg.BotMXID())
	cli.Store = pos
	cli.SyncPresence = event.PresenceOffline
	y := &botSyncer{DefaultSyncer: mautrix.NewDefaultSyncer(), s: s, ctx: ctx, pos: pos}
	y.FilterJSON = syncFilter()
	y.OnSync(func(context.Context, *mautrix.RespSync, string) bool {
		y.backoff = 0
		if s.stopReading() {
			cli.StopSync()
			return false
		}
		y.read = true
		return true
	})
	y.OnEventType(event.EphemeralEventPresence, s.onPresenceEvent)
	cli.Syncer = y
	syncCtx := withoutTrial(ctx)
	for ctx.Err() == nil && !s.stopReading() {
		err := cli.SyncWithContext(syncCtx)
		if ctx.Err() != nil || err == nil {
			return // stopped (StopSync returns nil)
		}
		// Fatal for mautrix's loop: the filter could not be made, or the
		// token was refused. Try again later.
		level, retry := s.log.Warn, 5*time.Second
		if errors.Is(err, mautrix.MUnknownToken) {
			level, retry = s.log.Error, 30*time.Second
		}
		if r, _ := retryable(err); r {
			// The gate has closed and logs the homeserver's state.
			s.log.Debug("sync stopped, restarting once the homeserver answers", "err", err)
			s.health.waitOpen(ctx, retry)
			continue
		}
		level("sync stopped, restarting", "retry_in", retry, "err", err)
		if !sleepCtx(ctx, retry) {
			return
		}
	}
}
