package opsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// Client calls the presence service (the CLI's side of it).
type Client struct {
	nc *nats.Conn
}

// NewClient returns a client on nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc} }

// call sends req to subject and decodes the answer into resp, or returns
// the typed *Error of a failed request, or ErrNoBridge.
func (c *Client) call(ctx context.Context, subject string, req, resp any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	msg, err := c.nc.RequestWithContext(ctx, subject, data)
	if errors.Is(err, nats.ErrNoResponders) {
		return ErrNoBridge
	}
	if err != nil {
		return fmt.Errorf("opsapi: %s: %w", subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		e := &Error{Code: Code(code), Description: msg.Header.Get(micro.ErrorHeader)}
		return e
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("opsapi: %s: malformed answer: %w", subject, err)
	}
	return nil
}

// Get is GetPresence.
func (c *Client) Get(ctx context.Context, users ...string) (GetResponse, error) {
	var r GetResponse
	return r, c.call(ctx, SubjectGet, UsersRequest{Users: users}, &r)
}

// Statuses is GetStatuses.
func (c *Client) Statuses(ctx context.Context) (StatusesResponse, error) {
	var r StatusesResponse
	return r, c.call(ctx, SubjectStatuses, struct{}{}, &r)
}

// Request is RequestPresence.
func (c *Client) Request(ctx context.Context, users ...string) (RequestResponse, error) {
	var r RequestResponse
	return r, c.call(ctx, SubjectRequest, UsersRequest{Users: users}, &r)
}

// Subscriptions lists one user's subscriptions and links.
func (c *Client) Subscriptions(ctx context.Context, user string) (SubscriptionsResponse, error) {
	var r SubscriptionsResponse
	return r, c.call(ctx, SubjectSubscriptions, UserRequest{User: user}, &r)
}

// Watch calls fn with every update about subjects (all when none is
// given; see [WatchSubject]) until ctx ends. ready, if not nil, is called
// once the server has the subscriptions. Malformed updates are skipped.
// fn runs on one goroutine.
func (c *Client) Watch(ctx context.Context, subjects []string, ready func(), fn func(Update)) error {
	if len(subjects) == 0 {
		subjects = []string{UpdatesPrefix + ".>"}
	}
	ch := make(chan *nats.Msg, 1024)
	var subs []*nats.Subscription
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	for _, subj := range subjects {
		s, err := c.nc.ChanSubscribe(subj, ch)
		if err != nil {
			return fmt.Errorf("opsapi: watch %s: %w", subj, err)
		}
		subs = append(subs, s)
	}
	if err := c.nc.Flush(); err != nil {
		return fmt.Errorf("opsapi: watch: %w", err)
	}
	if ready != nil {
		ready()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-ch:
			var u Update
			if err := json.Unmarshal(m.Data, &u); err == nil {
				fn(u)
			}
		}
	}
}

// String is one human-readable line for an update.
func (u Update) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", u.ObservedAt.UTC().Format("2006-01-02T15:04:05.000Z"), u.Network, u.User)
	switch {
	case u.OptedOut:
		b.WriteString(" opted-out")
	case u.Presence != nil:
		fmt.Fprintf(&b, " %s", u.Presence.State)
		if u.Presence.Status != "" {
			fmt.Fprintf(&b, " %q", u.Presence.Status)
		}
		if u.Presence.Priority != 0 {
			fmt.Fprintf(&b, " priority=%d", u.Presence.Priority)
		}
	}
	return b.String()
}

// WatchSubject is the updates subject of one address: an MXID (leading
// @) is a Matrix user, anything else an XMPP bare JID. Puppets and ghosts
// are not resolved here: watch the person they stand for.
func WatchSubject(addr string) string {
	if strings.HasPrefix(addr, "@") {
		return UpdateSubject(mapping.NetworkMatrix, addr)
	}
	return UpdateSubject(mapping.NetworkXMPP, addr)
}
