// Package xmppside is the XMPP side of the bridge: an XEP-0114 external
// component that gives every Matrix user a puppet JID on the component
// domain (mapping.Namespace.PuppetJID). It reports what XMPP users do to
// the core through a [bridge.XMPPObserver] and carries out the core's
// commands as a [bridge.XMPPActor].
//
// The map of the package:
//
//   - config.go: [Config] (the "xmpp" section of config.yaml), [Default],
//     [Config.Validate].
//   - component.go: [Component], [New], [Component.Run]: the connect, serve,
//     reconnect loop with capped exponential backoff and jitter (backoff.go),
//     and the give-up on a refused secret ([ErrAuthentication]).
//   - session.go: one stream: XEP-0114 handshake (a new mellium session per
//     connection), the clean shutdown (unavailable from every puppet, then
//     </stream:stream>), batched fan-out writes.
//   - outbox.go: [Component.ShowPuppet] and the sender, the one goroutine
//     that writes puppet presence: the announce and re-probe after every
//     connect, then each change, latest only. puppets.go keeps the last
//     presence each puppet was asked to show.
//   - grace.go: after Config.OfflineGrace without a stream, the XMPP users
//     last reported online are reported offline.
//   - handler.go: the stream handler, where addresses are validated once
//     (typed mapping.BareJID and mapping.UserID from there on). It never
//     returns an error (that would end the stream): bad stanzas are logged
//     and dropped or answered with a stanza error. Spoofed senders (no
//     from, an invalid from, or a from on the component domain) are
//     refused. It handles presence, IQs and messages itself rather than
//     through mellium's mux: the mux calls a presence handler once per
//     child element, and its default IQ error has no from (and ends the
//     stream when the sender's from does not parse).
//   - presence_in.go: presence from XMPP users to puppets, aggregated per
//     user over resources (users.go, mapping.Resources) and reported once
//     per change of the aggregate.
//   - presence_out.go: a puppet's current presence, probe answers.
//   - roster.go: [Inbound] and [Outbound], the RFC 6121 Appendix A state
//     machine as pure functions; subscription.go applies them with
//     compare-and-set on the subscriptions bucket, reports inbound
//     transitions and carries out [Component.SendSubscription]; contacts.go
//     is the in-memory index of the bucket used for fan-out.
//   - commands.go: optout/optin/help as chat messages to the component
//     domain.
//   - iq.go: disco#info (the domain is a gateway, puppets are clients),
//     XEP-0100 jabber:iq:gateway, XEP-0012 last activity, XEP-0199 ping;
//     anything else gets service-unavailable.
//   - stanza/: decoding and encoding of presence stanzas (show, status,
//     priority, XEP-0319 idle), stanza headers and IQ types.
//
// # Port contract
//
// Reports, to the [bridge.XMPPObserver] given to New:
//
//   - XMPPPresence: the aggregate presence of an XMPP user over all their
//     resources, once per change. When the last resource goes, the
//     aggregate is offline with the status the person last set while
//     available: the text of an unavailable stanza is not their status
//     (servers fill it with their own reasons). After Config.OfflineGrace
//     without a stream, every user last reported online is reported
//     offline the same way; the re-probe after the reconnect brings the
//     real presence back. A failed report is repaired by the next change.
//   - XMPPSubscription: a subscription stanza from a contact to a puppet
//     that changed the pair's RFC 6121 state (a request re-sent at every
//     login is not news). The state is stored before the report, so an
//     observer may answer at once with SendSubscription; when the report
//     fails, the transition is undone and the server's re-send is news
//     again.
//   - XMPPOptOut: an optout or optin command; the user is told whether it
//     was recorded.
//
// Reports are made from the stream handler before it writes anything, so
// an observer may call SendSubscription from within a report.
//
// Commands, [bridge.XMPPActor]:
//
//   - ShowPuppet never blocks: the presence is kept (for probes, approvals
//     and reconnects) and fanned out to the puppet's From/Both contacts by
//     the sender; older (by Seq) and repeated commands change nothing.
//   - SendSubscription sends the stanza (RFC 6121 A.3), then stores the
//     transition: subscribed that approves a request is followed by the
//     puppet's current presence, unsubscribed that revokes an approval by
//     unavailable. While the stream is down it returns [ErrNotConnected],
//     so the command comes again; a repeated command sends nothing new.
//
// The subscription policy (accept, reject, ask) is the core's: the
// component reports requests and applies the answers, and never reads
// Config.SubscriptionPolicy.
//
// # State
//
// The component is the only writer of the subscriptions bucket
// (bridge.Store.Subscriptions, key bridge.PairKey(Matrix user ID, bare
// JID)), every transition a compare-and-set computed on the state it
// replaces; the in-memory index is loaded at start and then set from the
// stored results. It writes nothing else. It reads the core's presence
// bucket (key bridge.PresenceKey(mapping.NetworkMatrix, Matrix user ID))
// for a puppet it has not been told about since it started.
//
// # Facts about the server this relies on
//
// Prosody (0.12) routes every stanza for the component domain to the
// component unchanged and never answers probes for it; it probes from the
// user's full JID and re-sends pending subscribe at every login; it keeps
// nothing for a component that disconnects, so the component announces
// itself again after every connect and says goodbye before closing. A
// wrong secret is answered with the not-authorized stream error.
package xmppside
