// Package xmppside is the XMPP side of the bridge: an XEP-0114 external
// component that gives every Matrix user a puppet JID on the component
// domain (mapping.Namespace.PuppetJID) and carries presence and RFC 6121
// subscriptions between the XMPP server and the bus.
//
// The map of the package:
//
//   - config.go: [Config] (the "xmpp" section of config.yaml), [Default],
//     [Config.Validate].
//   - component.go: [Component], [New], [Component.Run]: the connect, serve,
//     reconnect loop with capped exponential backoff and jitter.
//   - session.go: one stream: XEP-0114 handshake (a new mellium session per
//     connection), the re-announce and re-probe after every connect, the
//     clean shutdown (unavailable from every puppet, then </stream:stream>),
//     batched fan-out writes.
//   - handler.go: the stream handler. It never returns an error (that would
//     end the stream): bad stanzas are logged and dropped or answered with a
//     stanza error. Spoofed senders (no from, an invalid from, or a from on
//     the component domain) are refused. It handles presence, IQs and
//     messages itself rather than through mellium's mux: the mux calls a
//     presence handler once per child element, and its default IQ error has
//     no from (and ends the stream when the sender's from does not parse).
//   - presence_in.go: presence from XMPP users to puppets, aggregated per
//     user over resources (users.go, mapping.Resources) and published to
//     bridge.In once per change of the aggregate.
//   - presence_out.go: presence commands from the core (bridge.Out), fanned
//     out to the puppet's From/Both contacts only; directed presence; probe
//     answers.
//   - roster.go: [Inbound] and [Outbound], the RFC 6121 Appendix A state
//     machine as pure functions; subscription.go applies them with the
//     subscription policy, persists with compare-and-set in the
//     subscriptions bucket and publishes durable subscription events;
//     contacts.go keeps an in-memory copy for fan-out.
//   - iq.go: disco#info (the domain is a gateway, puppets are clients),
//     XEP-0100 jabber:iq:gateway, XEP-0012 last activity, XEP-0199 ping;
//     anything else gets service-unavailable.
//   - stanza/: decoding and encoding of presence stanzas (show, status,
//     priority, XEP-0319 idle) and stanza headers.
//
// # Bus contract
//
// In (published by the component, Origin xmpp):
//
//   - KindPresence, User = bare JID, Presence = the aggregate of the user's
//     resources. Also stored in Store.Presence under (xmpp, bare JID).
//   - KindSubscription (durable), User = contact bare JID, Peer = Matrix user
//     ID of the puppet, Subscription.Type = the stanza received, for every
//     inbound subscription stanza that changed the state (and for requests
//     held under the "ask" policy).
//
// Out (consumed, Origin matrix):
//
//   - KindPresence, User = Matrix user ID: the puppet shows Presence to its
//     From/Both contacts. With Peer set to a JID, the puppet sends directed
//     presence to Peer only. Stored in Store.Presence under (matrix, user).
//   - KindSubscription (durable consumer [ConsumerName]), User = Matrix user
//     ID, Peer = contact bare JID: the puppet sends Subscription.Type to the
//     contact (subscribed approves a pending request and sends the current
//     presence; unsubscribed denies or revokes and sends unavailable). While
//     the component is disconnected, commands are redelivered later.
//
// Subscription states live in Store.Subscriptions under
// bridge.PairKey(matrix user, contact bare JID); this package is their only
// writer.
//
// # Facts about the server this relies on
//
// Prosody (0.12) routes every stanza for the component domain to the
// component unchanged and never answers probes for it; it probes from the
// user's full JID and re-sends pending subscribe at every login; it keeps
// nothing for a component that disconnects, so the component announces
// itself again after every connect and says goodbye before closing.
package xmppside
