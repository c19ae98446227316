// Package bridge is what the core and the two sides share: the ports
// between them (ports.go), the state they keep ([Store]: typed key-value
// buckets, each with one writer), and the NATS bus ([Bus]) that carries
// the ports between processes.
//
// # Ports
//
// The core (package bridge/core) owns four interfaces: [XMPPObserver] and
// [MatrixObserver] receive what a side observed; [XMPPActor] and
// [MatrixActor] are what the core asks a side to do. xmppside.Component
// implements XMPPActor and reports to an XMPPObserver; matrixside.Side
// implements MatrixActor and reports to a MatrixObserver; the core
// implements both observers. The sides never learn the bus: package
// bridge/transport implements every port by publishing the envelope below,
// and serves the bus back into the real implementations. Tests wire the
// core to in-memory fakes of the sides, and the sides to fake observers,
// with no NATS ([NewMemoryStore]).
//
// # Envelope (schema version 1)
//
// Every message on the bus is one JSON object:
//
//	{
//	  "v": 1,                                  // schema version; other versions are refused
//	  "id": "01J...",                          // unique event id (for logs and de-duplication)
//	  "kind": "presence",                      // presence | subscription | membership | optout
//	  "origin": "xmpp",                        // network the event was observed on: xmpp | matrix
//	  "user": "alice@example.com",             // the person it is about: bare JID or Matrix user ID
//	  "peer": "@bob:example.org",              // the other person of a pair, in their own network's form
//	  "seq": 1763700000000000000,              // per-user sequence: larger is newer
//	  "observed_at": "2026-11-21T12:00:00Z",   // when the adapter saw it (out: the shown presence's; may be zero)
//	  "presence": {"state": "away", "status": "lunch", "last_active": "...", "currently_active": false, "priority": 5},
//	  "subscription": {"type": "subscribe"},   // RFC 6121 subscription stanza type
//	  "membership": {"membership": "invite", "room_id": "!r:example.org", "member": "...", "sender": "@bob:example.org",
//	                 "before": {"state": "offline"}},  // out only: presence the ghost shows before it acts
//	  "optout": {"enabled": true}
//	}
//
// [EncodeEvent] and [DecodeEvent] read and write it from the Event type's
// struct tags alone, with goccy/go-json (held to encoding/json by a fuzz
// test): the schema is that type and nowhere else.
//
// Addresses on the bus are always native: a Matrix user is its Matrix ID,
// never its puppet JID, and an XMPP user is its bare JID, never its ghost.
// Only the sides translate to and from puppets and ghosts.
//
// # Subjects
//
//	pb.v1.<dir>.<network>.<kind>.<user>
//
// dir is "in" for what a side observed on its network and "out" for what the
// core asks a side to do on its network; network is xmpp or matrix; user is
// the event's User encoded by [EncodeToken] (every byte outside [A-Za-z0-9_-]
// becomes =XX, so every JID and Matrix ID is one valid subject token and KV
// key token). Examples:
//
//	pb.v1.in.xmpp.presence.alice=40example=2Ecom
//	pb.v1.out.matrix.presence.alice=40example=2Ecom   (set alice's ghost)
//
// Commands (out) of presence go over core NATS: it is state, and a lost
// intermediate value is repaired by the next. Commands that must not be
// lost (subscription, membership) are captured by the JetStream stream
// [ControlStream] and read with durable consumers ([Bus.Consume]). Every
// report (in), presence included, is captured by the work-queue stream
// [InStream], which stores it as
//
//	pb.in.<partition>.<network>.<kind>.<user>
//
// (partition = NATS's partition(n) mapping of the user token, see
// [PartitionOf]) and is read by the core instances, one partition each at
// a time ([Bus.ServePartitions]; the design is in package bridge/transport).
// A consumer whose handler fails retries the event with back-off (1s
// doubling to 5m); after nats.max_deliver deliveries (about a day by
// default) it gives up: the event goes, unchanged, to the stream
// [DeadLetterStream] on
//
//	pb.dead.<consumer>.v1.<dir>.<network>.<kind>.<user>
//
// with headers naming its original subject, the consumer, the number of
// deliveries and the last error, and one ERROR line says so. To replay
// it, publish its body on its original subject.
//
// # Buckets
//
// See [Store]. Each bucket has exactly one writing package: presence,
// links and settings are written by the core (several core instances:
// a user's presence and settings by the holder of their partition, links
// with compare-and-set by whichever instance handles the event, as a link
// joins two users; the partition leases, [BucketPartitions], by the
// instances' transports with compare-and-set); subscriptions and the
// contacts owed an unavailable (directed) by xmppside; Matrix transaction
// ids, the ghosts' shown presence and the bot's /sync position by
// matrixside; the federation gateway's rooms by matrixfed. Others may
// read them. Updates use
// compare-and-set ([Bucket.Update]) where a read decides the write.
//
// # Several instances
//
// On an external cluster (Config.URLs) the bridge may run as several
// processes, each with a role (cmd/presence-bridge -role). Of the
// instances of a side one is active at a time: [Leases] elects it with a
// key per side in the bucket [BucketLeases], taken with create, renewed
// with compare-and-set on its revision, expiring on the server after
// LeaseConfig.TTL; the holder stops at its own deadline, before the key
// can expire, so two are never active at once.
package bridge
