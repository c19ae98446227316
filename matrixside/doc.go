// Package matrixside is the Matrix side of the bridge: an application
// service that shows XMPP users as ghosts on a Matrix homeserver and
// reports Matrix users' presence and memberships to the core over the bus.
//
// The map of the package:
//
//   - [Config] (the "matrix" section of config.yaml), [Registration] and
//     [NewToken] for `presence-bridge generate-registration`, [DetectBusy]
//     to learn whether the homeserver has MSC3026 busy presence before
//     building the mapping.Translator.
//   - [Side], made by [New] and run by [Side.Run]. Run serves the
//     appservice API (appservice.go: hs_token check on every request,
//     transactions de-duplicated across restarts through the txns bucket,
//     user queries) and runs the workers below until its context ends.
//   - Ghost presence out (presence_out.go, outbox.go): presence commands
//     from the core (pb.v1.out.matrix.presence.*) are translated and
//     handed to the outbox, which keeps only the latest wanted state per
//     ghost, sends only real changes, at most one PUT per ghost per
//     coalesce_window, honours 429 retry_after_ms and backs off on 5xx and
//     network errors behind one gate for all ghosts. Ghosts are registered
//     on first use (ghosts.go).
//   - Membership out (membership_out.go): durable membership commands
//     (invite = open a direct chat, join, reject, leave) carried out as the
//     ghost; the room goes into the links bucket.
//   - Presence in (presence_in.go): MSC2409 ephemeral m.presence in
//     transactions, /sync as the bot (set_presence=offline) for rooms the
//     bot shares, and polling GET /presence for watched and linked users.
//     Only changes are published; ghosts and the bot are never reported.
//   - Membership in (txn.go, membership_in.go): m.room.member events that
//     concern a ghost become membership events on the bus, addressed
//     natively (Matrix ID for the Matrix user, bare JID for the ghost).
//     rooms.go remembers who shares which room with which ghost.
//   - client.go: the few client-server API calls the bridge makes, with
//     the as_token; errors are [*HTTPError]. Tokens are never logged.
//
// This package talks HTTP itself (net/http) rather than through mautrix:
// every behaviour required here (403 for a bad hs_token in either form,
// transaction de-duplication in the KV store, exact errcodes, status_msg ""
// to clear a status, control over 429 and backoff, set_presence=offline)
// needs code of its own, and the client calls are a dozen lines each.
package matrixside
