package matrixside

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// ghosts registers ghosts on the homeserver (it refuses any request made
// as an unregistered appservice user) and names them after their JID. A
// ghost is registered only on a command of the core, which speaks only of
// people with a link, or for a user query of the homeserver within a
// budget (Side.queryGhost). Concurrent first uses of one ghost share one
// attempt; a failed attempt is forgotten so the next use tries again.
//
// The ghosts known to be registered are remembered up to max_tracked, the
// least recently used forgotten: its next use registers it again, which
// the homeserver answers M_USER_IN_USE, taken as success. A gap of
// mautrix: AppService.Intent and AppService.Client keep a client for
// every user ID they were ever asked about, and its memory state store
// every registration and membership, forever; so the side makes an
// uncached client per ghost (AppService.NewMautrixClient) and runs
// without a state store.
type ghosts struct {
	as *appservice.AppService

	mu         sync.Mutex
	registered *lru[id.UserID, struct{}]
	// linked holds the ghosts of XMPP users who had a live link (asked or
	// approved) when the side started: a user query about one registers
	// it without spending the budget.
	linked   *lru[id.UserID, struct{}]
	inflight map[id.UserID]*ghostReg // bounded by the concurrent callers
}

type ghostReg struct {
	done chan struct{} // closed when the attempt ended
	err  error
}

func newGhosts(as *appservice.AppService, max int) *ghosts {
	return &ghosts{
		as:         as,
		registered: newLRU[id.UserID, struct{}](max, nil),
		linked:     newLRU[id.UserID, struct{}](max, nil),
		inflight:   map[id.UserID]*ghostReg{},
	}
}

// client returns a client acting as ghost (uncached, see ghosts).
func (g *ghosts) client(ghost id.UserID) *mautrix.Client { return g.as.NewMautrixClient(ghost) }

// isRegistered reports whether ghost is known to be registered.
func (g *ghosts) isRegistered(ghost id.UserID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.registered.get(ghost)
	return ok
}

// markLinked records that ghost stands for an XMPP user with a link.
func (g *ghosts) markLinked(ghost id.UserID) {
	g.mu.Lock()
	g.linked.put(ghost, struct{}{})
	g.mu.Unlock()
}

// isLinked reports whether ghost was marked linked.
func (g *ghosts) isLinked(ghost id.UserID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.linked.peek(ghost)
	return ok
}

func (g *ghosts) evictedCount() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.registered.evicted
}

// ensure returns a client acting as ghost (the ghost of jid), registered
// and named.
func (g *ghosts) ensure(ctx context.Context, ghost id.UserID, jid mapping.BareJID) (*mautrix.Client, error) {
	return g.ensureWith(ctx, ghost, jid, nil)
}

// ensureWith is ensure with the client to use and return, if the caller
// keeps one for ghost (nil: make one).
func (g *ghosts) ensureWith(ctx context.Context, ghost id.UserID, jid mapping.BareJID, cli *mautrix.Client) (*mautrix.Client, error) {
	if cli == nil {
		cli = g.client(ghost)
	}
	for {
		g.mu.Lock()
		if _, ok := g.registered.get(ghost); ok {
			g.mu.Unlock()
			return cli, nil
		}
		r, ok := g.inflight[ghost]
		if !ok {
			r = &ghostReg{done: make(chan struct{})}
			g.inflight[ghost] = r
		}
		g.mu.Unlock()
		if !ok {
			if ghost.Homeserver() != g.as.HomeserverDomain {
				r.err = fmt.Errorf("%w: %s is not a user of %s", ErrBadCommand, ghost, g.as.HomeserverDomain)
			} else {
				r.err = g.register(ctx, cli, jid)
			}
			g.mu.Lock()
			delete(g.inflight, ghost)
			if r.err == nil {
				g.registered.put(ghost, struct{}{})
			}
			g.mu.Unlock()
			close(r.done)
			if r.err != nil {
				return nil, r.err
			}
			return cli, nil
		}
		select {
		case <-r.done:
			if r.err == nil {
				return cli, nil
			}
			// That attempt failed and was forgotten: try again.
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// register registers cli's user and names it after jid: the homeserver
// names a new user after its localpart, users should see the JID.
func (g *ghosts) register(ctx context.Context, cli *mautrix.Client, jid mapping.BareJID) error {
	if err := registerUser(ctx, cli); err != nil {
		return err
	}
	resp, err := cli.GetOwnDisplayName(ctx) // 404 (no name) is an empty answer
	if err != nil {
		return err
	}
	if resp.DisplayName == jid.String() {
		return nil
	}
	return cli.SetDisplayName(ctx, jid.String())
}

// registerUser registers cli's user as an appservice user; one that
// exists already (M_USER_IN_USE) is fine.
func registerUser(ctx context.Context, cli *mautrix.Client) error {
	local, _, err := cli.UserID.Parse()
	if err != nil || local == "" {
		return fmt.Errorf("%w: %s is not a valid user ID", ErrBadCommand, cli.UserID)
	}
	_, err = cli.MakeRequest(ctx, http.MethodPost, cli.BuildClientURL("v3", "register"), &mautrix.ReqRegister[any]{
		Username: local, Type: mautrix.AuthTypeAppservice, InhibitLogin: true,
	}, nil)
	if errors.Is(err, mautrix.MUserInUse) {
		return nil
	}
	return err
}

// reregister registers ghost again, after the homeserver refused a request
// as if the ghost did not exist (deactivated, or the homeserver lost it).
func (g *ghosts) reregister(ctx context.Context, cli *mautrix.Client) error {
	return registerUser(ctx, cli)
}

// presenceBody always carries status_msg: "" is how a status is cleared.
type presenceBody struct {
	Presence  event.Presence `json:"presence"`
	StatusMsg string         `json:"status_msg"`
}

// presenceURL is the URL of cli's user's presence.
func presenceURL(cli *mautrix.Client) string {
	return cli.BuildClientURL("v3", "presence", cli.UserID, "status")
}

// putPresence sets the presence of cli's user at url (presenceURL). A gap
// of mautrix: ReqPresence omits an empty status_msg (omitempty), so
// SetPresence cannot clear a status.
func putPresence(ctx context.Context, cli *mautrix.Client, url string, w wireState) error {
	_, err := cli.MakeRequest(ctx, http.MethodPut, url, presenceBody{Presence: w.Presence, StatusMsg: w.Status}, nil)
	return err
}
