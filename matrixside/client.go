package matrixside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// client is the small part of the Matrix client-server API the bridge
// needs, authenticated with the as_token. It never logs or returns tokens.
type client struct {
	base  string // homeserver URL without trailing slash
	token string
	http  *http.Client // requests with a deadline from ctx or Timeout
	long  *http.Client // long polls: deadline from ctx only
}

const requestTimeout = 30 * time.Second

func newClient(baseURL, token string, rt http.RoundTripper) *client {
	if rt == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		rt = t
	}
	return &client{
		base:  strings.TrimRight(baseURL, "/"),
		token: token,
		http:  &http.Client{Transport: rt, Timeout: requestTimeout},
		long:  &http.Client{Transport: rt},
	}
}

const clientV3 = "/_matrix/client/v3"

// asUser returns the query string that makes a request act as user.
func asUser(user string) string {
	if user == "" {
		return ""
	}
	return "?user_id=" + url.QueryEscape(user)
}

// do sends body (nil, []byte or a value to marshal) to path (already
// escaped, may carry a query) and decodes a 2xx answer into out (may be
// nil). Non-2xx answers become *HTTPError.
func (c *client) do(ctx context.Context, hc *http.Client, method, path string, body, out any) error {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return fmt.Errorf("matrixside: %s %s: %w", method, stripQuery(path), err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("matrixside: %s %s: %w", method, stripQuery(path), err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("matrixside: %s %s: %w", method, stripQuery(path), scrubURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return readHTTPError(resp, method, stripQuery(path))
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("matrixside: %s %s: decode answer: %w", method, stripQuery(path), err)
	}
	return nil
}

func readHTTPError(resp *http.Response, method, path string) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body struct {
		ErrCode      string `json:"errcode"`
		Error        string `json:"error"`
		RetryAfterMS int64  `json:"retry_after_ms"`
	}
	_ = json.Unmarshal(data, &body)
	he := &HTTPError{Method: method, Path: path, Status: resp.StatusCode, ErrCode: body.ErrCode, Message: body.Error}
	if body.RetryAfterMS > 0 {
		he.RetryAfter = time.Duration(body.RetryAfterMS) * time.Millisecond
	} else if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		he.RetryAfter = time.Duration(s) * time.Second
	}
	if he.Message == "" && body.ErrCode == "" {
		he.Message = strings.TrimSpace(string(data[:min(len(data), 200)]))
	}
	return he
}

// stripQuery drops the query string, which may name users but never holds
// tokens; paths are what logs and errors show.
func stripQuery(path string) string {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		return path[:i]
	}
	return path
}

// scrubURLError removes the URL (with its query) from a transport error.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func isErrCode(err error, code string) bool {
	var he *HTTPError
	return errors.As(err, &he) && he.ErrCode == code
}

func httpStatus(err error) int {
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Status
	}
	return 0
}

// registerGhost registers localpart with the appservice login type. An
// existing user is not an error.
func (c *client) registerGhost(ctx context.Context, localpart string) error {
	err := c.do(ctx, c.http, http.MethodPost, clientV3+"/register", map[string]any{
		"type": "m.login.application_service", "username": localpart, "inhibit_login": true,
	}, nil)
	if isErrCode(err, "M_USER_IN_USE") {
		return nil
	}
	return err
}

func (c *client) displayName(ctx context.Context, user string) (string, error) {
	var out struct {
		DisplayName string `json:"displayname"`
	}
	err := c.do(ctx, c.http, http.MethodGet, clientV3+"/profile/"+url.PathEscape(user)+"/displayname"+asUser(user), nil, &out)
	return out.DisplayName, err
}

func (c *client) setDisplayName(ctx context.Context, user, name string) error {
	return c.do(ctx, c.http, http.MethodPut, clientV3+"/profile/"+url.PathEscape(user)+"/displayname"+asUser(user),
		map[string]string{"displayname": name}, nil)
}

