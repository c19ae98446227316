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
//     appservice API in an http.Server of its own and runs the workers
//     below until its context ends; Run returns only after all of them,
//     and the server's handlers, have exited.
//   - Appservice API in (appservice.go, conncap.go, txn.go, txnlog.go):
//     the listener is open to whoever reaches it, so what a peer can hold
//     is bounded: header, read, write and idle timeouts, header size, and
//     matrix.max_connections (idle connections are shed to make room); a
//     bad hs_token gets 403, its connection closed, and is counted and
//     logged at a bounded rate. Then transactions are handled in order,
//     one at a time, before the answer (a failed durable report makes it a
//     500, and the homeserver sends the transaction again), de-duplicated
//     across restarts. User queries register a ghost only with a link or
//     within the registration budget (matrix.query_ghosts_per_hour,
//     query_ghosts_per_domain_per_hour): see queryHandler.QueryUser.
//   - The homeserver gate (health.go): every request to the homeserver
//     goes through it. While the homeserver is down (network errors, 5xx)
//     one trial request goes per back-off step (250 ms doubling to 10 s)
//     and every other request fails at once with [ErrHomeserverDown]; a
//     429 holds everything for its retry_after_ms. One log line per change
//     of state, not per request.
//   - Ghost presence out (presence_out.go, outbox.go, ghosts.go):
//     [Side.ShowGhost] never blocks; the outbox keeps only the latest
//     wanted state per ghost, sends only real changes, waits behind the
//     gate, and backs off per ghost on failures of its own. It does not
//     coalesce by time: the core does. Ghosts are registered and named on
//     first use by a command of the core (which speaks only of people with
//     a link).
//   - Memberships out (membership_out.go): [Side.GhostMembership] makes a
//     ghost open a direct chat (with the bot invited, so that /sync sees
//     the peer), join, reject or leave, after showing GhostMembership.Before
//     (a revoked ghost goes offline, and lingers a second so that syncing
//     clients see it, before it leaves). While the gate is closed it fails
//     at once with ErrHomeserverDown, before any work. Whom ghosts may
//     invite is the core's decision (core.invite_local_only).
//   - Memberships in (membership_in.go, rooms.go): m.room.member events
//     that concern a ghost, the ghost's own included, are reported
//     natively addressed; rooms.go remembers who shares which room.
//   - Presence in (presence_in.go, sync.go): MSC2409 m.presence in
//     transactions (Synapse), /sync as the bot (Dendrite), polling
//     GET /presence of linked users; only changes are reported; ghosts and
//     the bot never are. health.go: when the homeserver cannot be reached
//     for matrix.offline_grace, the Matrix users believed online are
//     reported offline, and read again once it answers.
//   - Bounds (lru.go, budget.go, counts.go): every table keyed by what the
//     homeserver or remote users send (outgoing ghost presence, registered
//     ghosts, Matrix users' last presence, rooms and their members,
//     per-domain budgets) is bounded by matrix.max_tracked or a constant;
//     [Side.Counts] returns what was refused, held back or forgotten, by
//     reason, for metrics.
//   - Commands (commands.go): "!presence off|on|help" from a Matrix user
//     become opt-out reports, answered by the bot.
//
// State (sidestate.go): the side writes the pb_txns bucket (transaction
// ids), pb_ghost_presence (what the homeserver shows of each ghost, so
// that a restart or a takeover sends only what changed: a record that
// claims a state is made pending before a PUT of another one, and the
// accepted state written behind once the ghost is quiet for a second,
// by runHealth and at shutdown) and pb_matrix_sync (the bot's /sync
// position, written once a response's events were handled, so that the
// next instance resumes from it instead of an initial sync that reads
// everyone's presence again). Kill -9 never leaves a record claiming a
// state the homeserver may not show; it loses only what was not yet
// written behind, so the ghosts set in the last seconds get their next
// state once more, and the last /sync response may be handled again. It
// reads pb_links (the core's) for the room of a link, the users to poll
// and, at start, the ghosts with a live link; the core learns rooms from
// the membership reports, and at start the core's pb_presence records of
// Matrix users as what was reported of them (only changes are reported
// after a restart, and the offline grace of an unreachable homeserver
// covers them). In memory only, rebuilt after a restart: the rooms and
// their members, the ghosts known registered.
//
// mautrix-go (maunium.net/go/mautrix) does the Matrix work:
// appservice.Registration, appservice.AppService with its router (user
// and alias queries, ping), mautrix.Client for the ghosts (registration,
// display name, createRoom, invite, join, leave) and for the bot, with
// DefaultSyncer for its /sync (a presence filter, set_presence offline)
// and GET /versions, mautrix.HTTPError for the homeserver's errors, and
// the id and event types throughout. Where it has gaps, a thin wrapper
// says which, at its definition:
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
//     putPresence; a ghost the homeserver lost is registered again —
//     ghosts.reregister;
//   - AppService.Intent and AppService.Client cache a client per user ID
//     forever, and the memory state store every registration and
//     membership: ghosts get uncached clients and there is no state store
//     (IntentAPI, which needs one, is not used) — ghosts;
//   - last_active_ago absent and 0 look alike in RespPresence and
//     PresenceEventContent — presenceContent;
//   - mautrix logs with zerolog, the project with slog — zerologFor.
//
// The library never gets to exit the process or to retry on its own:
// EnsureAppserviceConnection and AppService.Start are not used, and its
// clients make one attempt per request (the outbox and the transport
// retry), except the bot's join of a room it was invited to; all of them
// go through the homeserver gate (gatedTransport).
package matrixside
