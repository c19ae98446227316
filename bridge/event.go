package bridge

import (
	"errors"
	"fmt"
	"time"

	// goccy/go-json reads and writes the same struct tags as encoding/json
	// (FuzzEnvelopeMatchesEncodingJSON holds it to that): one schema, the
	// Event type. It fills one gap: encoding/json cost the event path a
	// quarter of its throughput, below the 50k events/s target (see
	// BENCHMARKS.md).
	json "github.com/goccy/go-json"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// SchemaVersion is the envelope version this build writes and reads.
const SchemaVersion = 1

// ErrBadEvent is returned by [DecodeEvent] for anything that is not a valid
// version-1 envelope.
var ErrBadEvent = errors.New("bridge: malformed event")

// Kind says what an event carries.
type Kind string

// The kinds of event.
const (
	// KindPresence: a person's presence (Event.Presence).
	KindPresence Kind = "presence"
	// KindSubscription: an RFC 6121 subscription stanza between User and
	// Peer (Event.Subscription).
	KindSubscription Kind = "subscription"
	// KindMembership: a Matrix membership change between User and Peer
	// (Event.Membership).
	KindMembership Kind = "membership"
	// KindOptOut: a person turns the export of their presence off or on.
	KindOptOut Kind = "optout"
)

// Durable reports whether events of this kind must survive a restart of
// their consumer, and so travel through the control stream.
func (k Kind) Durable() bool { return k != KindPresence }

func (k Kind) valid() bool {
	switch k {
	case KindPresence, KindSubscription, KindMembership, KindOptOut:
		return true
	}
	return false
}

// SubscriptionType is the type attribute of an RFC 6121 subscription stanza.
type SubscriptionType string

// The subscription stanza types.
const (
	Subscribe    SubscriptionType = "subscribe"
	Subscribed   SubscriptionType = "subscribed"
	Unsubscribe  SubscriptionType = "unsubscribe"
	Unsubscribed SubscriptionType = "unsubscribed"
)

// SubscriptionPayload carries one subscription stanza's meaning.
type SubscriptionPayload struct {
	Type SubscriptionType `json:"type"`
	// Status is the optional text of a subscribe request.
	Status string `json:"status,omitempty"`
}

// MembershipPayload carries one Matrix membership change between a Matrix
// user and a ghost. In events (matrixside → core): Member says whose
// membership changed (the event's User or Peer), Sender who changed it. Out
// events (core → matrixside) ask the ghost of the event's User to act
// towards Peer: "invite" (open a direct chat with Peer, or invite Peer to
// RoomID), "join" or "reject" an invite from Peer in RoomID, "leave" RoomID.
type MembershipPayload struct {
	Membership string `json:"membership"` // invite | join | leave | ban | reject
	RoomID     string `json:"room_id,omitempty"`
	Member     string `json:"member,omitempty"`
	Sender     string `json:"sender,omitempty"`
	IsDirect   bool   `json:"is_direct,omitempty"`
	// Before (out only): a presence the ghost shows before it acts.
	Before *mapping.Presence `json:"before,omitempty"`
}

// OptOutPayload carries a person's choice about exporting their presence.
type OptOutPayload struct {
	Enabled bool `json:"enabled"`
}

// Event is the envelope of everything on the bus. See the package doc for
// the JSON schema.
type Event struct {
	V          int             `json:"v"`
	ID         string          `json:"id"`
	Kind       Kind            `json:"kind"`
	Origin     mapping.Network `json:"origin"`
	User       string          `json:"user"`
	Peer       string          `json:"peer,omitempty"`
	Seq        uint64          `json:"seq"`
	ObservedAt time.Time       `json:"observed_at"`

	Presence     *mapping.Presence    `json:"presence,omitempty"`
	Subscription *SubscriptionPayload `json:"subscription,omitempty"`
	Membership   *MembershipPayload   `json:"membership,omitempty"`
	OptOut       *OptOutPayload       `json:"optout,omitempty"`
}

// Validate checks that the event is complete for its kind.
func (e *Event) Validate() error {
	switch {
	case e.V != SchemaVersion:
		return fmt.Errorf("%w: version %d, want %d", ErrBadEvent, e.V, SchemaVersion)
	case !e.Kind.valid():
		return fmt.Errorf("%w: kind %q", ErrBadEvent, e.Kind)
	case e.Origin != mapping.NetworkXMPP && e.Origin != mapping.NetworkMatrix:
		return fmt.Errorf("%w: origin %v", ErrBadEvent, e.Origin)
	case e.User == "":
		return fmt.Errorf("%w: no user", ErrBadEvent)
	case e.Kind == KindPresence && e.Presence == nil:
		return fmt.Errorf("%w: presence event without presence", ErrBadEvent)
	case e.Kind == KindSubscription && (e.Subscription == nil || e.Peer == ""):
		return fmt.Errorf("%w: subscription event without subscription or peer", ErrBadEvent)
	case e.Kind == KindMembership && (e.Membership == nil || e.Peer == ""):
		return fmt.Errorf("%w: membership event without membership or peer", ErrBadEvent)
	case e.Kind == KindOptOut && e.OptOut == nil:
		return fmt.Errorf("%w: optout event without optout", ErrBadEvent)
	}
	return nil
}

// EncodeEvent validates and marshals an event.
func EncodeEvent(e *Event) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	data, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEvent, err)
	}
	return data, nil
}

// DecodeEvent unmarshals and validates an event.
func DecodeEvent(data []byte) (*Event, error) {
	var e Event
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEvent, err)
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return &e, nil
}
