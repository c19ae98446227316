// Package opsapi is the bridge's presence service for operators, on the
// bridge's own NATS, built with nats.go/micro (so `nats micro ls`, `info`
// and `stats` work), after Telepathy's Connection.Interface.Presence:
//
//	pb.ops.get            GetPresence:     {"users":[JID or MXID, …]} → normalized presence of each
//	pb.ops.statuses       GetStatuses:     {} → the status spec map of the live configuration
//	pb.ops.request        RequestPresence: {"users":[…]} → asks the sides for fresh presence;
//	                                       what changes arrives on the updates subject
//	pb.ops.subscriptions  (no Telepathy counterpart): {"user":…} → RFC 6121 states and links
//	pb.ops.updates.<network>.<user token>  PresenceUpdate: every presence the core records
//
// The user token is bridge.EncodeToken of the JID or MXID; subscribe to
// pb.ops.updates.> for everything. Requests and answers are JSON (types in
// api.go). A failed request is answered with the micro error headers
// (Nats-Service-Error-Code, Nats-Service-Error), the code one of the
// [Code] names after Telepathy's errors, and a JSON [Error] body;
// [Client] turns them back into an *[Error] that matches the sentinels
// (errors.Is(err, ErrInvalidHandle)).
//
// Addresses: a JID or an MXID, mixed. A puppet JID stands for its Matrix
// user and a ghost MXID for its XMPP user. Malformed: InvalidHandle;
// refused by the access lists: PermissionDenied; never seen by the bridge:
// NotAvailable (per user in get, for the request in subscriptions).
//
// Resources: the core records the aggregate presence of an XMPP user (the
// highest-priority resource's, with its priority); the XMPP side keeps the
// individual resources in memory. get asks it for them (one request per
// get, [bridge.ResourceLister] over the transport) and reports each
// resource with its priority, state, status and when it was observed; if
// the XMPP side does not answer, get reports the aggregate's priority as a
// single entry marked "aggregate".
//
// Privacy: the service answers only on the bridge's own NATS. The
// embedded server's listener needs the token in <data_dir>/client.token,
// readable by the bridge's user only; on an external cluster, give only
// the operator's account publish rights on pb.ops.> and subscribe rights
// on pb.ops.updates.> and _INBOX.> (docs/operations.md). A person who
// opted out is reported with "opted_out": true and no presence, by get
// and by updates alike: their presence never leaves the core.
//
// Files: api.go (types and errors), service.go (the endpoints),
// updates.go (the publisher the core calls), client.go (for the CLI and
// scripts in Go).
package opsapi