// presenceBody always carries status_msg: "" clears a status.
type presenceBody struct {
	Presence  string `json:"presence"`
	StatusMsg string `json:"status_msg"`
}

// presencePath is the PUT path (with ?user_id=) of user's presence.
func presencePath(user string) string {
	return clientV3 + "/presence/" + url.PathEscape(user) + "/status" + asUser(user)
}

func (c *client) setPresence(ctx context.Context, path string, presence, status string) error {
	body, err := json.Marshal(presenceBody{Presence: presence, StatusMsg: status})
	if err != nil {
		return err
	}
	return c.do(ctx, c.http, http.MethodPut, path, body, nil)
}

// wirePresence is m.presence content and the GET /presence answer.
type wirePresence struct {
	Presence        string  `json:"presence"`
	StatusMsg       *string `json:"status_msg"`
	LastActiveAgo   *int64  `json:"last_active_ago"`
	CurrentlyActive *bool   `json:"currently_active"`
}

// getPresence reads user's presence as the bot.
func (c *client) getPresence(ctx context.Context, user string) (wirePresence, error) {
	var p wirePresence
	err := c.do(ctx, c.http, http.MethodGet, clientV3+"/presence/"+url.PathEscape(user)+"/status", nil, &p)
	return p, err
}

// createDirectRoom creates a direct chat of as with the users in invite.
func (c *client) createDirectRoom(ctx context.Context, as string, invite ...string) (string, error) {
	var out struct {
		RoomID string `json:"room_id"`
	}
	err := c.do(ctx, c.http, http.MethodPost, clientV3+"/createRoom"+asUser(as), map[string]any{
		"preset": "trusted_private_chat", "is_direct": true, "invite": invite,
	}, &out)
	if err == nil && out.RoomID == "" {
		err = fmt.Errorf("matrixside: createRoom: %w: no room_id in answer", ErrHomeserver)
	}
	return out.RoomID, err
}

func (c *client) invite(ctx context.Context, as, roomID, user string) error {
	return c.do(ctx, c.http, http.MethodPost, clientV3+"/rooms/"+url.PathEscape(roomID)+"/invite"+asUser(as),
		map[string]string{"user_id": user}, nil)
}

func (c *client) join(ctx context.Context, as, roomID string) error {
	return c.do(ctx, c.http, http.MethodPost, clientV3+"/join/"+url.PathEscape(roomID)+asUser(as), struct{}{}, nil)
}

func (c *client) leave(ctx context.Context, as, roomID string) error {
	return c.do(ctx, c.http, http.MethodPost, clientV3+"/rooms/"+url.PathEscape(roomID)+"/leave"+asUser(as), struct{}{}, nil)
}

// memberOf returns user's membership in roomID as seen by as.
func (c *client) memberOf(ctx context.Context, as, roomID, user string) (string, error) {
	var out struct {
		Membership string `json:"membership"`
	}
	err := c.do(ctx, c.http, http.MethodGet, clientV3+"/rooms/"+url.PathEscape(roomID)+"/state/m.room.member/"+url.PathEscape(user)+asUser(as), nil, &out)
	return out.Membership, err
}

// versions returns /versions' unstable_features.
func (c *client) unstableFeatures(ctx context.Context) (map[string]bool, error) {
	var out struct {
		UnstableFeatures map[string]bool `json:"unstable_features"`
	}
	err := c.do(ctx, c.http, http.MethodGet, "/_matrix/client/versions", nil, &out)
	return out.UnstableFeatures, err
}

// BusyFeature is the /versions unstable feature of MSC3026 busy presence.
const BusyFeature = "org.matrix.msc3026.busy_presence"

// DetectBusy asks the homeserver at homeserverURL whether it supports
// MSC3026 busy presence. /versions needs no token. Use the answer for
// mapping.NewTranslator.
func DetectBusy(ctx context.Context, homeserverURL string) (bool, error) {
	c := newClient(homeserverURL, "", nil)
	features, err := c.unstableFeatures(ctx)
	if err != nil {
		return false, err
	}
	return features[BusyFeature], nil
}
