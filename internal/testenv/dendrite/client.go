package dendritetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Client is a minimal Matrix client-server API client.
type Client struct {
	UserID, AccessToken, DeviceID string

	baseURL string
	asUser  string // appservice clients: sent as ?user_id=
	http    *http.Client

	mu       sync.Mutex
	since    string              // sync token
	presence map[string]Presence // latest m.presence seen by sync, per user
	invites  []invite            // invites seen by sync, not yet returned by WaitInvite
}

type invite struct{ roomID, inviter string }

// Presence is the content of an m.presence event / presence status.
type Presence struct {
	Presence        string  `json:"presence"`
	StatusMsg       *string `json:"status_msg,omitempty"`
	LastActiveAgo   int64   `json:"last_active_ago,omitempty"`
	CurrentlyActive bool    `json:"currently_active,omitempty"`
}

// HTTPError is returned (wrapped) by Client methods for non-2xx responses.
type HTTPError struct {
	Status int
	Body   string
}

func (e *HTTPError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Body) }

// Do sends a JSON request (body may be nil) with the client's access token
// and decodes a JSON response into out (may be nil). path is relative to
// the server URL and may carry a query string; components must already be
// escaped. A non-2xx response yields an error wrapping *HTTPError.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	return c.do(ctx, method, path, c.asUser, body, out)
}

func (c *Client) do(ctx context.Context, method, path, asUser string, body, out any) error {
	u, err := url.Parse(c.baseURL + path)
	if err != nil {
		return err
	}
	if asUser != "" {
		q := u.Query()
		q.Set("user_id", asUser)
		u.RawQuery = q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.AccessToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s %s: %w", method, path, &HTTPError{Status: resp.StatusCode, Body: string(data)})
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode response: %w", method, path, err)
		}
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// CreateRoom creates a private room (preset private_chat) inviting invite.
func (c *Client) CreateRoom(ctx context.Context, invite []string, isDirect bool) (roomID string, err error) {
	if invite == nil {
		invite = []string{}
	}
	var resp struct {
		RoomID string `json:"room_id"`
	}
	err = c.Do(ctx, http.MethodPost, "/_matrix/client/v3/createRoom", map[string]any{
		"preset": "private_chat", "invite": invite, "is_direct": isDirect,
	}, &resp)
	return resp.RoomID, err
}

// Join joins a room by ID or alias.
func (c *Client) Join(ctx context.Context, roomIDOrAlias string) error {
	return c.Do(ctx, http.MethodPost, "/_matrix/client/v3/join/"+esc(roomIDOrAlias), struct{}{}, nil)
}

// Leave leaves a room.
func (c *Client) Leave(ctx context.Context, roomID string) error {
	return c.Do(ctx, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/leave", struct{}{}, nil)
}

// Invite invites userID to roomID.
func (c *Client) Invite(ctx context.Context, roomID, userID string) error {
	return c.Do(ctx, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/invite",
		map[string]string{"user_id": userID}, nil)
}

// Kick removes userID from roomID.
func (c *Client) Kick(ctx context.Context, roomID, userID, reason string) error {
	return c.Do(ctx, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/kick",
		map[string]string{"user_id": userID, "reason": reason}, nil)
}

// SetPresence sets the client user's presence ("online", "unavailable",
// "offline"). status_msg is always sent, even when empty.
func (c *Client) SetPresence(ctx context.Context, presence, statusMsg string) error {
	return c.Do(ctx, http.MethodPut, "/_matrix/client/v3/presence/"+esc(c.UserID)+"/status",
		map[string]string{"presence": presence, "status_msg": statusMsg}, nil)
}

// GetPresence reads a user's presence with GET /presence/{userId}/status.
func (c *Client) GetPresence(ctx context.Context, userID string) (Presence, error) {
	var p Presence
	err := c.Do(ctx, http.MethodGet, "/_matrix/client/v3/presence/"+esc(userID)+"/status", nil, &p)
	return p, err
}

// RegisterAppServiceUser registers localpart (which must be in the
// appservice's user namespace) using the client's as_token. A user that
// already exists (M_USER_IN_USE) is not an error.
func (c *Client) RegisterAppServiceUser(ctx context.Context, localpart string) error {
	err := c.do(ctx, http.MethodPost, "/_matrix/client/v3/register", "", map[string]any{
		"type": "m.login.application_service", "username": localpart, "inhibit_login": true,
	}, nil)
	var he *HTTPError
	if errors.As(err, &he) && strings.Contains(he.Body, "M_USER_IN_USE") {
		return nil
	}
	return err
}

// syncFilter asks for many presence events: the default limit is 10.
const syncFilter = `{"presence":{"limit":1000}}`

type syncEvent struct {
	Type     string          `json:"type"`
	Sender   string          `json:"sender"`
	StateKey *string         `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// sync runs one /sync from the client's since-token, records invites and
// presence, and returns the presence events of this batch in order.
func (c *Client) sync(ctx context.Context, timeout time.Duration) ([]syncEvent, error) {
	c.mu.Lock()
	since := c.since
	c.mu.Unlock()
	q := url.Values{"timeout": {fmt.Sprint(timeout.Milliseconds())}, "filter": {syncFilter}}
	if since != "" {
		q.Set("since", since)
	}
	var resp struct {
		NextBatch string `json:"next_batch"`
		Presence  struct {
			Events []syncEvent `json:"events"`
		} `json:"presence"`
		Rooms struct {
			Invite map[string]struct {
				InviteState struct {
					Events []syncEvent `json:"events"`
				} `json:"invite_state"`
			} `json:"invite"`
		} `json:"rooms"`
	}
	if err := c.Do(ctx, http.MethodGet, "/_matrix/client/v3/sync?"+q.Encode(), nil, &resp); err != nil {
		return nil, err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.since = resp.NextBatch
	for roomID, inv := range resp.Rooms.Invite {
		for _, ev := range inv.InviteState.Events {
			if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == c.UserID {
				c.addInvite(invite{roomID, ev.Sender})
			}
		}
	}
	var events []syncEvent
	for _, ev := range resp.Presence.Events {
		if ev.Type != "m.presence" {
			continue
		}
		var p Presence
		if err := json.Unmarshal(ev.Content, &p); err != nil {
			return nil, fmt.Errorf("m.presence from %s: %w", ev.Sender, err)
		}
		c.presence[ev.Sender] = p
		events = append(events, ev)
	}
	return events, nil
}

func (c *Client) addInvite(in invite) {
	for _, have := range c.invites {
		if have.roomID == in.roomID {
			return
		}
	}
	c.invites = append(c.invites, in)
}

// syncUntil runs /sync (≤1s long-polls) until check returns true or the
// timeout passes; it returns false on timeout.
func (c *Client) syncUntil(t testing.TB, timeout time.Duration, check func(presence []syncEvent) bool) bool {
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
	found := c.syncUntil(t, timeout, func(events []syncEvent) bool {
		for _, ev := range events {
			if ev.Sender != userID {
				continue
			}
			seen = append(seen, string(ev.Content))
			var got Presence
			_ = json.Unmarshal(ev.Content, &got) // already validated by sync
			if pred(got) {
				p = got
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
		roomID, inviter = c.invites[0].roomID, c.invites[0].inviter
		c.invites = c.invites[1:]
		return true
	}
	if pop() || c.syncUntil(t, timeout, func([]syncEvent) bool { return pop() }) {
		return roomID, inviter
	}
	t.Fatalf("%s: no invite within %v", c.UserID, timeout)
	return "", ""
}
