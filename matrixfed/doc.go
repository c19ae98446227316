// Package matrixfed is the Matrix side of the bridge in federation mode
// (matrix.mode: federation): the gateway takes part in the Matrix
// federation under a server name of its own, with no homeserver. XMPP
// users are its users, @<escaped JID>:<server_name> (the ghosts, escaped
// as in mapping.Namespace.GhostMXID). It implements bridge.MatrixActor
// and reports to a bridge.MatrixObserver, like matrixside, and imports of
// the project only mapping and bridge.
//
// The map of the package:
//
//   - [Config] (the "matrix.federation" section), [New], [Gateway.Run]
//     (gateway.go): the signing key, generated on first start and kept in
//     data_dir (key.go); the TLS listener; mautrix's KeyServer for
//     /_matrix/key/v2/server, /_matrix/federation/v1/version and
//     /.well-known/matrix/server; every other federation endpoint behind
//     X-Matrix authentication (mautrix's ServerAuth: unsigned requests,
//     bad signatures and unknown keys get 401), a bounded body
//     (max_request_bytes) and a token bucket per origin (limits.go: 429).
//     Log lines a peer can trigger are rate-limited per key.
//   - Inbound (inbound.go): PUT /v2/invite of a ghost (checked, signed
//     and returned; reported to the core, which asks the XMPP user);
//     PUT /v1/send: m.room.member PDUs of rooms with a ghost (sender of
//     the origin, signature checked) keep the membership and are reported
//     like matrixside's; m.presence EDUs become presence reports, only for
//     users of the origin who share a room with a ghost, and poll is
//     answered; profile, devices and keys stubs for the ghosts.
//   - Memberships out (membership.go): the core's Join after the XMPP user
//     approved: make_join, sign, send_join through the inviting server,
//     members taken from the returned state; Leave and Reject:
//     make_leave, sign, send_leave. Invite cannot be done: the gateway
//     hosts no rooms.
//   - Rooms (rooms.go): per room its version, inviting server, ghosts and
//     remote members, written through to the pb_federation bucket before
//     anything is acted on, so that a kill -9 loses nothing. From it come
//     the destinations of a ghost's presence: the servers of the members
//     joined to a room the ghost joined, and never any other.
//   - Presence out (presence.go): ShowGhost keeps the latest presence per
//     ghost; one queue and goroutine per destination sends signed
//     transactions of m.presence EDUs (presence, status_msg,
//     last_active_ago rendered at send time, currently_active), many
//     users per EDU, with back-off from retry_min to retry_max; a
//     destination down holds up no other. Online ghosts are pushed again
//     every presence_refresh (Synapse times remote users out after 30
//     minutes). The queue is not persisted: at start it is rebuilt from
//     the rooms and the core's pb_presence bucket.
//
// mautrix-go's federation packages do the protocol work: SigningKey,
// KeyServer, ServerAuth, the Client (MakeJoin, SendJoin, MakeLeave,
// SendLeave, SendTransaction, key fetches, server resolution) and
// federation/pdu (parsing, signing, event IDs, signature checks; it
// needs Go 1.27). What they lack is written here, each saying which gap
// it fills: the inbound /send and /invite handlers and the stubs, the
// transaction queue, a Content-Type on the client's PUT and POST
// (Dendrite answers 400 without one) and loopback addresses for tests
// (jsonContentType, newClient).
//
// Not done: the gateway does not resolve room state (it trusts the
// state send_join returns and the member events it receives, each signed
// by its sender's server), does not host rooms, and does not de-duplicate
// transaction IDs (handling a transaction twice is harmless).
package matrixfed
