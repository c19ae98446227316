package mapping

import (
	"fmt"
	"time"
)

// State is the normalized presence state, after Telepathy's
// Connection_Presence_Type with free-for-chat added so that XMPP "chat"
// survives a round trip.
type State uint8

// The states, ordered from "nothing known" to "most available" only where the
// order is used: see [State.Availability].
const (
	// StateUnset means nothing was ever said; it is the zero value.
	StateUnset State = iota
	// StateOffline: the person is not connected.
	StateOffline
	// StateAvailable: online, no further detail (XMPP no <show>, Matrix online).
	StateAvailable
	// StateFreeForChat: XMPP <show>chat</show>.
	StateFreeForChat
	// StateAway: XMPP away, Matrix unavailable.
	StateAway
	// StateExtendedAway: XMPP xa.
	StateExtendedAway
	// StateBusy: XMPP dnd, Matrix org.matrix.msc3026.busy.
	StateBusy
	// StateUnknown: the bridge may not see this person's presence (no
	// subscription). Never show it to a user as offline.
	StateUnknown

	numStates = iota
)

var stateNames = [numStates]string{"unset", "offline", "available", "chat", "away", "xa", "busy", "unknown"}

// String returns the name used in config files and on the bus.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// ParseState is the inverse of [State.String].
func ParseState(v string) (State, error) {
	for i, n := range stateNames {
		if n == v {
			return State(i), nil
		}
	}
	return StateUnset, fmt.Errorf("%w: presence state %q", ErrUnknownValue, v)
}

// MarshalText implements encoding.TextMarshaler.
func (s State) MarshalText() ([]byte, error) {
	if int(s) >= numStates {
		return nil, fmt.Errorf("%w: presence state %d", ErrUnknownValue, uint8(s))
	}
	return []byte(stateNames[s]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	if err == nil {
		*s = v
	}
	return err
}

// Online reports whether the state means the person is connected.
func (s State) Online() bool { return s >= StateAvailable && s <= StateBusy }

// Availability ranks states for aggregation: higher is more available.
// Free-for-chat > available > away > busy > extended away > offline.
func (s State) Availability() int {
	switch s {
	case StateFreeForChat:
		return 6
	case StateAvailable:
		return 5
	case StateAway:
		return 4
	case StateBusy:
		return 3
	case StateExtendedAway:
		return 2
	case StateOffline:
		return 1
	}
	return 0
}

// Presence is what the bridge knows of one person's presence.
type Presence struct {
	State State `json:"state"`
	// Status is the free-text status message; empty means none was set.
	Status string `json:"status,omitempty"`
	// LastActive is when the person was last active, in UTC; zero if unknown.
	LastActive time.Time `json:"last_active,omitzero"`
	// CurrentlyActive is Matrix's currently_active: the person is using a
	// client right now. Meaningful only while online.
	CurrentlyActive bool `json:"currently_active,omitempty"`
	// Priority is the XMPP resource priority (-128..127); 0 elsewhere.
	Priority int8 `json:"priority,omitempty"`
}

// Equal reports whether two presences would look the same to a user.
func (p Presence) Equal(q Presence) bool {
	return p.State == q.State && p.Status == q.Status && p.LastActive.Equal(q.LastActive) &&
		p.CurrentlyActive == q.CurrentlyActive && p.Priority == q.Priority
}

// Network names one side of the bridge.
type Network uint8

// The networks.
const (
	NetworkUnknown Network = iota
	NetworkXMPP
	NetworkMatrix
)

var networkNames = [...]string{"unknown", "xmpp", "matrix"}

// String returns "xmpp" or "matrix".
func (n Network) String() string {
	if int(n) < len(networkNames) {
		return networkNames[n]
	}
	return fmt.Sprintf("Network(%d)", uint8(n))
}

// ParseNetwork is the inverse of [Network.String] for the two real networks.
func ParseNetwork(v string) (Network, error) {
	switch v {
	case "xmpp":
		return NetworkXMPP, nil
	case "matrix":
		return NetworkMatrix, nil
	}
	return NetworkUnknown, fmt.Errorf("%w: network %q", ErrUnknownValue, v)
}

// MarshalText implements encoding.TextMarshaler.
func (n Network) MarshalText() ([]byte, error) {
	if n != NetworkXMPP && n != NetworkMatrix {
		return nil, fmt.Errorf("%w: network %d", ErrUnknownValue, uint8(n))
	}
	return []byte(n.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (n *Network) UnmarshalText(b []byte) error {
	v, err := ParseNetwork(string(b))
	if err == nil {
		*n = v
	}
	return err
}

// Other returns the other side of the bridge.
func (n Network) Other() Network {
	switch n {
	case NetworkXMPP:
		return NetworkMatrix
	case NetworkMatrix:
		return NetworkXMPP
	}
	return NetworkUnknown
}
