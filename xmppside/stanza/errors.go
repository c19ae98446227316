package stanza

import (
	"encoding/xml"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/stanza"
)

// ErrorReply returns a stanza error reply to h: same name and id, type
// "error", from and to swapped, carrying the condition. from overrides the
// reply's from when not empty (replies to stanzas addressed outside the
// component must come from the component domain).
func ErrorReply(h Header, from string, typ stanza.ErrorType, cond stanza.Condition) xml.TokenReader {
	r := h.Reply("error")
	if from != "" {
		r.From = from
	}
	return xmlstream.Wrap(stanza.Error{Type: typ, Condition: cond}.TokenReader(), r.Start())
}

// Wrap returns payload wrapped in a stanza with header h.
func Wrap(h Header, payload xml.TokenReader) xml.TokenReader {
	return xmlstream.Wrap(payload, h.Start())
}
