// Package sandbox is the first run of presence-bridge (make run): a real
// Prosody, a real Dendrite and the bridge binary between them, on
// 127.0.0.1 only, with one XMPP user (alice@localhost) and one Matrix user
// (@bob:localhost) who already see each other's presence, and nothing to
// edit.
//
// Everything lives in one directory (.build/sandbox by default):
//
//	state.json      passwords, secrets, tokens and ports, reused by every run
//	prosody/        Prosody's config, data and log
//	dendrite/       Dendrite's config, signing key, databases and log
//	bridge/         the bridge's config.yaml and registration.yaml (written
//	                from state.json at every start), its state (nats/) and log
//	sandbox.lock    held while a sandbox runs on the directory
//
// The bridge is used only through its command line and config file, like
// an operator would: "presence-bridge generate-registration" writes the
// registration Dendrite loads, "presence-bridge -config" runs it. The
// sandbox then acts as both users to link them through the bridge's
// consent flow (alice subscribes to bob's puppet, bob accepts the invite
// of alice's ghost, alice approves the puppet), once: later runs find the
// link in the stored state.
//
// While it runs, the sandbox stays logged in as alice (an XMPP session at
// priority -1) and as bob (a Matrix client syncing with
// set_presence=offline) and prints one line per presence change that
// arrives from the other side: what crossed the bridge, as the receiving
// network shows it. This watches the bridge from outside, so it does not
// depend on the bridge's log messages or bus.
//
// Files:
//
//	sandbox.go  Options, Run: start, watch, stop
//	state.go    state.json, ports, generated passwords and secrets, addresses
//	bridge.go   the bridge's config, registration and process
//	link.go     readiness and the consent flow
//	watch.go    the presence lines
//	banner.go   how to log in
//	lock.go     one sandbox per directory
package sandbox
