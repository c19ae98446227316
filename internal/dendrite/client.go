package dendrite

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
	"time"
)

// Client is a minimal Matrix client-server API client. Its fields are set
// by Login (or AppServiceClient) and not changed afterwards; it is safe for
// concurrent use.
type Client struct {
	UserID, AccessToken, DeviceID string

	baseURL string
	asUser  string // appservice clients: sent as ?user_id=
	http    *http.Client
}

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

func newClient(baseURL string) *Client {
	return &Client{baseURL: strings.TrimRight(baseURL, "/"), http: &http.Client{Timeout: 90 * time.Second}}
}

// Login logs in to the homeserver at baseURL (e.g. "http://127.0.0.1:8008")
// with a password and returns a client with a new device.
func Login(ctx context.Context, baseURL, localpart, password string) (*Client, error) {
	c := newClient(baseURL)
	var resp struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	err := c.Do(ctx, http.MethodPost, "/_matrix/client/v3/login", map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": localpart},
		"password":   password,
	}, &resp)
	if err != nil {
		return nil, fmt.Errorf("dendrite: login %s: %w", localpart, err)
	}
	c.UserID, c.AccessToken, c.DeviceID = resp.UserID, resp.AccessToken, resp.DeviceID
	return c, nil
}

// ClientWithToken returns a client of userID using an access token from an
// earlier Login (check it with WhoAmI).
func ClientWithToken(baseURL, userID, accessToken string) *Client {
	c := newClient(baseURL)
	c.UserID, c.AccessToken = userID, accessToken
	return c
}

// WhoAmI returns the user the client's access token belongs to.
func (c *Client) WhoAmI(ctx context.Context) (string, error) {
	var resp struct {
		UserID string `json:"user_id"`
	}
	err := c.Do(ctx, http.MethodGet, "/_matrix/client/v3/account/whoami", nil, &resp)
	return resp.UserID, err
}

// AppServiceClient returns a client authenticating with the appservice's
// as_token. If userID is not empty, requests are made as that user
// (?user_id=), which must be in the appservice's namespace and, for most
// endpoints, registered first (see RegisterAppServiceUser).
func AppServiceClient(baseURL, asToken, userID string) *Client {
	c := newClient(baseURL)
	c.UserID, c.AccessToken, c.asUser = userID, asToken, userID
	return c
}

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
	// The path, not the URL: the query may hold a since-token, and errors
	// end up in logs.
	what, _, _ := strings.Cut(path, "?")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, what, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, what, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s %s: %w", method, what, &HTTPError{Status: resp.StatusCode, Body: string(data)})
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode response: %w", method, what, err)
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

// SyncFilter asks /sync for many presence events (the default limit is
// 10, and a burst over it is lost) and little timeline.
const SyncFilter = `{"presence":{"limit":1000},"room":{"timeline":{"limit":1}}}`

// SyncOptions are the parameters of one /sync.
type SyncOptions struct {
	Since   string        // the previous NextBatch; "" for an initial sync
	Timeout time.Duration // long-poll at most this long
	// SetPresence is the set_presence parameter: "" (the server's default,
	// online), "online", "unavailable" or "offline". Dendrite derives the
	// user's presence from the syncs of all their devices of the last 10 s
	// (online wins); "offline" leaves presence to the other devices.
	SetPresence string
}

// SyncResponse is the part of a /sync response presence tests care about.
type SyncResponse struct {
	NextBatch string
	Presence  []PresenceEvent // m.presence events, in order
	Invites   []Invite        // rooms the user is invited to
}

// PresenceEvent is one m.presence event.
type PresenceEvent struct {
	Sender  string
	Content Presence
	Raw     json.RawMessage // the content as sent
}

// Invite is a pending invite of the syncing user.
type Invite struct {
	RoomID, Inviter string
}

// Sync runs one /sync with SyncFilter.
func (c *Client) Sync(ctx context.Context, opts SyncOptions) (*SyncResponse, error) {
	q := url.Values{"timeout": {fmt.Sprint(opts.Timeout.Milliseconds())}, "filter": {SyncFilter}}
	if opts.Since != "" {
		q.Set("since", opts.Since)
	}
	if opts.SetPresence != "" {
		q.Set("set_presence", opts.SetPresence)
	}
	type event struct {
		Type     string          `json:"type"`
		Sender   string          `json:"sender"`
		StateKey *string         `json:"state_key"`
		Content  json.RawMessage `json:"content"`
	}
	var resp struct {
		NextBatch string `json:"next_batch"`
		Presence  struct {
			Events []event `json:"events"`
		} `json:"presence"`
		Rooms struct {
			Invite map[string]struct {
				InviteState struct {
					Events []event `json:"events"`
				} `json:"invite_state"`
			} `json:"invite"`
		} `json:"rooms"`
	}
	if err := c.Do(ctx, http.MethodGet, "/_matrix/client/v3/sync?"+q.Encode(), nil, &resp); err != nil {
		return nil, err
	}
	out := &SyncResponse{NextBatch: resp.NextBatch}
	for _, ev := range resp.Presence.Events {
		if ev.Type != "m.presence" {
			continue
		}
		var p Presence
		if err := json.Unmarshal(ev.Content, &p); err != nil {
			return nil, fmt.Errorf("m.presence from %s: %w", ev.Sender, err)
		}
		out.Presence = append(out.Presence, PresenceEvent{Sender: ev.Sender, Content: p, Raw: ev.Content})
	}
	for roomID, inv := range resp.Rooms.Invite {
		for _, ev := range inv.InviteState.Events {
			if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == c.UserID {
				out.Invites = append(out.Invites, Invite{RoomID: roomID, Inviter: ev.Sender})
			}
		}
	}
	return out, nil
}
