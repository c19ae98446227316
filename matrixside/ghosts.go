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

// ghosts makes ghosts usable through mautrix's IntentAPI: registered on
// first use (the homeserver refuses any request made as an unregistered
// appservice user) and named after their JID. Concurrent first uses of
// one ghost share one attempt; a failed attempt is forgotten so the next
// use tries again. Registration is remembered for the life of the process
// (mautrix's state store); after a restart the homeserver answers
// M_USER_IN_USE, which mautrix takes as success.
type ghosts struct {
	as *appservice.AppService

	mu    sync.Mutex
	state map[id.UserID]*ghostReg
}

type ghostReg struct {
	done chan struct{} // closed when the attempt ended
	err  error
}

func newGhosts(as *appservice.AppService) *ghosts {
	return &ghosts{as: as, state: map[id.UserID]*ghostReg{}}
}

// ensure returns the intent of ghost (the ghost of jid), registered and
// named.
func (g *ghosts) ensure(ctx context.Context, ghost id.UserID, jid mapping.BareJID) (*appservice.IntentAPI, error) {
	for {
		g.mu.Lock()
		r, ok := g.state[ghost]
		if !ok {
			r = &ghostReg{done: make(chan struct{})}
			g.state[ghost] = r
		}
		g.mu.Unlock()
		if !ok {
			r.err = g.register(ctx, ghost, jid)
			if r.err != nil {
				g.mu.Lock()
				delete(g.state, ghost)
				g.mu.Unlock()
			}
			close(r.done)
			if r.err != nil {
				return nil, r.err
			}
			return g.as.Intent(ghost), nil
		}
		select {
		case <-r.done:
			if r.err == nil {
				return g.as.Intent(ghost), nil
			}
			// That attempt failed and was forgotten: try again.
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (g *ghosts) register(ctx context.Context, ghost id.UserID, jid mapping.BareJID) error {
	intent := g.as.Intent(ghost)
	if intent == nil {
		return fmt.Errorf("%w: %s is not a user of %s", ErrBadCommand, ghost, g.as.HomeserverDomain)
	}
	if err := intent.EnsureRegistered(ctx); err != nil {
		return err
	}
	// The homeserver names a new user after its localpart; users should
	// see the JID instead. SetDisplayName sets it only if it differs, but
	// fails when the homeserver answers 404 to the read, which the spec
	// allows for "no display name" (a gap of mautrix): then set it.
	err := intent.SetDisplayName(ctx, jid.String())
	if errors.Is(err, mautrix.MNotFound) {
		err = intent.Client.SetDisplayName(ctx, jid.String())
	}
	return err
}

// reregister registers ghost again, after the homeserver refused a request
// as if the ghost did not exist (deactivated, or the homeserver lost it).
// mautrix's EnsureRegistered would not: it remembers the first success.
func (g *ghosts) reregister(ctx context.Context, ghost id.UserID) error {
	err := g.as.Intent(ghost).Register(ctx)
	if errors.Is(err, mautrix.MUserInUse) {
		return nil
	}
	return err
}

// presenceBody always carries status_msg: "" is how a status is cleared.
type presenceBody struct {
	Presence  event.Presence `json:"presence"`
	StatusMsg string         `json:"status_msg"`
}

// presenceURL is the URL of intent's user's presence.
func presenceURL(intent *appservice.IntentAPI) string {
	return intent.BuildClientURL("v3", "presence", intent.UserID, "status")
}

// putPresence sets the presence of intent's user at url (presenceURL). A
// gap of mautrix: ReqPresence omits an empty status_msg (omitempty), so
// IntentAPI's SetPresence cannot clear a status.
func putPresence(ctx context.Context, intent *appservice.IntentAPI, url string, w wireState) error {
	_, err := intent.MakeRequest(ctx, http.MethodPut, url, presenceBody{Presence: w.Presence, StatusMsg: w.Status}, nil)
	return err
}
