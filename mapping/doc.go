// Package mapping is the protocol-neutral presence model of the bridge and
// every translation into and out of it. It imports only the standard library.
//
// The map of the package:
//
//   - [Presence] and [State]: what the bridge knows of one person's presence,
//     whichever network it came from (modelled on Telepathy's presence types).
//   - [XMPPPresence] and [Show]: one XMPP <presence/> as RFC 6121 and
//     XEP-0319 describe it.
//   - [MatrixPresence] and [MatrixState]: one Matrix m.presence content.
//   - [Translator] with its [Table]: XMPP ⇄ normalized ⇄ Matrix. The default
//     table is the one in the README; the config can override it.
//   - [Resources]: aggregation of a user's XMPP resources into one presence.
//   - Identity: [GhostMXID]/[ParseGhostMXID] turn a bare JID into the Matrix
//     user ID of its ghost and back; [PuppetJID]/[ParsePuppetJID] turn a Matrix
//     user ID into the JID of its puppet and back. [Namespace] holds the
//     prefix and domains that make those addresses.
//
// Nothing here does I/O, logs or allocates on the hot path: presence
// translation is called for every event that crosses the bridge.
package mapping
