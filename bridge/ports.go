package bridge

import (
	"context"
	"fmt"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// The ports: the interfaces between the core and the two sides, owned by
// the core (in the spirit of mautrix bridgev2's network interfaces).
//
//	xmppside ──XMPPObserver──▶ core ──MatrixActor──▶ matrixside
//	xmppside ◀──XMPPActor──── core ◀──MatrixObserver── matrixside
//
// A side reports what it observed on its network through its Observer and
// carries out what the core asks through the Actor it implements. The
// core implements both Observers and calls both Actors. Addresses are
// always native: an XMPP user is a [mapping.BareJID], never its ghost, a
// Matrix user a [mapping.UserID], never its puppet; only the sides
// translate to and from puppets and ghosts.
//
// In one process or many, the ports are carried by the NATS transport
// (package bridge/transport): the sides and the core never learn its
// subjects. Tests wire them directly or to in-memory fakes.
//
// Methods whose kind is durable (subscriptions, memberships, opt-outs)
// return only once the report or command is safely recorded; an error
// means "not done, try again later", and implementations must be
// idempotent because a command can be delivered more than once. Presence
// is state: a lost intermediate value is repaired by the next one.

// XMPPObserver receives what the XMPP side observed. Implemented by the
// core (and by the transport's publisher).
type XMPPObserver interface {
	// XMPPPresence reports the aggregate presence of an XMPP user, across
	// all their resources, as seen by the component. Called on every change
	// of the aggregate; it must not block for long.
	XMPPPresence(ctx context.Context, r XMPPPresence) error
	// XMPPSubscription reports a subscription stanza an XMPP contact sent to
	// a puppet, after the XMPP side applied the RFC 6121 state machine:
	// only stanzas that changed the state, and requests the core must
	// decide on. Durable.
	XMPPSubscription(ctx context.Context, r XMPPSubscription) error
	// XMPPOptOut reports an XMPP user's choice to stop (or resume) the
	// export of their presence. Durable.
	XMPPOptOut(ctx context.Context, r OptOut[mapping.BareJID]) error
}

// MatrixObserver receives what the Matrix side observed. Implemented by
// the core (and by the transport's publisher).
type MatrixObserver interface {
	// MatrixPresence reports a Matrix user's presence when it changed. It
	// must not block for long.
	MatrixPresence(ctx context.Context, r MatrixPresence) error
	// MatrixMembership reports a membership change between a Matrix user
	// and a ghost, in a room they share, including what the ghost itself
	// did (its invites, joins and leaves). Durable.
	MatrixMembership(ctx context.Context, r MatrixMembership) error
	// MatrixOptOut reports a Matrix user's choice about the export of
	// their presence. Durable.
	MatrixOptOut(ctx context.Context, r OptOut[mapping.UserID]) error
}

// XMPPActor is what the core asks of the XMPP side. Implemented by
// xmppside.Component (and by the transport's publisher).
type XMPPActor interface {
	// ShowPuppet makes the puppet of a Matrix user show a presence to the
	// contacts allowed to see it (RFC 6121 From or Both). It must not
	// block: implementations queue and return. The error says only that
	// the command could not be handed over.
	ShowPuppet(ctx context.Context, c PuppetPresence) error
	// SendSubscription makes a puppet send a subscription stanza to an XMPP
	// contact, applying the RFC 6121 outbound transitions. Durable: an
	// error (the stream is down) makes it come again later.
	SendSubscription(ctx context.Context, c PuppetSubscription) error
}

// MatrixActor is what the core asks of the Matrix side. Implemented by
// matrixside.Side (and by the transport's publisher).
type MatrixActor interface {
	// ShowGhost makes the ghost of an XMPP user show a presence. It must
	// not block: implementations keep the latest wanted presence per ghost
	// and send it when they can.
	ShowGhost(ctx context.Context, c GhostPresence) error
	// GhostMembership makes the ghost of an XMPP user act towards a Matrix
	// user: invite (open a direct chat), join or reject an invite, leave.
	// Durable. What the ghost did comes back as a MatrixMembership report.
	GhostMembership(ctx context.Context, c GhostMembership) error
}

// Stamp is what every report and command carries besides its payload.
type Stamp struct {
	// ID identifies the report or command, for logs and de-duplication.
	// Empty: the transport makes one.
	ID string `json:"id,omitempty"`
	// Seq orders the reports of one person: larger is newer. Zero: the
	// transport stamps it when publishing.
	Seq uint64 `json:"seq,omitempty"`
	// ObservedAt is when the side saw it. Zero in a report: now. In a
	// presence command, when the presence it shows was observed on the
	// other network; zero for a presence the core made up itself.
	ObservedAt time.Time `json:"observed_at,omitzero"`
}

// XMPPPresence is an XMPP user's aggregate presence.
type XMPPPresence struct {
	Stamp
	User     mapping.BareJID  `json:"user"`
	Presence mapping.Presence `json:"presence"`
}

// MatrixPresence is a Matrix user's presence.
type MatrixPresence struct {
	Stamp
	User     mapping.UserID   `json:"user"`
	Presence mapping.Presence `json:"presence"`
}

// XMPPSubscription is a subscription stanza from an XMPP contact to the
// puppet of a Matrix user.
type XMPPSubscription struct {
	Stamp
	Contact mapping.BareJID  `json:"contact"`
	Puppet  mapping.UserID   `json:"puppet"`
	Type    SubscriptionType `json:"type"`
	// Status is the optional text of a subscribe request.
	Status string `json:"status,omitempty"`
}

// MatrixMembership is a membership change between a Matrix user and a
// ghost.
type MatrixMembership struct {
	Stamp
	User  mapping.UserID  `json:"user"`
	Ghost mapping.BareJID `json:"ghost"` // the XMPP user the ghost stands for
	// GhostChanged is true when it is the ghost's membership that changed
	// (the Matrix user invited, kicked or banned it, or it joined or left),
	// false when it is the Matrix user's (the ghost invited them, or they
	// joined, rejected or left).
	GhostChanged bool       `json:"ghost_changed,omitempty"`
	Membership   Membership `json:"membership"`
	RoomID       string     `json:"room_id"`
	// BySelf is true when the member changed their own membership (a join,
	// a leave, a rejection), false when the other one did it to them (an
	// invite, a kick, a ban).
	BySelf   bool `json:"by_self,omitempty"`
	IsDirect bool `json:"is_direct,omitempty"`
}

// OptOut is a person's choice about exporting their presence.
type OptOut[ID mapping.BareJID | mapping.UserID] struct {
	Stamp
	User ID `json:"user"`
	// Enabled true stops the export; false resumes it.
	Enabled bool `json:"enabled"`
}

// PuppetPresence asks the puppet of a Matrix user to show a presence.
type PuppetPresence struct {
	Stamp
	User     mapping.UserID   `json:"user"`
	Presence mapping.Presence `json:"presence"`
}

// PuppetSubscription asks the puppet of a Matrix user to send a
// subscription stanza to an XMPP contact.
type PuppetSubscription struct {
	Stamp
	Puppet  mapping.UserID   `json:"puppet"`
	Contact mapping.BareJID  `json:"contact"`
	Type    SubscriptionType `json:"type"`
}

// GhostPresence asks the ghost of an XMPP user to show a presence.
type GhostPresence struct {
	Stamp
	User     mapping.BareJID  `json:"user"`
	Presence mapping.Presence `json:"presence"`
}

// GhostMembership asks the ghost of an XMPP user to act towards a Matrix
// user. Membership is Invite (open a direct chat with Peer, or invite Peer
// to RoomID), Join or Reject (an invite from Peer to RoomID), or Leave
// (RoomID). RoomID may be empty for Invite; for the others it may be empty
// when the core does not know it yet, and the side finds the room it
// shares with Peer.
type GhostMembership struct {
	Stamp
	Ghost      mapping.BareJID `json:"ghost"`
	Peer       mapping.UserID  `json:"peer"`
	Membership Membership      `json:"membership"`
	RoomID     string          `json:"room_id,omitempty"`
	// Before, if set, is a presence the ghost shows before it acts: a
	// revoked ghost goes offline before it leaves, so that the Matrix user
	// sees it offline rather than its last presence frozen.
	Before *mapping.Presence `json:"before,omitempty"`
}

// Membership is a Matrix membership, or a membership action.
type Membership uint8

// The memberships. Reject is a leave by an invited user who never joined.
const (
	MembershipUnknown Membership = iota
	MembershipInvite
	MembershipJoin
	MembershipLeave
	MembershipBan
	MembershipReject
)

var membershipNames = [...]string{"", "invite", "join", "leave", "ban", "reject"}

func (m Membership) String() string {
	if int(m) < len(membershipNames) {
		return membershipNames[m]
	}
	return fmt.Sprintf("membership(%d)", uint8(m))
}

// ParseMembership parses the Matrix name of a membership.
func ParseMembership(s string) (Membership, error) {
	for i, n := range membershipNames {
		if n == s && i > 0 {
			return Membership(i), nil
		}
	}
	return MembershipUnknown, fmt.Errorf("%w: membership %q", mapping.ErrUnknownValue, s)
}

// Gone reports whether the member is no longer in the room or invited.
func (m Membership) Gone() bool {
	return m == MembershipLeave || m == MembershipBan || m == MembershipReject
}

// MarshalText writes the Matrix name.
func (m Membership) MarshalText() ([]byte, error) {
	if m == MembershipUnknown || int(m) >= len(membershipNames) {
		return nil, fmt.Errorf("%w: membership %d", mapping.ErrUnknownValue, uint8(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText parses the Matrix name.
func (m *Membership) UnmarshalText(b []byte) error {
	v, err := ParseMembership(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// PartitionOwner is implemented by an observer that keeps state per user
// in memory (the core) when the reports are shared out by user among
// several instances: each instance holds some partitions of the users
// ([Partition]), and only the holder of a user's partition is told of
// them and writes their state. The transport calls it; it is optional.
type PartitionOwner interface {
	// AcquirePartition is called when this instance takes p, before p's
	// first report: rebuild what is kept in memory of p's users from KV.
	AcquirePartition(ctx context.Context, p Partition) error
	// ReleasePartition is called after p's last report here. handOver:
	// p goes to another instance in good order, so send and record what
	// is pending for p's users; else the partition was lost, and nothing
	// more may be sent or written for them.
	ReleasePartition(ctx context.Context, p Partition, handOver bool)
	// Sync returns once every report handled so far is recorded in KV.
	Sync(ctx context.Context) error
}
