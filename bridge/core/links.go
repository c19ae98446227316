package core

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// person is what the core keeps in memory of someone who holds at least
// one link in state asked or approved. Nobody else has an entry: the
// presence of a person without a link is neither kept nor shown, so
// nothing a stranger sends grows the core's memory or state.
type person struct {
	asked, approved int                   // their links in each state
	lastSeq         uint64                // newest presence sequence seen
	rec             bridge.PresenceRecord // the newest record, as written
	optOut          bool                  // a copy of their settings: the core writes them
}

// live reports whether a link in state s lets presence through.
func live(s bridge.LinkState) bool { return s == bridge.LinkAsked || s == bridge.LinkApproved }

// ended reports whether a link in state s is being ended: the core
// writes the state first, then tells the sides, then deletes the link,
// so a link found in this state is an ending that must be finished.
func ended(s bridge.LinkState) bool { return s == bridge.LinkDenied || s == bridge.LinkRevoked }

// endedLinkTTL is how long an ended link found at start is left for its
// redelivered event to finish; older ones are deleted.
const endedLinkTTL = 24 * time.Hour

func (p pair) keys() [2]string {
	return [2]string{bridge.PresenceKey(mapping.NetworkXMPP, string(p.jid)), bridge.PresenceKey(mapping.NetworkMatrix, string(p.mxid))}
}

// setLink changes the link of the pair, and the index of linked people
// with it. The core is the links bucket's only writer, and its link
// writes are serialized, so the index follows the bucket exactly. A Matrix
// user linked for the first time is asked for their presence afresh: what
// the Matrix side reported before was dropped, and it reports only
// changes.
func (c *Core) setLink(ctx context.Context, p pair, change func(*bridge.Link)) func() error {
	return func() error {
		added, err := c.writeLink(ctx, p, change)
		if err != nil {
			return err
		}
		if added[1] {
			c.requestPresence(ctx, p.mxid)
		}
		return nil
	}
}

func (c *Core) writeLink(ctx context.Context, p pair, change func(*bridge.Link)) ([2]bool, error) {
	c.linkMu.Lock()
	defer c.linkMu.Unlock()
	optOut, err := c.settingsOfNew(ctx, p)
	if err != nil {
		return [2]bool{}, err
	}
	next, rev, err := c.store.Links.UpdateRev(ctx, p.key(), func(cur bridge.Link, _ bool) (bridge.Link, bool, error) {
		cur.MatrixUser, cur.XMPPUser = p.mxid, p.jid
		change(&cur)
		cur.UpdatedAt = now()
		return cur, true, nil
	})
	if err != nil {
		return [2]bool{}, err
	}
	return c.applyLink(p.key(), p, next.State, rev, optOut), nil
}

// requestPresenceTimeout bounds asking the Matrix side for a presence.
const requestPresenceTimeout = 3 * time.Second

// requestPresence asks the Matrix side, if it can (bridge.PresenceRequester),
// to read and report a Matrix user's presence. The answer comes back as a
// report; a failure only delays the presence to the user's next change.
func (c *Core) requestPresence(ctx context.Context, mxid mapping.UserID) {
	rq, ok := c.matrix.(bridge.PresenceRequester)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, requestPresenceTimeout)
	defer cancel()
	if err := rq.RequestPresence(ctx, bridge.PresenceRequest{Network: mapping.NetworkMatrix, User: string(mxid)}); err != nil {
		c.log.Info("could not ask for a newly linked Matrix user's presence; it will come with their next change", "err", err)
	}
}

