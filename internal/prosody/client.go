package prosody

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/component"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

const (
	loginTimeout = 10 * time.Second
	closeTimeout = 5 * time.Second
	sendTimeout  = 30 * time.Second // one Send without a context deadline
)

// ErrClosed is returned (wrapped) by Client.Wait when the connection ended
// before a matching stanza arrived.
var ErrClosed = errors.New("prosody: connection closed")

// Stanza is a received stanza (or other top-level element), decoded enough
// for assertions. Raw holds the complete element as XML.
type Stanza struct {
	Name      string // local name: "presence", "message", "iq", ...
	Type      string
	From      string
	To        string
	ID        string
	Show      string
	Status    string
	Priority  string
	IdleSince string // since attribute of XEP-0319 <idle xmlns='urn:xmpp:idle:1'/>
	Body      string // <body/> of a message
	Raw       string // full XML
}

// String returns the raw XML.
func (s Stanza) String() string { return s.Raw }

// Client is a logged-in XMPP client connected to Prosody over plain TCP.
// Every stanza it receives is recorded; see Wait and Received.
type Client struct {
	JID jid.JID // full JID actually bound by the server

	conn      net.Conn
	sess      *xmpp.Session
	serveDone chan struct{}
	serveErr  error // valid after serveDone is closed
	closeOnce sync.Once

	forget    bool // drop stanzas once Wait returned them
	component bool // an XEP-0114 component: no presence of its own

	mu       sync.Mutex
	received []Stanza
	consumed []bool        // consumed[i]: received[i] was returned by Wait
	notify   chan struct{} // closed and replaced whenever a stanza arrives
}

// Dial connects to the c2s port at addr (host:port) and authenticates as
// the bare JID user@domain with SASL PLAIN over plain TCP, then binds a
// resource. Prosody ignores the requested resource, so use Client.JID to
// learn the bound full JID. No initial presence is sent; use SendPresence
// for that. Close the client when done.
func Dial(ctx context.Context, addr, user, domain, password, resource string, opts ...Option) (*Client, error) {
	origin, err := jid.New(user, domain, resource)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}

	// mellium only authenticates on secure (TLS) streams unless the Secure bit
	// is cleared from the SASL feature's requirements. Loopback only!
	auth := xmpp.SASL("", password, sasl.Plain)
	auth.Necessary &^= xmpp.Secure
	nctx, done := negotiation(ctx, conn)
	sess, err := xmpp.NewClientSession(nctx, origin, conn, auth, xmpp.BindResource())
	done()
	if err != nil {
		conn.Close()
		return nil, err
	}

	return serve(sess.LocalAddr(), conn, sess, opts), nil
}

// serve makes the Client of an established session and starts reading.
func serve(addr jid.JID, conn net.Conn, sess *xmpp.Session, opts []Option) *Client {
	c := &Client{
		JID:       addr,
		conn:      conn,
		sess:      sess,
		serveDone: make(chan struct{}),
		notify:    make(chan struct{}),
	}
	for _, o := range opts {
		o(c)
	}
	go func() {
		defer close(c.serveDone)
		c.serveErr = c.sess.Serve(xmpp.HandlerFunc(c.handle))
	}()
	return c
}

// DialComponent connects to the component port at addr (host:port) as the
// XEP-0114 component domain with its secret. The Client it returns is a
// component: it may send from any JID on its domain (set from on every
// stanza), which is how a test plays a hostile server that forges its
// users. Close it when done.
func DialComponent(ctx context.Context, addr, domain, secret string, opts ...Option) (*Client, error) {
	origin, err := jid.Parse(domain)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	nctx, done := negotiation(ctx, conn)
	sess, err := component.NewSession(nctx, origin, []byte(secret), conn)
	done()
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := serve(origin, conn, sess, opts)
	c.component = true
	return c, nil
}

// negotiation returns the context a session negotiation runs under: never
// canceled, its time bounded by closing conn when ctx ends instead.
// mellium v0.23.0 watches the negotiation's context from a goroutine that
// can outlive the negotiation; a context that ends right after it (our
// deferred cancel) may then set a past deadline on the connection and fail
// the next write with "i/o timeout".
// Call done as soon as the negotiation returns.
func negotiation(ctx context.Context, conn net.Conn) (nctx context.Context, done func()) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return context.WithoutCancel(ctx), func() { stop() }
}

// Option changes a Client made by Dial.
type Option func(*Client)

// Forget makes the client drop every stanza once Wait has returned it,
// so that a long-running client that consumes what it receives does not
// grow. Received then lists only stanzas not yet returned.
func Forget() Option { return func(c *Client) { c.forget = true } }

