// Package core is the bridge's brain: it receives what the two sides
// observed (it implements bridge.XMPPObserver and bridge.MatrixObserver),
// decides who may see what, and tells the sides what to do (through
// bridge.XMPPActor and bridge.MatrixActor). It never talks to XMPP, Matrix
// or NATS itself: cmd wires it to the sides through bridge/transport, and
// its tests to in-memory fakes.
//
// Rules, each enforced here and proved by a test:
//   - Consent before creation: the core keeps and shows the presence of a
//     person only while they hold a link (asked or approved) with someone
//     on the other network; anyone else's is dropped and forgotten. An
//     in-memory index of linked people, loaded from the links bucket and
//     kept in step with the core's own link writes (it is their only
//     writer), decides. When a person's last link ends, their presence
//     record and everything the core held of them go; ended links are
//     deleted once both sides were told.
//   - Budgets: an XMPP subscription request that would create a link and
//     an invite takes a token from its address's, its domain's and the
//     bridge's budget (core.limits); over budget it is left unanswered.
//     With core.invite_local_only ghosts invite only users of the local
//     homeserver. [Core.Refusals] counts what was refused, by reason.
//   - Bounded memory: every map keyed by what a peer sends holds only
//     linked people, or keys that spent budget recently, or keys within a
//     coalescing window.
//   - Loop prevention: events about the bridge's own puppets and ghosts are
//     dropped, so presence the bridge set is never bridged back.
//   - Access: allow/deny lists of XMPP domains and Matrix servers.
//   - Opt-out: a person who opted out has no presence exported; on opting
//     out the other side sees them go offline once.
//   - Order: per user, an event with an older sequence never overrides a
//     newer one.
//   - Coalescing: per user, the first change in a quiet period goes out at
//     once; further changes within the coalescing window collapse into the
//     latest, sent when the window ends.
//   - Consent (DESIGN-NOTES §3): an XMPP subscribe to a puppet becomes an
//     invite from the XMPP user's ghost to the Matrix user; the Matrix user's
//     join approves, reject or leave denies or revokes. A Matrix user
//     inviting a ghost makes the puppet ask the XMPP user, whose answer
//     decides whether the ghost joins. Links are kept in the links bucket,
//     so a restart asks nobody again.
//
// Who may see presence on each network is enforced by that network: Prosody
// delivers a puppet's presence only to contacts the XMPP side lets see it
// (From/Both), and a homeserver shows a ghost's presence only to users who
// share a room with it. The core's part is to never create such a room or
// subscription without consent.
package core