// deleteLink removes the link of the pair: the last step of its end.
func (c *Core) deleteLink(ctx context.Context, p pair) func() error {
	return func() error {
		c.linkMu.Lock()
		defer c.linkMu.Unlock()
		_, rev, err := c.store.Links.Get(ctx, p.key())
		if errors.Is(err, bridge.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := c.store.Links.Delete(ctx, p.key()); err != nil {
			return err
		}
		// The deletion's own revision is later than rev: a watched
		// revision up to rev is older, the deletion itself a no-op.
		c.applyLink(p.key(), p, "", rev+1, [2]bool{})
		return nil
	}
}

// settingsOfNew reads the opt-out of each person of the pair who is not
// yet in the index, before their first link is written: once written, an
// error could no longer be retried.
func (c *Core) settingsOfNew(ctx context.Context, p pair) ([2]bool, error) {
	var out [2]bool
	for i, key := range p.keys() {
		c.mu.Lock()
		_, known := c.people[key]
		c.mu.Unlock()
		if known {
			continue
		}
		s, _, err := c.store.Settings.Get(ctx, key)
		if err != nil && !errors.Is(err, bridge.ErrNotFound) {
			return out, fmt.Errorf("core: reading settings: %w", err)
		}
		out[i] = s.OptOut
	}
	return out, nil
}

// index moves the pair's link from state before to state after in the
// index, and reports which of the pair (XMPP user, Matrix user) it added.
// optOut holds the settings of people not yet indexed. Someone whose last
// live link ends is forgotten: their presence record is deleted and
// nothing of theirs waits to be shown.
func (c *Core) index(p pair, before, after bridge.LinkState, optOut [2]bool) (added [2]bool) {
	if before == after {
		return added
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, key := range p.keys() {
		pe := c.people[key]
		if pe == nil {
			if !live(after) {
				continue
			}
			pe = &person{optOut: optOut[i]}
			c.people[key] = pe
			added[i] = true
		}
		switch before {
		case bridge.LinkAsked:
			pe.asked--
		case bridge.LinkApproved:
			pe.approved--
		}
		switch after {
		case bridge.LinkAsked:
			pe.asked++
		case bridge.LinkApproved:
			pe.approved++
		}
		if pe.asked+pe.approved <= 0 {
			c.forget(key)
		}
	}
	return added
}

// forget drops everything the core keeps of a person. c.mu is held.
func (c *Core) forget(key string) {
	delete(c.people, key)
	if c.owns(key) {
		c.persist.Delete(key)
	}
	c.presence.Forget(key)
}

// approvedLinks is the number of approved links of an XMPP user.
func (c *Core) approvedLinks(jid mapping.BareJID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if pe := c.people[bridge.PresenceKey(mapping.NetworkXMPP, string(jid))]; pe != nil {
		return pe.approved
	}
	return 0
}

// loadLinks builds the index from the links bucket and deletes what has
// no owner any more: ended links (older than endedLinkTTL: younger ones
// may still be finished by a redelivered event) and presence records of
// people without a live link. Then it reads the opt-outs of the people
// indexed.
func (c *Core) loadLinks(ctx context.Context) error {
	var stale []string
	cutoff := now().Add(-endedLinkTTL)
	linkKeys, err := c.store.Links.Keys(ctx)
	if err != nil {
		return fmt.Errorf("core: loading links: %w", err)
	}
	c.linkMu.Lock()
	for _, key := range linkKeys {
		l, rev, err := c.store.Links.Get(ctx, key)
		if errors.Is(err, bridge.ErrNotFound) {
			continue
		}
		if err != nil {
			c.linkMu.Unlock()
			return fmt.Errorf("core: loading links: %w", err)
		}
		p := pair{l.MatrixUser, l.XMPPUser}
		switch {
		case live(l.State) && p.key() == key:
			c.applyLink(key, p, l.State, rev, [2]bool{})
		case !live(l.State) && l.UpdatedAt.Before(cutoff):
			stale = append(stale, key)
		}
	}
	c.linkMu.Unlock()
	for _, key := range stale {
		if err := c.store.Links.Delete(ctx, key); err != nil {
			return fmt.Errorf("core: deleting ended links: %w", err)
		}
	}
	keys, err := c.store.Presence.Keys(ctx)
	if err != nil {
		return fmt.Errorf("core: listing presence: %w", err)
	}
	orphans := 0
	for _, key := range keys {
		c.mu.Lock()
		_, linked := c.people[key]
		c.mu.Unlock()
		if linked {
			continue
		}
		if err := c.store.Presence.Delete(ctx, key); err != nil {
			return fmt.Errorf("core: deleting presence of unlinked people: %w", err)
		}
		orphans++
	}
	if err := c.store.Settings.Range(ctx, func(key string, s bridge.UserSettings) error {
		c.mu.Lock()
		if pe := c.people[key]; pe != nil {
			pe.optOut = s.OptOut
		}
		c.mu.Unlock()
		return nil
	}); err != nil {
		return fmt.Errorf("core: loading opt-outs: %w", err)
	}
	c.mu.Lock()
	n := len(c.people)
	c.mu.Unlock()
	c.log.Info("links loaded", "people", n, "ended_links_deleted", len(stale), "orphan_presence_deleted", orphans)
	return nil
}