// handle runs on the Serve goroutine for every received top-level element.
// It must not call the session's send methods (deadlock); replies are
// written to w instead.
func (c *Client) handle(w xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	// mellium blanks a "from" equal to our own bare JID; put it back so that
	// Raw and From show what the server sent.
	st := start.Copy()
	for i, a := range st.Attr {
		if a.Name.Local == "from" && a.Value == "" {
			st.Attr[i].Value = c.JID.Bare().String()
		}
	}

	// w is positioned after the start element and ends with its end element.
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	if _, err := xmlstream.Copy(enc, stripXMLNS(xmlstream.MultiReader(xmlstream.Token(st), w))); err != nil {
		return err
	}
	if err := enc.Flush(); err != nil {
		return err
	}
	s := parseStanza(buf.String())

	c.mu.Lock()
	c.received = append(c.received, s)
	c.consumed = append(c.consumed, false)
	close(c.notify)
	c.notify = make(chan struct{})
	c.mu.Unlock()

	// Acknowledge roster pushes (RFC 6121 §2.1.6); other get/set IQs get
	// mellium's default service-unavailable error.
	if s.Name == "iq" && s.Type == "set" && strings.Contains(s.Raw, "jabber:iq:roster") {
		_, err := xmlstream.Copy(w, stanza.IQ{ID: s.ID, Type: stanza.ResultIQ}.Wrap(nil))
		return err
	}
	return nil
}

// stripXMLNS removes namespace declaration attributes. The decoder has
// already resolved them into Name.Space and xml.Encoder declares them again,
// so keeping them would produce duplicate xmlns attributes.
func stripXMLNS(r xml.TokenReader) xml.TokenReader {
	return xmlstream.ReaderFunc(func() (xml.Token, error) {
		tok, err := r.Token()
		if start, ok := tok.(xml.StartElement); ok {
			attrs := start.Attr[:0:0]
			for _, a := range start.Attr {
				if a.Name.Space != "xmlns" && !(a.Name.Space == "" && a.Name.Local == "xmlns") {
					attrs = append(attrs, a)
				}
			}
			start.Attr = attrs
			tok = start
		}
		return tok, err
	})
}

// parseStanza extracts the fields of Stanza from raw XML.
func parseStanza(raw string) Stanza {
	var v struct {
		XMLName  xml.Name
		Type     string `xml:"type,attr"`
		From     string `xml:"from,attr"`
		To       string `xml:"to,attr"`
		ID       string `xml:"id,attr"`
		Show     string `xml:"show"`
		Status   string `xml:"status"`
		Priority string `xml:"priority"`
		Body     string `xml:"body"`
		Idle     *struct {
			Since string `xml:"since,attr"`
		} `xml:"urn:xmpp:idle:1 idle"`
	}
	_ = xml.Unmarshal([]byte(raw), &v) // best effort; Raw is always set
	s := Stanza{
		Name: v.XMLName.Local, Type: v.Type, From: v.From, To: v.To, ID: v.ID,
		Show: v.Show, Status: v.Status, Priority: v.Priority, Body: v.Body,
		Raw: raw,
	}
	if v.Idle != nil {
		s.IdleSince = v.Idle.Since
	}
	return s
}

// Send sends one raw XML stanza, e.g. `<message to='bob@localhost'
// type='chat'><body>hi</body></message>`. A missing namespace on the
// top-level presence/message/iq defaults to jabber:client, and mellium adds
// "id" and "from" if they are absent.
func (c *Client) Send(ctx context.Context, stanzaXML string) error {
	d := xml.NewDecoder(strings.NewReader(stanzaXML))
	var toks []xml.Token
	depth := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("prosody: parsing stanza: %w", err)
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		default:
			if len(toks) == 0 {
				continue // skip whitespace, comments etc. before the element
			}
		}
		toks = append(toks, xml.CopyToken(tok))
		if depth == 0 {
			break
		}
	}
	if len(toks) == 0 {
		return errors.New("prosody: Send: no XML element")
	}
	// Not sess.Send(ctx): in mellium v0.23.0 a context that ends after Send
	// returned can still set a past write deadline from Send's watcher
	// goroutine and fail a later write with "i/o timeout". The write is
	// bounded by an explicit deadline instead, under the stream's write lock.
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(sendTimeout)
	}
	tw := c.sess.TokenWriter()
	defer tw.Close()
	if err := c.conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	defer c.conn.SetWriteDeadline(time.Time{})
	for _, tok := range toks {
		if err := tw.EncodeToken(tok); err != nil {
			return err
		}
	}
	return tw.Flush()
}

// SendPresence sends a presence stanza. Empty strings are omitted, as is a
// zero priority.
func (c *Client) SendPresence(ctx context.Context, typ, to, show, status string, priority int) error {
	var b strings.Builder
	b.WriteString("<presence")
	writeAttr(&b, "type", typ)
	writeAttr(&b, "to", to)
	b.WriteString(">")
	writeElem(&b, "show", show)
	writeElem(&b, "status", status)
	if priority != 0 {
		writeElem(&b, "priority", strconv.Itoa(priority))
	}
	b.WriteString("</presence>")
	return c.Send(ctx, b.String())
}

func writeAttr(b *strings.Builder, name, value string) {
	if value == "" {
		return
	}
	fmt.Fprintf(b, " %s='", name)
	_ = xml.EscapeText(b, []byte(value))
	b.WriteString("'")
}

