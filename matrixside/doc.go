// Package matrixside is the Matrix side of the bridge: an application
// service that shows XMPP users as ghosts on a Matrix homeserver, carries
// out what the core asks of them (bridge.MatrixActor), and reports Matrix
// users' presence, memberships and opt-outs to the core
// (bridge.MatrixObserver). It never talks to the bus itself.
//
// The map of the package:
//
//   - [Config] (the "matrix" section of config.yaml), [Registration] for
//     `presence-bridge generate-registration`, [DetectBusy] to learn
//     whether the homeserver has MSC3026 busy presence before building the
//     mapping.Translator.
//   - [Side], made by [New] and run by [Side.Run], which serves the
//     appservice API in an http.Server of its own (with timeouts) and runs
//     the workers below until its context ends; Run returns only after all
//     of them, and the server's handlers, have exited.
//   - Appservice API in (appservice.go, txn.go, txnlog.go): the hs_token
//     check, then transactions handled in order, one at a time, before the
//     answer (a failed durable report makes it a 500, and the homeserver
//     sends the transaction again), de-duplicated across restarts; user
//     queries register ghosts.
//   - Ghost presence out (presence_out.go, outbox.go, ghosts.go):
//     [Side.ShowGhost] never blocks; the outbox keeps only the latest
//     wanted state per ghost, sends only real changes, honours 429
//     retry_after_ms and backs off on 5xx and network errors behind one
//     gate for all ghosts. It does not coalesce by time: the core does.
//     Ghosts are registered and named on first use.
//   - Memberships out (membership_out.go): [Side.GhostMembership] makes a
//     ghost open a direct chat (with the bot invited, so that /sync sees
//     the peer), join, reject or leave, after showing GhostMembership.Before
//     (a revoked ghost goes offline, and lingers a second so that syncing
//     clients see it, before it leaves).
//   - Memberships in (membership_in.go, rooms.go): m.room.member events
//     that concern a ghost, the ghost's own included, are reported
//     natively addressed; rooms.go remembers who shares which room.
//   - Presence in (presence_in.go, sync.go): MSC2409 m.presence in
//     transactions (Synapse), /sync as the bot (Dendrite), polling
//     GET /presence of linked users; only changes are reported; ghosts and
//     the bot never are. health.go: when the homeserver cannot be reached
//     for matrix.offline_grace, the Matrix users believed online are
//     reported offline, and read again once it answers.
//   - Commands (commands.go): "!presence off|on|help" from a Matrix user
//     become opt-out reports, answered by the bot.
//
// State: the side writes only the pb_txns bucket (transaction ids). It
// reads pb_links (the core's) for the room of a link and the users to
// poll; the core learns rooms from the membership reports.
//
// mautrix-go (maunium.net/go/mautrix) does the Matrix work:
// appservice.Registration, appservice.AppService with its router (user
// and alias queries, ping) and IntentAPI for the ghosts (registration,
// display name, createRoom, invite, join, leave), mautrix.Client with
// DefaultSyncer for the bot's /sync (a presence filter, set_presence
// offline) and GET /versions, mautrix.HTTPError for the homeserver's
// errors, and the id and event types throughout. Where it has gaps, a
// thin wrapper says which, at its definition:
//   - a wrong hs_token gets 403 M_FORBIDDEN, also in the legacy
//     access_token query form (mautrix: 401, header only) — Side.Handler;
//   - the legacy un-prefixed paths are served — splitRoute;
//   - transactions are handled before the answer, with a 500 when a
//     durable report fails (mautrix answers first and hands the events to
//     a channel) — serveTransaction; a malformed event is skipped, not the
//     whole transaction — rawTransaction;
//   - transaction ids are kept across restarts (mautrix: memory only) —
//     txnLog;
//   - clearing a status needs "status_msg": "", which ReqPresence omits —
//     putPresence; a GET of the display name answering 404 means none —
//     ghosts.register; a ghost the homeserver lost is registered again —
//     ghosts.reregister;
//   - last_active_ago absent and 0 look alike in RespPresence and
//     PresenceEventContent — presenceContent;
//   - mautrix logs with zerolog, the project with slog — zerologFor.
//
// The library never gets to exit the process or to retry on its own:
// EnsureAppserviceConnection and AppService.Start are not used, and its
// clients make one attempt per request (the outbox and the transport
// retry), except the bot's join of a room it was invited to.
package matrixside
