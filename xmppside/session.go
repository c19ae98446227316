package xmppside

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/component"
	"mellium.im/xmpp/stream"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// writeTimeout bounds one write to the server.
const writeTimeout = 10 * time.Second

// batchSize is how many stanzas a fan-out writes per hold of the stream's
// write lock, so that replies from the handler are not starved.
const batchSize = 256

// connect dials the server and performs the XEP-0114 handshake.
func (c *Component) connect(ctx context.Context) (net.Conn, *xmpp.Session, error) {
	d := net.Dialer{Timeout: c.cfg.ConnectTimeout}
	conn, err := d.DialContext(ctx, "tcp", c.addr())
	if err != nil {
		return nil, nil, fmt.Errorf("xmppside: dial %s: %w", c.addr(), err)
	}
	hctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	sess, err := component.NewSession(hctx, c.domain, []byte(c.cfg.Secret), conn)
	if err != nil {
		conn.Close()
		var se stream.Error
		if errors.As(err, &se) {
			return nil, nil, fmt.Errorf("xmppside: handshake with %s refused (%s): %w", c.addr(), se.Err, err)
		}
		return nil, nil, fmt.Errorf("xmppside: handshake with %s: %w", c.addr(), err)
	}
	return conn, sess, nil
}

// serve runs one session until it ends or ctx ends. After the handshake it
// re-announces every puppet's presence and probes every contact the puppets
// are subscribed to, since the server kept none of that for the component.
// When ctx ends it performs the clean shutdown and returns nil.
func (c *Component) serve(ctx, work context.Context, conn net.Conn, sess *xmpp.Session, quiesce func()) error {
	c.log.Info("xmpp component connected", "server", c.addr(), "connection", c.connects.Add(1))
	c.users.resetResources()
	c.setSession(sess)
	defer c.setSession(nil)

	served := make(chan error, 1)
	go func() { served <- sess.Serve(c.handler(work)) }()

	actx, stopAnnounce := context.WithCancel(work)
	var announced sync.WaitGroup
	announced.Add(1)
	go func() { defer announced.Done(); c.announce(actx, sess) }()
	defer func() { stopAnnounce(); announced.Wait() }()

	select {
	case err := <-served:
		conn.Close()
		if err == nil {
			err = errors.New("xmppside: server closed the stream")
		}
		return err
	case <-ctx.Done():
	}
	quiesce()
	stopAnnounce()
	announced.Wait()

	sctx, cancel := context.WithTimeout(work, c.cfg.ShutdownTimeout)
	defer cancel()
	n := c.goodbye(sctx, sess)
	c.setSession(nil)
	if err := sess.Close(); err != nil {
		c.log.Warn("closing xmpp stream failed", "err", err)
	}
	select {
	case <-served:
		conn.Close()
	case <-sctx.Done():
		c.log.Warn("server did not close the stream in time", "timeout", c.cfg.ShutdownTimeout)
		conn.Close()
		<-served
	}
	c.log.Info("xmpp stream closed cleanly", "unavailable_sent", n)
	return nil
}

// announce sends each puppet's current presence to its From/Both contacts
// and probes its To/Both contacts.
func (c *Component) announce(ctx context.Context, sess *xmpp.Session) {
	sent, probes := 0, 0
	for _, mxid := range c.subs.puppets() {
		if ctx.Err() != nil {
			return
		}
		puppetTyped, err := c.ns.PuppetJID(mapping.UserID(mxid))
		puppet := string(puppetTyped)
		if err != nil {
			c.log.Warn("no puppet for stored subscription", "mxid", mxid, "err", err)
			continue
		}
		if rec, ok := c.currentPresence(ctx, mxid, true); ok {
			p := c.outPresence(puppet, rec)
			to := c.subs.from(nil, mxid)
			if err := c.writeFanOut(ctx, sess, &p, to); err != nil {
				c.log.Warn("re-announcing presence failed", "puppet", puppet, "err", err)
				return
			}
			sent += len(to)
		}
		to := c.subs.to(mxid)
		probe := stanza.Presence{Header: stanza.Header{From: puppet}, Type: stanza.Probe}
		if err := c.writeFanOut(ctx, sess, &probe, to); err != nil {
			c.log.Warn("probing contacts failed", "puppet", puppet, "err", err)
			return
		}
		probes += len(to)
	}
	c.log.Info("presence re-announced", "presences", sent, "probes", probes)
}

