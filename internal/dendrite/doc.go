// Package dendrite runs a real Dendrite homeserver on loopback and talks to
// it as a Matrix client. The test harness (internal/testenv/dendrite) and
// the sandbox (internal/sandbox) are built on it.
//
// Start generates a signing key (once) and a config (generate-config -ci,
// then: SQLite files, media and search index inside Config.Dir, federation
// off, presence in/out on, rate limits off, open registration off,
// optional appservice registration) and runs dendrite on the given
// 127.0.0.1 address. Accounts are created with create-account
// (shared-secret registration) and then logged in with a password.
//
// The binaries come from the tool module in tools/dendrite (make dendrite);
// Binaries lists them and CheckBinaries finds them.
//
// Dendrite behaviour worth knowing when watching presence:
//   - m.presence is never pushed to appservices; it is only visible through
//     /sync (or GET /presence), and /sync only shows users sharing a room
//     with the syncing user. Client.Sync uses a filter with a large
//     presence limit (the default is 10).
//   - An appservice ghost (?user_id=) can set presence (or do anything)
//     only after it has been registered (Client.RegisterAppServiceUser).
//   - Every /sync updates the syncing user's own presence from its
//     set_presence (default online), combined over all of the user's syncs
//     of the last 10 s (online wins, then unavailable, then offline), and
//     publishes it when that derived value changes: the first /sync of a
//     user after a (re)start sets them "online", keeping their status_msg
//     and overriding a presence set by PUT before it. A client syncing with
//     set_presence=offline never makes its user online: their presence
//     follows their other clients (offline when none syncs).
//   - GET /presence is eventually consistent, ignores room sharing, and
//     returns presence "" for a user who never set one. Presence survives a
//     restart.
//   - create-account needs passwords of at least 8 characters and exits 1
//     without printing why.
package dendrite
