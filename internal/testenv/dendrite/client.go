package dendritetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/dendrite"
)

// Presence is the content of an m.presence event; see dendrite.Presence.
type Presence = dendrite.Presence

// HTTPError is returned (wrapped) for non-2xx responses; see
// dendrite.HTTPError.
type HTTPError = dendrite.HTTPError

// Client is a Matrix client (see dendrite.Client) that remembers what its
// syncs saw, so that tests can wait for presence and invites.
type Client struct {
	*dendrite.Client

	mu       sync.Mutex
	since    string                       // sync token
	presence map[string]dendrite.Presence // latest m.presence seen by sync, per user
	invites  []dendrite.Invite            // invites seen by sync, not yet returned by WaitInvite
}

func wrap(c *dendrite.Client) *Client {
	return &Client{Client: c, presence: map[string]dendrite.Presence{}}
}

// sync runs one /sync from the client's since-token, records invites and
// presence, and returns the presence events of this batch in order.
func (c *Client) sync(ctx context.Context, timeout time.Duration) ([]dendrite.PresenceEvent, error) {
	c.mu.Lock()
	since := c.since
	c.mu.Unlock()
	resp, err := c.Sync(ctx, dendrite.SyncOptions{Since: since, Timeout: timeout})
	if err != nil {
		return nil, err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.since = resp.NextBatch
	for _, in := range resp.Invites {
		c.addInvite(in)
	}
	for _, ev := range resp.Presence {
		c.presence[ev.Sender] = ev.Content
	}
	return resp.Presence, nil
}

func (c *Client) addInvite(in dendrite.Invite) {
	for _, have := range c.invites {
		if have.RoomID == in.RoomID {
			return
		}
	}
	c.invites = append(c.invites, in)
}

// syncUntil runs /sync (≤1s long-polls) until check returns true or the
// timeout passes; it returns false on timeout.
func (c *Client) syncUntil(t testing.TB, timeout time.Duration, check func(presence []dendrite.PresenceEvent) bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		ctx, cancel := context.WithTimeout(t.Context(), left+10*time.Second)
		events, err := c.sync(ctx, min(time.Second, left))
		cancel()
		if err != nil {
			t.Fatalf("%s: sync: %v", c.UserID, err)
		}
		if check(events) {
			return true
		}
	}
}

// WaitPresence syncs until an m.presence event for userID satisfies pred and
// returns it. The latest presence of userID already seen by an earlier sync
// of this client (e.g. inside WaitInvite) is checked first. It fails the
// test after timeout, listing what was seen.
func (c *Client) WaitPresence(t testing.TB, timeout time.Duration, userID string, pred func(Presence) bool) Presence {
	t.Helper()
	c.mu.Lock()
	p, ok := c.presence[userID]
	c.mu.Unlock()
	if ok && pred(p) {
		return p
	}
	var seen []string
	found := c.syncUntil(t, timeout, func(events []dendrite.PresenceEvent) bool {
		for _, ev := range events {
			if ev.Sender != userID {
				continue
			}
			seen = append(seen, string(ev.Raw))
			if pred(ev.Content) {
				p = ev.Content
				return true
			}
		}
		return false
	})
	if !found {
		t.Fatalf("%s: no matching presence of %s within %v; seen: %v", c.UserID, userID, timeout, seen)
	}
	return p
}

// WaitInvite syncs until the client has a pending invite and returns its
// room ID and inviter. Each invite is returned once.
func (c *Client) WaitInvite(t testing.TB, timeout time.Duration) (roomID, inviter string) {
	t.Helper()
	pop := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.invites) == 0 {
			return false
		}
		roomID, inviter = c.invites[0].RoomID, c.invites[0].Inviter
		c.invites = c.invites[1:]
		return true
	}
	if pop() || c.syncUntil(t, timeout, func([]dendrite.PresenceEvent) bool { return pop() }) {
		return roomID, inviter
	}
	t.Fatalf("%s: no invite within %v", c.UserID, timeout)
	return "", ""
}