// goodbye sends unavailable from every puppet to every contact that may see
// it and every directed-presence recipient. It returns the number sent.
func (c *Component) goodbye(ctx context.Context, sess *xmpp.Session) int {
	n := 0
	directed := c.puppets.allDirected()
	seen := make(map[string]bool)
	send := func(mxid string, extra []string) {
		puppetTyped, err := c.ns.PuppetJID(mapping.UserID(mxid))
		puppet := string(puppetTyped)
		if err != nil {
			return
		}
		to := append(c.subs.from(nil, mxid), extra...)
		p := stanza.Presence{Header: stanza.Header{From: puppet}, Type: stanza.Unavailable}
		if err := c.writeFanOut(ctx, sess, &p, to); err != nil {
			c.log.Warn("sending unavailable failed", "puppet", puppet, "err", err)
			return
		}
		n += len(to)
	}
	for _, mxid := range c.subs.puppets() {
		seen[mxid] = true
		send(mxid, directed[mxid])
	}
	for mxid, to := range directed {
		if !seen[mxid] {
			send(mxid, to)
		}
	}
	return n
}

// writeFanOut sends p to every JID in to, in batches.
func (c *Component) writeFanOut(ctx context.Context, sess *xmpp.Session, p *stanza.Presence, to []string) error {
	for len(to) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := min(len(to), batchSize)
		err := c.writeLocked(sess, func(w xmlstream.TokenWriter) error {
			_, err := c.fanOut(w, p, to[:k])
			return err
		})
		if err != nil {
			return err
		}
		to = to[k:]
	}
	return nil
}

// fanOut encodes p once per recipient, each with its own to and id.
func (c *Component) fanOut(w xmlstream.TokenWriter, p *stanza.Presence, to []string) (int, error) {
	q := *p
	for i, jid := range to {
		q.To, q.ID = jid, c.nextID()
		if _, err := q.WriteXML(w); err != nil {
			return i, err
		}
	}
	return len(to), nil
}

// send writes stanzas to the current session; ErrNotConnected if none.
// Never call it from the stream handler: write to its token writer.
func (c *Component) send(toks ...xml.TokenReader) error {
	sess := c.session()
	if sess == nil {
		return ErrNotConnected
	}
	return c.writeLocked(sess, func(w xmlstream.TokenWriter) error {
		for _, t := range toks {
			if _, err := xmlstream.Copy(w, t); err != nil {
				return err
			}
		}
		return nil
	})
}

// writeLocked holds the stream's write lock while fn writes, with a write
// deadline, then flushes.
func (c *Component) writeLocked(sess *xmpp.Session, fn func(w xmlstream.TokenWriter) error) error {
	tw := sess.TokenWriter()
	conn := sess.Conn()
	_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	err := fn(tw)
	if err == nil {
		err = tw.Flush()
	}
	_ = conn.SetWriteDeadline(time.Time{})
	if cerr := tw.Close(); err == nil && cerr != nil && !errors.Is(cerr, xmpp.ErrOutputStreamClosed) {
		err = cerr
	}
	return err
}

// currentPresence returns the puppet's last presence: the newer of what the
// component remembers and, when fresh is set or nothing is remembered, the
// presence bucket (the core may write it).
func (c *Component) currentPresence(ctx context.Context, mxid string, fresh bool) (bridge.PresenceRecord, bool) {
	rec, ok := c.puppets.get(mxid)
	if ok && !fresh {
		return rec, true
	}
	gctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	stored, _, err := c.store.Presence.Get(gctx, bridge.PresenceKey(mapping.NetworkMatrix, mxid))
	switch {
	case errors.Is(err, bridge.ErrNotFound):
		return rec, ok
	case err != nil:
		c.log.Warn("reading puppet presence failed", "mxid", mxid, "err", err)
		return rec, ok
	}
	if !ok || stored.Seq > rec.Seq {
		c.puppets.setIfNewer(mxid, stored)
		return stored, true
	}
	return rec, true
}
