package stanza

import (
	"encoding/xml"
)

// Namespaces used by the package.
const (
	// NSComponent is the stanza namespace of an XEP-0114 component stream.
	NSComponent = "jabber:component:accept"
	// NSClient is the stanza namespace of a client stream.
	NSClient = "jabber:client"
	// NSServer is the stanza namespace of a server-to-server stream.
	NSServer = "jabber:server"
	// NSIdle is XEP-0319 last user interaction in presence.
	NSIdle = "urn:xmpp:idle:1"
	// NSStanzaError is the namespace of RFC 6120 stanza error conditions.
	NSStanzaError = "urn:ietf:params:xml:ns:xmpp-stanzas"
	// NSXML is the namespace of the xml: prefix (xml:lang).
	NSXML = "http://www.w3.org/XML/1998/namespace"
)

// Header is the addressing of one stanza as written in its start element.
// From and To are left as received: callers parse them when they need to,
// which also lets them refuse an invalid address without dropping the rest.
type Header struct {
	// Name is the local name: presence, message or iq.
	Name string
	ID   string
	Type string
	From string
	To   string
}

// IsStanza reports whether name is a top-level stanza of a client, server
// or component stream.
func IsStanza(name xml.Name) bool {
	switch name.Local {
	case "presence", "message", "iq":
	default:
		return false
	}
	switch name.Space {
	case "", NSComponent, NSClient, NSServer:
		return true
	}
	return false
}

// ParseHeader reads the header attributes of a stanza start element.
// Attributes in a namespace other than none are ignored.
func ParseHeader(start xml.StartElement) Header {
	h := Header{Name: start.Name.Local}
	for _, a := range start.Attr {
		if a.Name.Space != "" {
			continue
		}
		switch a.Name.Local {
		case "id":
			h.ID = a.Value
		case "type":
			h.Type = a.Value
		case "from":
			h.From = a.Value
		case "to":
			h.To = a.Value
		}
	}
	return h
}

// Start returns the start element of a stanza with this header. Empty
// attributes are left out. The namespace is left empty: the stream writes
// its own.
func (h Header) Start() xml.StartElement {
	attrs := make([]xml.Attr, 0, 4)
	for _, a := range [...]struct{ k, v string }{{"type", h.Type}, {"id", h.ID}, {"from", h.From}, {"to", h.To}} {
		if a.v != "" {
			attrs = append(attrs, xml.Attr{Name: xml.Name{Local: a.k}, Value: a.v})
		}
	}
	return xml.StartElement{Name: xml.Name{Local: h.Name}, Attr: attrs}
}

// Reply returns the header of a reply to h of type typ: same name and id,
// from and to swapped.
func (h Header) Reply(typ string) Header {
	return Header{Name: h.Name, ID: h.ID, Type: typ, From: h.To, To: h.From}
}
