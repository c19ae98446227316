// Package e2e is the end-to-end suite of the bridge (issue 5): a real
// Prosody, a real Dendrite and the presence-bridge binary built from
// ./cmd/presence-bridge and run as its own process. XMPP users are XMPP
// clients (internal/testenv/prosody), Matrix users are Matrix clients
// (internal/testenv/dendrite); the bridge is reached only through the two
// networks. The tests also watch the bridge's bus (its embedded NATS
// listens on loopback), never to drive it, only to know that the bridge
// has seen something that must then not cross.
//
// The map of the package (all of it is tests):
//
//   - env_test.go: the environment of one test: servers, the bridge's
//     config, registration and process, readiness, the bus tap.
//   - users_test.go: XMPP and Matrix users as the stories need them, and
//     linking an XMPP user with a Matrix user through the consent flow.
//   - presence_test.go: story 1, presence both ways.
//   - privacy_test.go: stories 2 and 3, who sees what, and revocation.
//   - restart_test.go: stories 4 to 7, the bridge and the servers going
//     away and coming back.
//   - storm_test.go: story 8, 200 contacts changing presence at once.
//   - latency_test.go: BenchmarkLatency, end-to-end latency both ways.
//   - cluster_test.go: issue 11, the bridge split by role (one core, two
//     xmpp and two matrix instances as separate processes) on a
//     three-node NATS cluster (internal/testenv/natscluster, nats-server
//     v2.15.2 from make natsserver): the active xmpp or matrix instance
//     killed, a NATS node killed, a rolling restart. The failover times
//     are logged (FAILOVER_ROUNDS rounds of the xmpp story).
//
// The tests need Prosody (apt-get install -y prosody), the Dendrite
// binaries (make dendrite) and, for the cluster stories, nats-server
// (make natsserver); without them they are skipped, or fail when
// CI=true. The bridge's log (level debug) is printed when a test fails, or
// always with E2E_LOG=1.
package e2e
