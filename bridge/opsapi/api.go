package opsapi

import (
	"errors"
	"fmt"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// The subjects.
const (
	SubjectGet           = "pb.ops.get"
	SubjectStatuses      = "pb.ops.statuses"
	SubjectRequest       = "pb.ops.request"
	SubjectSubscriptions = "pb.ops.subscriptions"
	// UpdatesPrefix is followed by .<network>.<bridge.EncodeToken(user)>.
	UpdatesPrefix = "pb.ops.updates"
)

// ServiceName is the micro service name (nats micro ls).
const ServiceName = "presence-bridge"

// Limits: a larger request is refused with InvalidArgument.
const (
	MaxRequestBytes = 64 << 10
	MaxUsers        = 1000
	// MaxRequestUsers bounds request, which asks the networks.
	MaxRequestUsers = 100
)

// UpdateSubject is the subject of the updates about user of net.
func UpdateSubject(net mapping.Network, user string) string {
	return UpdatesPrefix + "." + net.String() + "." + bridge.EncodeToken(user)
}

// Code is an error code, after Telepathy's errors.
type Code string

// The codes.
const (
	// CodeInvalidHandle: an address is neither a bare JID nor an MXID.
	CodeInvalidHandle Code = "InvalidHandle"
	// CodeNotAvailable: the bridge knows nothing of this user.
	CodeNotAvailable Code = "NotAvailable"
	// CodePermissionDenied: the bridge does not carry this user (access
	// lists, or a request for the presence of the bridge's own domain).
	CodePermissionDenied Code = "PermissionDenied"
	// CodeDisconnected: the side needed for the request is down.
	CodeDisconnected Code = "Disconnected"
	// CodeInvalidArgument: malformed, empty or oversized request.
	CodeInvalidArgument Code = "InvalidArgument"
)

// Error is a typed failure of a request.
type Error struct {
	Code        Code   `json:"error"`
	Description string `json:"description"`
}

func (e *Error) Error() string { return "opsapi: " + string(e.Code) + ": " + e.Description }

// Is matches the sentinel of the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Description == "" && t.Code == e.Code
}

// The sentinels: errors.Is(err, ErrNotAvailable).
var (
	ErrInvalidHandle    = &Error{Code: CodeInvalidHandle}
	ErrNotAvailable     = &Error{Code: CodeNotAvailable}
	ErrPermissionDenied = &Error{Code: CodePermissionDenied}
	ErrDisconnected     = &Error{Code: CodeDisconnected}
	ErrInvalidArgument  = &Error{Code: CodeInvalidArgument}
)

// ErrNoBridge is returned by the client when nobody answers.
var ErrNoBridge = errors.New("opsapi: no bridge is answering on this NATS (is presence-bridge running with this config?)")

func errorf(code Code, format string, a ...any) *Error {
	return &Error{Code: code, Description: fmt.Sprintf(format, a...)}
}

// UsersRequest is the request of get and request.
type UsersRequest struct {
	Users []string `json:"users"`
}

// UserRequest is the request of subscriptions.
type UserRequest struct {
	User string `json:"user"`
}

// Resource is one XMPP resource.
type Resource struct {
	Name     string `json:"name,omitempty"`
	Priority int8   `json:"priority"`
	// Aggregate: this entry is the aggregate of all resources, not one of
	// them: the XMPP side did not answer (see the package documentation).
	Aggregate  bool          `json:"aggregate,omitempty"`
	State      mapping.State `json:"state,omitzero"`
	Status     string        `json:"status,omitempty"`
	ObservedAt time.Time     `json:"observed_at,omitzero"`
}

// Presence is one user's normalized presence, or why there is none.
type Presence struct {
	// User is the address as asked; Resolved the person it stands for
	// (a puppet's Matrix user, a ghost's XMPP user) and Network theirs.
	User     string          `json:"user"`
	Resolved string          `json:"resolved"`
	Network  mapping.Network `json:"network"`
	// Error is set (NotAvailable, PermissionDenied) when nothing follows.
	Error Code `json:"error,omitempty"`
	// OptedOut: the person stopped the export of their presence; it is
	// not reported.
	OptedOut bool `json:"opted_out,omitempty"`

	State mapping.State `json:"state,omitzero"`
	// Type is Telepathy's Connection_Presence_Type of State.
	Type            uint32     `json:"type,omitempty"`
	Status          string     `json:"status,omitempty"`
	LastActive      time.Time  `json:"last_active,omitzero"`
	CurrentlyActive bool       `json:"currently_active,omitempty"`
	Resources       []Resource `json:"resources,omitempty"`
	// Side is the network the presence was observed on; ObservedAt when.
	Side       mapping.Network `json:"side,omitzero"`
	ObservedAt time.Time       `json:"observed_at,omitzero"`
}

