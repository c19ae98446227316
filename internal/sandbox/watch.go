package sandbox

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/dendrite"
	"github.com/presence-bridge/presence-bridge/internal/prosody"
)

// The two directions of a presence line.
const (
	toMatrix = "XMPP → Matrix"
	toXMPP   = "Matrix → XMPP"
)

// printer writes one line per presence change that crossed the bridge,
// as seen by the receiving side, skipping repeats.
type printer struct {
	mu   sync.Mutex
	w    io.Writer
	last map[string]string // direction -> last description printed
	now  func() time.Time
}

func newPrinter(w io.Writer) *printer {
	return &printer{w: w, last: map[string]string{}, now: time.Now}
}

// crossed prints "15:04:05  XMPP → Matrix  @bob:localhost sees
// alice@localhost: unavailable "lunch"" unless the same was printed last
// for this direction.
func (p *printer) crossed(direction, seer, seen, desc string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last[direction] == desc {
		return
	}
	p.last[direction] = desc
	fmt.Fprintf(p.w, "%s  %s  %s sees %s: %s\n", p.now().Format("15:04:05"), direction, seer, seen, desc)
}

// describeXMPP describes the presence of a puppet as an XMPP client shows
// it: show (or available, or offline), status, idle time.
func describeXMPP(st prosody.Stanza) string {
	desc := st.Show
	switch {
	case st.Type == "unavailable":
		desc = "offline"
	case desc == "":
		desc = "available"
	}
	if st.Status != "" {
		desc += " " + strconv.Quote(st.Status)
	}
	if t, err := time.Parse(time.RFC3339, st.IdleSince); err == nil {
		if st.Type == "unavailable" {
			desc += ", last active " + t.Local().Format("15:04:05")
		} else {
			desc += ", idle since " + t.Local().Format("15:04:05")
		}
	}
	return desc
}

// describeMatrix describes the presence of a ghost as a Matrix client gets
// it: presence, status_msg.
func describeMatrix(p dendrite.Presence) string {
	desc := p.Presence
	if p.StatusMsg != nil && *p.StatusMsg != "" {
		desc += " " + strconv.Quote(*p.StatusMsg)
	}
	return desc
}

// watchXMPP prints every presence of bob's puppet that alice's session
// receives, until ctx ends or the session does. It consumes everything the
// session receives (the session forgets what it consumed).
func (s *sandbox) watchXMPP(ctx context.Context) error {
	puppet := puppetJID(matrixUser)
	for {
		st, err := s.alice.Wait(ctx, func(prosody.Stanza) bool { return true })
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("sandbox: alice's XMPP session: %w", err)
		}
		if st.Name == "presence" && bareJID(st.From) == puppet && (st.Type == "" || st.Type == "unavailable") {
			s.out.crossed(toXMPP, xmppUser+"@"+xmppDomain, "@"+matrixUser+":"+homeserver, describeXMPP(st))
		}
	}
}

// watchMatrix prints every presence of alice's ghost that bob's /sync
// shows, until ctx ends. It syncs with set_presence=offline so that
// watching never makes bob online.
func (s *sandbox) watchMatrix(ctx context.Context) error {
	ghost := ghostMXID(xmppUser)
	since := ""
	for {
		resp, err := s.bob.Sync(ctx, dendrite.SyncOptions{Since: since, Timeout: 30 * time.Second, SetPresence: "offline"})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// Dendrite going away is noticed by Run; anything else
			// (a timeout under load) is retried.
			s.log.Warn("bob's /sync failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		since = resp.NextBatch
		for _, ev := range resp.Presence {
			if ev.Sender == ghost {
				s.out.crossed(toMatrix, "@"+matrixUser+":"+homeserver, xmppUser+"@"+xmppDomain, describeMatrix(ev.Content))
			}
		}
	}
}
