// Start timing (Dendrite v0.15.2, SQLite, 2-CPU dev container, 2026-11):
// Start takes 0.2-0.4 s when the machine is idle (generate-keys and
// generate-config ~10 ms, the rest is dendrite until /versions answers 200);
// the first start after a build ~1 s (cold page cache); up to ~10 s when
// the machine is overloaded (load avg 8 on 2 CPUs). Stop (SIGTERM) ~50 ms,
// Restart ~0.1-0.25 s. The whole package test runs in ~0.5-1.5 s.

// Package dendritetest starts a real Dendrite homeserver for tests. It is
// internal/dendrite (the server and the client) bound to a test: temporary
// directory, free port, cleanup, failures instead of errors, and clients
// that remember what their syncs saw.
//
// Start generates a signing key and a config (generate-config -ci, then:
// SQLite files, media and search index inside t.TempDir(), federation off,
// presence in/out on, rate limits off, open registration off, optional
// appservice registration) and runs dendrite on a free 127.0.0.1 port. Users
// are created with create-account (shared-secret registration) and then
// logged in with a password.
//
// The binaries are looked up in $DENDRITE_BIN_DIR, else in
// <module root>/.build/bin; build them with: make dendrite. Without them the
// tests are skipped, or fail when CI=true.
//
// Dendrite behaviour worth knowing when testing presence:
//   - m.presence is never pushed to appservices; it is only visible through
//     /sync (or GET /presence), and /sync only shows users sharing a room
//     with the syncing user. The Client's sync uses a filter with a large
//     presence limit (the default is 10).
//   - An appservice ghost (?user_id=) can set presence (or do anything)
//     only after it has been registered (Client.RegisterAppServiceUser);
//     before that: 403 "appservice has not registered this user".
//   - Every /sync updates the syncing user's own presence (set_presence,
//     default online): the first /sync of a user after a (re)start sets them
//     "online", keeping their status_msg and overriding a presence set by PUT
//     before it. Later syncs only publish when that sync-derived value
//     changes. So a Client that calls WaitPresence/WaitInvite is itself
//     "online", like a real Matrix client.
//   - GET /presence is eventually consistent (may return the previous value
//     right after a PUT), ignores room sharing, and returns presence "" for
//     a user who never set one. Presence survives a restart.
//   - A newly shared room makes /sync report its members' current presence,
//     even if it was set before the room was shared.
//   - create-account needs passwords of at least 8 characters and exits 1
//     without printing why.
//   - With Options.Federation (HTTPS on a second port, server name
//     "localhost:<port>", remote certificates not checked): an incremental
//     /sync shows only presence whose last activity is under 5 minutes old
//     (a remote user idle for longer appears only in an initial sync); and
//     a device that was already syncing when a remote user joined a room
//     may never be sent that user's presence (its sync notifier misses the
//     join), while a new /sync session is.
//
// Waiting is done by long-polling /sync with a deadline (WaitPresence,
// WaitInvite), never by sleeping.
package dendritetest
