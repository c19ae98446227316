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
//     that writes puppet presence: the announce, re-probe and re-request
//     after every connect, then each change, latest only. puppets.go keeps
//     the last presence each puppet with contacts was asked to show.
//   - grace.go: after Config.OfflineGrace without a stream (counted from
//     the start too), the XMPP users last reported online are reported
//     offline. takeover.go: what a new process (a restart, a standby
//     taking over) reads back at start, and why nothing else is needed.
//   - handler.go: the stream handler, where addresses are validated once
//     (typed mapping.BareJID and mapping.UserID from there on). It never
//     returns an error (that would end the stream): bad stanzas are logged
//     and dropped or answered with a stanza error. Spoofed senders (no
//     from, an invalid from, or a from on the component domain) are
//     refused. It handles presence, IQs and messages itself rather than
//     through mellium's mux: the mux calls a presence handler once per
//     child element, and its default IQ error has no from (and ends the
//     stream when the sender's from does not parse).
//   - presence_in.go: presence from XMPP users to puppets, heard only from
//     people who hold a subscription with the puppet, aggregated per user
//     over resources (users.go, mapping.Resources) and reported once per
//     change of the aggregate.
//   - presence_out.go: a puppet's current presence, probe answers.
//   - roster.go: [Inbound] and [Outbound], the RFC 6121 Appendix A state
//     machine as pure functions; subscription.go applies them with
//     compare-and-set on the subscriptions bucket, reports inbound
//     transitions and carries out [Component.SendSubscription]; contacts.go
//     is the in-memory index of the bucket used for fan-out.
//   - commands.go: optout/optin/help as chat messages to the component
//     domain.
//   - limiter.go, refused.go, logs.go: the budgets of Config.Limits (token
//     buckets per address and per domain, bounded in keys), the counts of
//     what was refused ([Component.Refused], metric-ready), and the
//     bounded rate of the log lines a peer can cause.
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
//     login is not news, except once after a restart: a request stored
//     Pending In may not have been reported before the bridge died, so its
//     first re-send is reported again; observers must take a repeated
//     request calmly). The state is stored before the report, so an
//     observer may answer at once with SendSubscription; when the report
//     fails, the transition is undone and the server's re-send is news
//     again. Requests (subscribe) are budgeted per sender address and per
//     sender domain (Config.Limits); see "Hostile peers".
//   - XMPPOptOut: an optout or optin command; the user is told whether it
//     was recorded.
//
// Reports are made from the stream handler before it writes anything, so
// an observer may call SendSubscription from within a report.
//
// Commands, [bridge.XMPPActor]:
//
//   - ShowPuppet never blocks: for a puppet with contacts (any pair not
//     None) the presence is kept (for probes, approvals and reconnects)
//     and fanned out to the puppet's From/Both contacts by the sender;
//     older (by Seq) and repeated commands change nothing. For a puppet
//     without contacts nothing is kept: an approval then reads the core's
//     presence bucket, so the core should record a Matrix user's presence,
//     or tell it again, once a link needs it.
//   - SendSubscription applies RFC 6121 A.3, storing and sending in the
//     order that heals after a crash (see below): subscribed that approves
//     a request is followed by the puppet's current presence, unsubscribed
//     that revokes an approval by unavailable. While the stream is down it
//     returns [ErrNotConnected], so the command comes again; a repeated
//     command sends nothing new.
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
// replaces; a pair that returns to None is deleted (and None keys left by
// older versions are deleted at start). The in-memory index is loaded at
// start and then set from the stored results. It also writes the
// Directed bucket (bridge.Store.Directed, same keys): a contact whose From
// is being revoked is recorded as owed an unavailable before the
// revocation is stored, and the record deleted once the unavailable is
// written, so that a process dying in between leaves the unavailable to
// the next one, which sends it after its connect (directed.go). It
// reads the core's presence bucket (key bridge.PresenceKey(
// mapping.NetworkMatrix, Matrix user ID)) for a puppet it has not been
// told about since it started, and at start the last presence reported of
// the XMPP users holding a pair (bridge.PresenceKey(mapping.NetworkXMPP,
// bare JID)), so that a process taking over from one that died knows whom
// Matrix believes online (the offline grace runs from the start and
// reports them offline if no stream comes). Nothing else that
// a takeover needs is only in memory: puppets send presence only to the
// From/Both contacts of the subscriptions bucket and to the contacts owed
// an unavailable (no directed presence to anyone else), so the announce
// after the first connect and the goodbye reach everyone the last
// process showed a puppet to (takeover.go).
//
// Everything kept in memory is bounded: the index follows the bucket
// (whose growth the subscription budgets bound); XMPP users' resources
// and reported presence only for people with a pair, at most
// Limits.TrackedUsers of them (least recently heard evicted, see users.go)
// with at most Limits.ResourcesPerAddress resources each; puppets'
// presence only for puppets with a pair, forgotten with their last one;
// the rate limiters remember a bounded number of keys.
//
// # Hostile peers
//
// A gateway on the open federation hears from servers that can forge any
// number of their own users. Nothing is stored or reported for them
// without consent, and what they can ask for is budgeted:
//
//   - Presence (available, unavailable) to a puppet counts only from
//     someone who holds a subscription with that puppet (To, From, Both or
//     a pending request either way). A stranger's presence is ignored
//     (directed presence from a stranger asks nothing of its addressee,
//     RFC 6121 §4.6) and forgotten; a
//     stranger's probe gets unsubscribed (§4.3.2); a stranger's
//     subscribed, unsubscribe and unsubscribed change nothing and cost
//     nothing.
//   - A request (subscribe) that would reach the core spends a token of
//     the sender's address and of its domain (the server's own domains,
//     Limits.LocalDomains, have no per-domain budget: their users are its
//     accounts, not forgeries of a peer). Over budget it is ignored:
//     nothing stored, reported or answered. Silence is legal (a request
//     may stay pending for as long as its addressee likes); the contact's
//     server re-sends it at the contact's next login, so a person who was
//     merely unlucky is heard later; and unsubscribed would deny a real
//     person for good while telling a spammer the address works, one
//     stanza for each of theirs.
//   - Commands (chat messages to the domain) are run and answered only
//     for chat and normal messages from people (a JID with a local part,
//     not on the component's domain), within their own budgets: a bot
//     that answers everything cannot loop with the component.
//   - Log lines a peer can cause are bounded per message (logs.go).
//
// [Component.Refused] counts what was refused or evicted, by reason.
//
// # What XEP-0114 cannot guarantee
//
// The component stream has no acknowledgements: a stanza written may be
// lost if the stream or the process dies, a stanza sent to the component
// while it has no stream is bounced by the server (and the bounce goes to
// the sender), and the bucket and the server's rosters cannot be changed
// in one step. The component makes every state it can be left in heal:
//
//   - After every connect it announces each puppet's presence to its
//     From/Both contacts, probes its To/Both contacts (the contact's
//     server answers unsubscribed if it no longer approves the puppet:
//     a lost unsubscribed heals) and sends subscribe again to its Pending
//     Out contacts (a contact who approved already gets an automatic
//     subscribed from their server, RFC 6121 §3.1.3: a lost subscribed
//     heals).
//   - subscribe, subscribed and unsubscribed commands are stored first,
//     then sent; unsubscribe is sent first, then stored. A crash in
//     between leaves Pending Out (asked again after the connect), From
//     while the contact still asks (their server re-sends the request at
//     their next login and it is approved again at once), not From while
//     the contact still thinks it is (their login probe gets
//     unsubscribed), or To while the contact no longer approves (the
//     probe above). The core's commands come again until they succeed.
//   - Requests stored Pending In are reported again once after a restart
//     (above), and the contact's server re-sends its requests at every
//     login.
//
// What no stanza can repair: a contact's own unsubscribe (they stop
// watching a puppet) lost in a crash or bounced while the component was
// away. Nothing in RFC 6121 lets a component ask whether a contact is
// still subscribed to it, so the pair stays From until the contact's next
// subscription stanza; the puppet's presence keeps going to a contact
// whose server no longer wants it (and may drop it). Nor can the
// component know what happened to stanzas written just before the stream
// broke: the repairs above are idempotent, so they are simply done again.
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
