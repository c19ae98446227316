package xmppside

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/component"
	"mellium.im/xmpp/stream"

	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// writeTimeout bounds one write to the server.
const writeTimeout = 10 * time.Second

// batchSize is how many stanzas a fan-out writes per hold of the stream's
// write lock, so that replies from the handler are not starved.
const batchSize = 256

// keepAlive makes the kernel notice a server that vanished without closing
// the connection (a network cut) within about 30 s of silence, so that the
// stream ends and Config.OfflineGrace starts counting.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}

// connect dials the server and performs the XEP-0114 handshake. A refused
// secret is an ErrAuthentication.
func (c *Component) connect(ctx context.Context) (net.Conn, *xmpp.Session, error) {
	d := net.Dialer{Timeout: c.cfg.ConnectTimeout, KeepAliveConfig: keepAlive}
	conn, err := d.DialContext(ctx, "tcp", c.addr())
	if err != nil {
		return nil, nil, fmt.Errorf("xmppside: dial %s: %w", c.addr(), err)
	}
	// The handshake is bounded by closing conn, not by a context ending:
	// mellium v0.23.0 watches the negotiation's context from a goroutine
	// that may outlive the negotiation, and a context ending right after it
	// (a deferred cancel) can set a past deadline on the live connection,
	// failing its next read or write with "i/o timeout".
	hctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	stop := context.AfterFunc(hctx, func() { conn.Close() })
	sess, err := component.NewSession(context.WithoutCancel(hctx), c.domain, []byte(c.cfg.Secret), conn)
	if !stop() { // hctx ended and closed conn
		err = fmt.Errorf("%w (%v)", hctx.Err(), err)
	}
	if err != nil {
		conn.Close()
		var se stream.Error
		if errors.As(err, &se) {
			if se.Err == stream.NotAuthorized.Err {
				return nil, nil, fmt.Errorf("%w: %s answered %s", ErrAuthentication, c.addr(), se.Err)
			}
			return nil, nil, fmt.Errorf("xmppside: handshake with %s refused (%s): %w", c.addr(), se.Err, err)
		}
		return nil, nil, fmt.Errorf("xmppside: handshake with %s: %w", c.addr(), err)
	}
	return conn, sess, nil
}

// serve runs one session until it ends or ctx ends. Once the session is
// installed, the sender (outbox.go) re-announces every puppet's presence
// and probes every contact the puppets are subscribed to, since the server
// kept none of that for the component. When ctx ends serve performs the
// clean shutdown and returns nil.
func (c *Component) serve(ctx context.Context, conn net.Conn, sess *xmpp.Session) error {
	c.log.Info("xmpp component connected", "server", c.addr(), "connection", c.connects.Add(1))
	c.users.resetResources()
	c.setSession(sess)
	c.setLink(true)
	c.out.kick()
	defer c.setLink(false)

	// The handler outlives ctx by the goodbye: it still answers the server
	// and may report what it hears until the stream is closed.
	hctx, stopHandler := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHandler()
	served := make(chan error, 1)
	go func() { served <- sess.Serve(c.handler(hctx)) }()

	select {
	case err := <-served:
		c.detachSession()
		conn.Close()
		if err == nil {
			err = errors.New("xmppside: server closed the stream")
		}
		return err
	case <-ctx.Done():
	}
	c.detachSession()

	sctx, cancel := context.WithTimeout(hctx, c.cfg.ShutdownTimeout)
	defer cancel()
	n := c.goodbye(sctx, sess)
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

// announce sends each puppet's current presence to its From/Both contacts,
// probes its To/Both contacts and asks its Pending Out contacts again.
func (c *Component) announce(ctx context.Context, sess *xmpp.Session) {
	sent, probes, requests := c.payOwed(ctx, sess), 0, 0
	for _, mxid := range c.subs.puppets() {
		if ctx.Err() != nil {
			return
		}
		puppet, err := c.ns.PuppetJID(mxid)
		if err != nil {
			c.log.Warn("no puppet for stored subscription", "mxid", mxid, "err", err)
			continue
		}
		if cur, ok := c.currentPresence(ctx, mxid); ok {
			p := c.outPresence(puppet, cur.presence)
			to := c.subs.from(nil, mxid)
			if err := c.writeFanOut(ctx, sess, &p, to); err != nil {
				c.log.Warn("re-announcing presence failed", "puppet", puppet, "err", err)
				return
			}
			c.reportDelivered(mxid, cur, len(to))
			sent += len(to)
		}
		to := c.subs.to(mxid)
		probe := stanza.Presence{Header: stanza.Header{From: string(puppet)}, Type: stanza.Probe}
		if err := c.writeFanOut(ctx, sess, &probe, to); err != nil {
			c.log.Warn("probing contacts failed", "puppet", puppet, "err", err)
			return
		}
		probes += len(to)
		// The puppet's unanswered requests: the answer may have been lost
		// (bounced while the component was away, or the component died
		// before storing it). A contact who approved already gets an
		// automatic subscribed from their server (RFC 6121 §3.1.3).
		ask := c.subs.pendingOut(mxid)
		sub := stanza.Presence{Header: stanza.Header{From: string(puppet)}, Type: stanza.Subscribe}
		if err := c.writeFanOut(ctx, sess, &sub, ask); err != nil {
			c.log.Warn("asking contacts again failed", "puppet", puppet, "err", err)
			return
		}
		requests += len(ask)
	}
	c.log.Info("presence re-announced", "presences", sent, "probes", probes, "requests", requests)
}

// goodbye sends unavailable from every puppet to every contact that may see
// it. It returns the number sent.
func (c *Component) goodbye(ctx context.Context, sess *xmpp.Session) int {
	n := c.payOwed(ctx, sess)
	for _, mxid := range c.subs.puppets() {
		puppet, err := c.ns.PuppetJID(mxid)
		if err != nil {
			continue
		}
		to := c.subs.from(nil, mxid)
		p := stanza.Presence{Header: stanza.Header{From: string(puppet)}, Type: stanza.Unavailable}
		if err := c.writeFanOut(ctx, sess, &p, to); err != nil {
			c.log.Warn("sending unavailable failed", "puppet", puppet, "err", err)
			return n
		}
		n += len(to)
	}
	return n
}

// writeFanOut sends p to every JID in to, in batches.
func (c *Component) writeFanOut(ctx context.Context, sess *xmpp.Session, p *stanza.Presence, to []mapping.BareJID) error {
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
func (c *Component) fanOut(w xmlstream.TokenWriter, p *stanza.Presence, to []mapping.BareJID) (int, error) {
	q := *p
	for i, j := range to {
		q.To, q.ID = string(j), c.nextID()
		if _, err := q.WriteXML(w); err != nil {
			return i, err
		}
	}
	return len(to), nil
}

// writeStanzas writes stanzas to sess. Never call it from the stream
// handler after the handler wrote to its own token writer (the handler
// holds the write lock from its first write until it returns).
func (c *Component) writeStanzas(sess *xmpp.Session, toks ...xml.TokenReader) error {
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
