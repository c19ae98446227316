package matrixside

import (
	"context"
	"sync"
)

// ghosts registers ghosts on first use (the homeserver refuses any request
// made as an unregistered appservice user) and sets their display name.
// Registration is remembered for the life of the process; after a restart
// the first use registers again, which the homeserver answers with
// M_USER_IN_USE, taken as success.
type ghosts struct {
	c *client

	mu    sync.Mutex
	state map[string]*ghostReg
}

type ghostReg struct {
	done chan struct{} // closed when the attempt ended
	err  error
}

func newGhosts(c *client) *ghosts { return &ghosts{c: c, state: map[string]*ghostReg{}} }

// ensure registers the ghost mxid (localpart local) of the bare JID jid
// unless that was done already. Concurrent callers for one ghost share one
// attempt; a failed attempt is forgotten so the next call tries again.
func (g *ghosts) ensure(ctx context.Context, mxid, local, jid string) error {
	g.mu.Lock()
	r, ok := g.state[mxid]
	if !ok {
		r = &ghostReg{done: make(chan struct{})}
		g.state[mxid] = r
	}
	g.mu.Unlock()
	if ok {
		select {
		case <-r.done:
			if r.err == nil {
				return nil
			}
			// The earlier attempt failed and was forgotten; try again.
			return g.ensure(ctx, mxid, local, jid)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.err = g.register(ctx, mxid, local, jid)
	if r.err != nil {
		g.mu.Lock()
		delete(g.state, mxid)
		g.mu.Unlock()
	}
	close(r.done)
	return r.err
}

func (g *ghosts) register(ctx context.Context, mxid, local, jid string) error {
	if err := g.c.registerGhost(ctx, local); err != nil {
		return err
	}
	// The homeserver names a new user after its localpart; users should
	// see the JID instead.
	name, err := g.c.displayName(ctx, mxid)
	if err == nil && name == jid {
		return nil
	}
	return g.c.setDisplayName(ctx, mxid, jid)
}

// forget drops what is known of mxid, after the homeserver refused a
// request as if the ghost were not registered.
func (g *ghosts) forget(mxid string) {
	g.mu.Lock()
	if r, ok := g.state[mxid]; ok {
		select {
		case <-r.done:
			delete(g.state, mxid)
		default:
		}
	}
	g.mu.Unlock()
}
