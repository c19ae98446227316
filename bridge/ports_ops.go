package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// The operations ports: optional capabilities for the presence service
// (package bridge/opsapi), checked by type assertion. Neither is needed to
// bridge presence.

// ErrDisconnected is returned by a side asked for something that needs
// its network while its connection (XMPP stream, homeserver) is down.
var ErrDisconnected = errors.New("bridge: side disconnected")

// ErrNoRoute is returned by a side that has no way to ask for a user's
// presence (no puppet is subscribed to that XMPP user).
var ErrNoRoute = errors.New("bridge: no way to ask for this presence")

// PresenceRequest asks a side for the fresh presence of one user of its
// network: an XMPP bare JID for the XMPP side, an MXID for the Matrix side.
type PresenceRequest struct {
	Stamp
	Network mapping.Network `json:"network"`
	User    string          `json:"user"`
}

// PresenceRequester is implemented by a side that can ask its network for
// a user's current presence (Telepathy's RequestPresence): the XMPP side
// probes from a puppet, the Matrix side reads the presence from the
// homeserver. It returns once the request is sent; the answer comes back
// as an ordinary presence report through the side's observer. It may
// block for one network round trip. Errors: [ErrDisconnected],
// [ErrNoRoute], or a validation error for an address of the wrong network.
type PresenceRequester interface {
	RequestPresence(ctx context.Context, r PresenceRequest) error
}

// PresenceWatcher is told of every presence the core records, in order per
// user, from the core's goroutine: it must not block (publish and return).
// optedOut is true when the person stopped the export of their presence;
// watchers must then not pass the presence on.
type PresenceWatcher interface {
	PresenceChanged(net mapping.Network, user string, rec PresenceRecord, optedOut bool)
}

// DropReason says why the core did not pass a presence on.
type DropReason string

// The reasons. Beyond NoConsent the sides decide too (only subscribed
// contacts and room members see a presence); that is not counted here.
const (
	DropNoConsent  DropReason = "no_consent"  // the person holds no link with anyone on the other network
	DropOptOut     DropReason = "opt_out"     // the person opted out
	DropAccessList DropReason = "access_list" // their domain or server is not allowed
	DropStale      DropReason = "stale"       // an older report arrived after a newer one
	DropLoop       DropReason = "loop"        // a puppet's or ghost's own presence came back
)

// PresenceDropWatcher is optionally implemented by the core's watcher
// ([PresenceWatcher]) to count the presences the core dropped. Same rules:
// it must not block.
type PresenceDropWatcher interface {
	PresenceDropped(net mapping.Network, reason DropReason)
}

// Health is optionally implemented by a side: Healthy returns nil while
// its network is reachable (the XMPP stream is up, the homeserver
// answers), else an error saying what is not. It must not block.
type Health interface {
	Healthy() error
}

// ResourceLister is optionally implemented by the XMPP side: the
// resources it holds in memory for XMPP users (only those who send
// presence to a puppet). Users it holds nothing for are absent from the
// answer. It must not block for long.
type ResourceLister interface {
	XMPPResources(ctx context.Context, users []mapping.BareJID) (map[mapping.BareJID][]mapping.Resource, error)
}

// DeliveryReporter is optionally implemented by a side: it tells when a
// presence the core asked it to show reached its network, for the
// end-to-end metric. delivered is called once per delivered change, with
// the ObservedAt of the command that carried it, when the change was
// written to the network: the XMPP stanzas of one puppet change written
// to the stream, the Matrix PUT of a ghost's presence answered 2xx. A
// side keeping only the latest presence (per puppet or ghost) reports
// only the one it delivered. Commands with a zero ObservedAt, changes
// never sent and re-sends of what was delivered already report nothing.
// delivered must not block. Call OnDelivered before the side runs.
type DeliveryReporter interface {
	OnDelivered(delivered func(observedAt time.Time))
}
