// Package bridge is the bus between the two sides of the bridge and the state
// they share. Adapters (xmppside, matrixside) publish normalized [Event]s to
// NATS; the core decides who may see what and publishes commands back; state
// lives in JetStream key-value buckets ([Store]).
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
//	  "observed_at": "2026-11-21T12:00:00Z",   // when the adapter saw it
//	  "presence": {"state": "away", "status": "lunch", "last_active": "...", "currently_active": false, "priority": 5},
//	  "origin_state": "chat",                  // for echoes: the state the bridge set on the other side
//	  "subscription": {"type": "subscribe"},   // RFC 6121 subscription stanza type
//	  "membership": {"membership": "invite", "room_id": "!r:example.org", "sender": "@bob:example.org"},
//	  "optout": {"enabled": true}
//	}
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
// Presence goes over core NATS: it is state, the latest value is also kept in
// the presence bucket, and a lost intermediate value is harmless. Kinds that
// must not be lost (subscription, membership, optout) are also captured by
// the JetStream stream [ControlStream] and read with durable consumers
// ([Bus.Consume]).
//
// # Buckets
//
// See [Store]: last presence per user per side, subscription state per
// (puppet, contact), consent links, per-user settings and seen Matrix
// transaction ids. Updates where two writers can race use compare-and-set.
package bridge