// GetResponse answers get, in the order asked.
type GetResponse struct {
	Presences []Presence `json:"presences"`
}

// StatusSpec describes one status, after Telepathy's Status_Spec.
type StatusSpec struct {
	Type         uint32            `json:"type"`
	TypeName     string            `json:"type_name"`
	MaySetOnSelf bool              `json:"may_set_on_self"`
	Exclusive    bool              `json:"exclusive"`
	Parameters   map[string]string `json:"parameters,omitempty"`
	// XMPP and Matrix are how the status shows on each network.
	XMPP   string `json:"xmpp"`
	Matrix string `json:"matrix"`
}

// StatusesResponse answers statuses: identifier → spec.
type StatusesResponse struct {
	Statuses map[string]StatusSpec `json:"statuses"`
}

// RequestResponse answers request: one entry per user.
type RequestResponse struct {
	Results []RequestResult `json:"results"`
}

// RequestResult says whether a fresh presence was asked for one user.
type RequestResult struct {
	User        string `json:"user"`
	Error       Code   `json:"error,omitempty"`
	Description string `json:"description,omitempty"`
}

// Subscription is the RFC 6121 state between a puppet and an XMPP contact.
type Subscription struct {
	MatrixUser mapping.UserID  `json:"matrix_user"`
	XMPPUser   mapping.BareJID `json:"xmpp_user"`
	// State is none, to, from or both (from the puppet's point of view);
	// PendingIn and PendingOut the requests waiting for an answer.
	State      string    `json:"state"`
	PendingIn  bool      `json:"pending_in,omitempty"`
	PendingOut bool      `json:"pending_out,omitempty"`
	UpdatedAt  time.Time `json:"updated_at,omitzero"`
}

// SubscriptionsResponse answers subscriptions.
type SubscriptionsResponse struct {
	User          string          `json:"user"`
	Network       mapping.Network `json:"network"`
	Subscriptions []Subscription  `json:"subscriptions"`
	Links         []bridge.Link   `json:"links"`
}

// Update is one presence change, on UpdateSubject.
type Update struct {
	Network mapping.Network `json:"network"`
	User    string          `json:"user"`
	// OptedOut: the person does not export their presence; Presence is
	// then absent.
	OptedOut   bool              `json:"opted_out,omitempty"`
	Presence   *mapping.Presence `json:"presence,omitempty"`
	Seq        uint64            `json:"seq,omitempty"`
	ObservedAt time.Time         `json:"observed_at,omitzero"`
}

// SubscriptionState names the RFC 6121 state of s.
func SubscriptionState(s bridge.Subscription) string {
	switch {
	case s.To && s.From:
		return "both"
	case s.To:
		return "to"
	case s.From:
		return "from"
	}
	return "none"
}

// Telepathy's Connection_Presence_Type.
const (
	tpUnset        = 0
	tpOffline      = 1
	tpAvailable    = 2
	tpAway         = 3
	tpExtendedAway = 4
	tpBusy         = 6
	tpUnknown      = 7
)

var tpNames = map[uint32]string{0: "unset", 1: "offline", 2: "available", 3: "away", 4: "extended_away", 5: "hidden", 6: "busy", 7: "unknown", 8: "error"}

// TelepathyType is the Connection_Presence_Type of s.
func TelepathyType(s mapping.State) uint32 {
	switch s {
	case mapping.StateOffline:
		return tpOffline
	case mapping.StateAvailable, mapping.StateFreeForChat:
		return tpAvailable
	case mapping.StateAway:
		return tpAway
	case mapping.StateExtendedAway:
		return tpExtendedAway
	case mapping.StateBusy:
		return tpBusy
	case mapping.StateUnknown:
		return tpUnknown
	}
	return tpUnset
}