func writeElem(b *strings.Builder, name, value string) {
	if value == "" {
		return
	}
	fmt.Fprintf(b, "<%s>", name)
	_ = xml.EscapeText(b, []byte(value))
	fmt.Fprintf(b, "</%s>", name)
}

// Wait returns the first received stanza, not yet returned by an earlier
// Wait, for which pred is true, waiting until ctx ends for it to arrive. It
// returns an error wrapping ErrClosed once the connection is gone and
// nothing received matches.
func (c *Client) Wait(ctx context.Context, pred func(Stanza) bool) (Stanza, error) {
	for {
		c.mu.Lock()
		s, ok := c.takeLocked(pred)
		notify := c.notify
		c.mu.Unlock()
		if ok {
			return s, nil
		}

		select {
		case <-notify:
		case <-c.serveDone:
			// Check the buffer one last time, then give up.
			c.mu.Lock()
			s, ok := c.takeLocked(pred)
			c.mu.Unlock()
			if ok {
				return s, nil
			}
			return Stanza{}, fmt.Errorf("%w (%v)", ErrClosed, c.serveErr)
		case <-ctx.Done():
			return Stanza{}, ctx.Err()
		}
	}
}

// Take returns the first received stanza, not yet returned by Wait or
// Take, for which pred is true, without waiting.
func (c *Client) Take(pred func(Stanza) bool) (Stanza, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.takeLocked(pred)
}

// takeLocked returns and consumes the first unconsumed stanza matching
// pred. c.mu must be held.
func (c *Client) takeLocked(pred func(Stanza) bool) (Stanza, bool) {
	for i, s := range c.received {
		if c.consumed[i] || !pred(s) {
			continue
		}
		if c.forget {
			c.received = append(c.received[:i], c.received[i+1:]...)
			c.consumed = append(c.consumed[:i], c.consumed[i+1:]...)
		} else {
			c.consumed[i] = true
		}
		return s, true
	}
	return Stanza{}, false
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.serveDone }

// Received returns every stanza received so far, consumed or not (with
// Forget: only those not yet consumed).
func (c *Client) Received() []Stanza {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Stanza(nil), c.received...)
}

// Roster fetches the roster with a jabber:iq:roster get and returns bare JID
// -> subscription ("none", "to", "from", "both").
func (c *Client) Roster(ctx context.Context) (map[string]string, error) {
	items, err := c.RosterItems(ctx)
	if err != nil {
		return nil, err
	}
	roster := make(map[string]string, len(items))
	for j, it := range items {
		roster[j] = it.Subscription
	}
	return roster, nil
}

// RosterItem is one roster entry (RFC 6121 §2.1.2).
type RosterItem struct {
	Subscription string // "none", "to", "from", "both"
	// Ask is "subscribe" while the user's own request to the contact is
	// pending.
	Ask string
}

// RosterItems fetches the roster and returns bare JID -> item.
func (c *Client) RosterItems(ctx context.Context) (map[string]RosterItem, error) {
	id := "roster-" + randomID()
	err := c.Send(ctx, `<iq type='get' id='`+id+`'><query xmlns='jabber:iq:roster'/></iq>`)
	if err != nil {
		return nil, err
	}
	res, err := c.Wait(ctx, func(s Stanza) bool { return s.Name == "iq" && s.ID == id })
	if err != nil {
		return nil, fmt.Errorf("prosody: roster get: %w", err)
	}
	if res.Type != "result" {
		return nil, fmt.Errorf("prosody: roster get failed: %s", res.Raw)
	}
	var v struct {
		Items []struct {
			JID          string `xml:"jid,attr"`
			Subscription string `xml:"subscription,attr"`
			Ask          string `xml:"ask,attr"`
		} `xml:"jabber:iq:roster query>item"`
	}
	if err := xml.Unmarshal([]byte(res.Raw), &v); err != nil {
		return nil, fmt.Errorf("prosody: decoding roster: %w", err)
	}
	roster := make(map[string]RosterItem, len(v.Items))
	for _, it := range v.Items {
		roster[it.JID] = RosterItem{Subscription: it.Subscription, Ask: it.Ask}
	}
	return roster, nil
}

// Close sends unavailable presence, closes the stream and the connection and
// waits (bounded) for the receive loop to end. It is safe to call more than
// once and after the server went away.
func (c *Client) Close() {
	c.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		select {
		case <-c.serveDone: // connection already gone
		default:
			if !c.component {
				_ = c.SendPresence(ctx, "unavailable", "", "", "", 0)
			}
			// Not sess.SetCloseDeadline: it races with Serve in mellium v0.23.0.
			_ = c.conn.SetReadDeadline(time.Now().Add(closeTimeout))
			_ = c.sess.Close()
			select {
			case <-c.serveDone:
			case <-ctx.Done():
			}
		}
		_ = c.conn.Close()
		<-c.serveDone
	})
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
