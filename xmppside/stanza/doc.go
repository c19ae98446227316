// Package stanza reads and writes the parts of XMPP stanzas the XMPP side of
// the bridge needs and mellium.im/xmpp has no types for: the RFC 6121
// presence children <show/>, <status/>, <priority/>, XEP-0319 <idle/>, and
// the addressing header every stanza carries.
//
// The map of the package:
//
//   - [Header]: name, id, type, from and to of any stanza, read from its start
//     element without allocating JIDs, and the start element of a reply.
//   - [Presence] and [Type]: one presence stanza. [DecodePresence] never fails
//     on bad content (an unknown show, a priority out of range, a malformed
//     idle date): it keeps the RFC 6121 default and reports the problem in
//     [Presence.Problems], so that a hostile stanza cannot end the stream.
//     [Presence.WriteXML] encodes it.
//   - [ErrorReply]: the start element and payload of a stanza error.
//
// Decoding is on the hot path (every presence of every contact), so it works
// on the token stream directly and allocates little.
package stanza
