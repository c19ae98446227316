package xmppside

import (
	"context"
	"encoding/xml"
	"io"
	"strconv"
	"strings"
	"time"

	"mellium.im/xmlstream"
	xstanza "mellium.im/xmpp/stanza"

	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/xmppside/stanza"
)

// IQ payload namespaces the component answers.
const (
	NSDiscoInfo  = "http://jabber.org/protocol/disco#info"
	NSDiscoItems = "http://jabber.org/protocol/disco#items"
	NSGateway    = "jabber:iq:gateway"
	NSLast       = "jabber:iq:last"
	NSPing       = "urn:xmpp:ping"
)

var (
	gatewayFeatures = []string{NSDiscoInfo, NSDiscoItems, NSGateway, NSPing}
	puppetFeatures  = []string{NSDiscoInfo, NSLast, NSPing, stanza.NSIdle}
)

// handleIQ answers one IQ. Every get or set gets exactly one reply from
// here: left unanswered, mellium would write its own error without a from,
// and with an unparsable from it would end the stream.
func (c *Component) handleIQ(ctx context.Context, r xml.TokenReader, w xmlstream.TokenWriter, start xml.StartElement) {
	h := stanza.ParseHeader(start)
	typ := stanza.ParseIQType(h.Type)
	switch typ {
	case stanza.IQResult, stanza.IQError:
		c.log.Debug("ignoring iq response", "type", h.Type, "from", clip(h.From), "id", clip(h.ID))
		return
	case stanza.IQInvalid:
		c.plog.Warn("iq of unknown type", "type", clip(h.Type), "from", clip(h.From))
		c.replyError(w, h, xstanza.Modify, xstanza.BadRequest)
		return
	}
	from, ok := c.checkFrom(h)
	if !ok {
		// Refused, but answered so that mellium does not: with no to, the
		// server drops the error instead of routing it anywhere.
		reply := stanza.Header{Name: "iq", ID: h.ID, Type: stanza.IQError.String(), From: c.cfg.ComponentDomain}
		_, _ = xmlstream.Copy(w, stanza.Wrap(reply, xstanza.Error{Type: xstanza.Cancel, Condition: xstanza.Forbidden}.TokenReader()))
		return
	}
	to, prob := c.checkTo(h)
	if prob != nil {
		c.replyError(w, h, xstanza.Cancel, prob.cond)
		return
	}
	payload, ok := firstChild(r)
	if !ok {
		c.replyError(w, h, xstanza.Modify, xstanza.BadRequest)
		return
	}
	q := iqQuery{h: h, typ: typ, from: from, to: to, payload: payload, r: r, w: w}
	switch name := payload.Name; {
	case name.Space == NSPing && name.Local == "ping" && typ == stanza.IQGet:
		c.result(w, h, nil)
	case name.Space == NSDiscoInfo && name.Local == "query" && typ == stanza.IQGet:
		c.discoInfo(q)
	case name.Space == NSDiscoItems && name.Local == "query" && typ == stanza.IQGet:
		c.result(w, h, &tokens{})
	case to.user == "" && name.Space == NSGateway && name.Local == "query":
		c.gateway(q)
	case to.user != "" && name.Space == NSLast && name.Local == "query" && typ == stanza.IQGet:
		c.lastActivity(ctx, q)
	default:
		c.replyError(w, h, xstanza.Cancel, xstanza.ServiceUnavailable)
	}
}

// iqQuery is one IQ being answered.
type iqQuery struct {
	h       stanza.Header
	typ     stanza.IQType
	from    sender
	to      dest
	payload xml.StartElement
	r       xml.TokenReader // positioned inside payload
	w       xmlstream.TokenWriter
}

// discoInfo answers XEP-0030 disco#info: the domain is a gateway to Matrix,
// a puppet is a client.
func (c *Component) discoInfo(q iqQuery) {
	if attr(q.payload, "node") != "" {
		c.replyError(q.w, q.h, xstanza.Cancel, xstanza.ItemNotFound)
		return
	}
	var t tokens
	t.start(NSDiscoInfo, "query")
	if q.to.user == "" {
		t.empty("", "identity", "category", "gateway", "type", "matrix", "name", "Matrix")
		for _, f := range gatewayFeatures {
			t.empty("", "feature", "var", f)
		}
	} else {
		t.empty("", "identity", "category", "client", "type", "pc", "name", string(q.to.user))
		for _, f := range puppetFeatures {
			t.empty("", "feature", "var", f)
		}
	}
	t.end(NSDiscoInfo, "query")
	c.result(q.w, q.h, &t)
}

// gateway answers XEP-0100 jabber:iq:gateway: get returns the prompt, set
// turns a Matrix user ID into its puppet's JID.
func (c *Component) gateway(q iqQuery) {
	var t tokens
	t.start(NSGateway, "query")
	if q.typ == stanza.IQGet {
		t.elem("", "desc", "Enter the Matrix user ID of the contact, e.g. @bob:example.org")
		t.elem("", "prompt", "Matrix user ID")
	} else {
		prompt := strings.TrimSpace(childText(q.r, "prompt"))
		id, err := mapping.NewUserID(prompt)
		var puppet mapping.BareJID
		if err == nil {
			puppet, err = c.ns.PuppetJID(id)
		}
		if err != nil {
			c.plog.Info("gateway prompt is no Matrix user ID", "from", q.from.jid.String(), "prompt", clip(prompt))
			c.replyError(q.w, q.h, xstanza.Modify, xstanza.NotAcceptable)
			return
		}
		t.elem("", "jid", string(puppet))
	}
	t.end(NSGateway, "query")
	c.result(q.w, q.h, &t)
}

// lastActivity answers XEP-0012 for a puppet from its last presence. Only
// contacts that may see the puppet's presence learn it.
func (c *Component) lastActivity(ctx context.Context, q iqQuery) {
	if q.from.bare == "" || !c.subs.get(q.to.user, q.from.bare).From {
		c.replyError(q.w, q.h, xstanza.Auth, xstanza.Forbidden)
		return
	}
	cur, ok := c.currentPresence(ctx, q.to.user)
	if !ok {
		c.replyError(q.w, q.h, xstanza.Cancel, xstanza.ServiceUnavailable)
		return
	}
	seconds := lastActiveSeconds(cur.presence, cur.at, c.now())
	var t tokens
	t.start(NSLast, "query", "seconds", strconv.FormatInt(seconds, 10))
	if s := mapping.TruncateStatus(cur.presence.Status, c.cfg.MaxStatusBytes); s != "" {
		t.text(s)
	}
	t.end(NSLast, "query")
	c.result(q.w, q.h, &t)
}

// lastActiveSeconds is the idle time XEP-0012 reports: 0 while the user is
// active, else the time since the last activity, falling back on the time
// of the presence change.
func lastActiveSeconds(p mapping.Presence, updated, now time.Time) int64 {
	var since time.Time
	switch {
	case p.State.Online() && p.CurrentlyActive:
		return 0
	case !p.LastActive.IsZero():
		since = p.LastActive
	case !updated.IsZero():
		since = updated
	default:
		return 0
	}
	d := now.Sub(since)
	if d < 0 {
		return 0
	}
	return int64(d / time.Second)
}

// result writes an IQ result with an optional payload.
func (c *Component) result(w xmlstream.TokenWriter, h stanza.Header, payload xml.TokenReader) {
	if _, err := xmlstream.Copy(w, stanza.Wrap(h.Reply(stanza.IQResult.String()), payload)); err != nil {
		c.plog.Warn("writing iq result failed", "err", err)
	}
}

// firstChild returns the first child element of the element r is in.
func firstChild(r xml.TokenReader) (xml.StartElement, bool) {
	for {
		tok, err := r.Token()
		if tok == nil && err != nil {
			return xml.StartElement{}, false
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return t, true
		case xml.EndElement:
			return xml.StartElement{}, false
		}
		if err != nil {
			return xml.StartElement{}, false
		}
	}
}

// childText returns the text of the first direct child named local of the
// element r is in (bounded), consuming r up to that child's end.
func childText(r xml.TokenReader, local string) string {
	const limit = 4096
	depth := 0
	in := false
	var b strings.Builder
	for {
		tok, err := r.Token()
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 1 && t.Name.Local == local {
				in = true
			}
		case xml.CharData:
			if in && depth == 1 && b.Len()+len(t) <= limit {
				b.Write(t)
			}
		case xml.EndElement:
			if depth == 0 {
				return b.String()
			}
			if in && depth == 1 {
				return b.String()
			}
			depth--
		}
		if err != nil {
			return b.String()
		}
	}
}

func attr(start xml.StartElement, local string) string {
	for _, a := range start.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

// tokens builds a small payload; it is also its own token reader.
type tokens struct {
	toks []xml.Token
	i    int
}

func (t *tokens) start(ns, local string, attrs ...string) {
	el := xml.StartElement{Name: xml.Name{Space: ns, Local: local}}
	for i := 0; i+1 < len(attrs); i += 2 {
		el.Attr = append(el.Attr, xml.Attr{Name: xml.Name{Local: attrs[i]}, Value: attrs[i+1]})
	}
	t.toks = append(t.toks, el)
}

func (t *tokens) end(ns, local string) {
	t.toks = append(t.toks, xml.EndElement{Name: xml.Name{Space: ns, Local: local}})
}

func (t *tokens) text(s string) { t.toks = append(t.toks, xml.CharData(s)) }

func (t *tokens) empty(ns, local string, attrs ...string) {
	t.start(ns, local, attrs...)
	t.end(ns, local)
}

func (t *tokens) elem(ns, local, text string) {
	t.start(ns, local)
	t.text(text)
	t.end(ns, local)
}

func (t *tokens) Token() (xml.Token, error) {
	if t.i >= len(t.toks) {
		return nil, io.EOF
	}
	t.i++
	return t.toks[t.i-1], nil
}
