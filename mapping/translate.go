package mapping

import (
	"fmt"
	"time"
)

// Table is the overridable part of the translation: how normalized states
// show on Matrix and how Matrix values are read. XMPP show values map to
// states one to one and are not configurable.
type Table struct {
	// ToMatrix gives the Matrix presence for each normalized state.
	ToMatrix [numStates]MatrixPresence
	// BusyFallback replaces MatrixBusy where the homeserver lacks MSC3026.
	BusyFallback MatrixPresence
	// FromMatrix gives the normalized state for each Matrix presence.
	FromMatrix [numMatrix]State
	// BusyHint is the status message put on Matrix for a busy user who set
	// none and the homeserver has no busy presence, so that users can tell
	// busy from away. Empty disables it.
	BusyHint string
}

// DefaultTable returns the mapping documented in the README.
func DefaultTable() Table {
	var t Table
	t.ToMatrix = [numStates]MatrixPresence{
		StateUnset:        MatrixOffline,
		StateOffline:      MatrixOffline,
		StateAvailable:    MatrixOnline,
		StateFreeForChat:  MatrixOnline,
		StateAway:         MatrixUnavailable,
		StateExtendedAway: MatrixUnavailable,
		StateBusy:         MatrixBusy,
		StateUnknown:      MatrixOffline,
	}
	t.BusyFallback = MatrixUnavailable
	t.FromMatrix = [numMatrix]State{
		MatrixUnset:       StateUnknown,
		MatrixOnline:      StateAvailable,
		MatrixUnavailable: StateAway,
		MatrixOffline:     StateOffline,
		MatrixBusy:        StateBusy,
	}
	t.BusyHint = "Do not disturb"
	return t
}

// Override changes the table from config: toMatrix maps state names
// ([State.String]) to Matrix wire values, fromMatrix the reverse. Every bad
// entry is reported, joined in one error.
func (t *Table) Override(toMatrix, fromMatrix map[string]string) error {
	var errs []error
	for k, v := range toMatrix {
		s, err := ParseState(k)
		if err == nil && (s == StateUnset || s == StateUnknown) {
			err = fmt.Errorf("%w: state %q cannot be remapped", ErrUnknownValue, k)
		}
		m, err2 := ParseMatrixPresence(v)
		if err != nil || err2 != nil {
			errs = append(errs, fmt.Errorf("to_matrix.%s: %w", k, firstErr(err, err2)))
			continue
		}
		t.ToMatrix[s] = m
	}
	for k, v := range fromMatrix {
		m, err := ParseMatrixPresence(k)
		s, err2 := ParseState(v)
		if err2 == nil && (s == StateUnset || s == StateUnknown) {
			err2 = fmt.Errorf("%w: cannot map to %q", ErrUnknownValue, v)
		}
		if err != nil || err2 != nil {
			errs = append(errs, fmt.Errorf("from_matrix.%s: %w", k, firstErr(err, err2)))
			continue
		}
		t.FromMatrix[m] = s
	}
	return joinErrs(errs)
}

// Translator converts presences between the networks. It is immutable after
// [NewTranslator] and safe for concurrent use.
type Translator struct {
	table         Table
	busySupported bool
}

// NewTranslator returns a translator for the table. busySupported says
// whether the homeserver advertises MSC3026 busy presence.
func NewTranslator(t Table, busySupported bool) *Translator {
	return &Translator{table: t, busySupported: busySupported}
}

// FromXMPP normalizes an XMPP presence.
func (t *Translator) FromXMPP(x XMPPPresence) Presence {
	p := Presence{Status: x.Status, Priority: x.Priority}
	if x.Unavailable {
		p.State = StateOffline
		p.Priority = 0
		if !x.IdleSince.IsZero() {
			p.LastActive = x.IdleSince.UTC()
		}
		return p
	}
	p.State = showStates[x.Show%numShows]
	if x.IdleSince.IsZero() {
		p.CurrentlyActive = p.State == StateAvailable || p.State == StateFreeForChat
	} else {
		p.LastActive = x.IdleSince.UTC()
	}
	return p
}

var showStates = [numShows]State{ShowNone: StateAvailable, ShowChat: StateFreeForChat, ShowAway: StateAway, ShowXA: StateExtendedAway, ShowDND: StateBusy}

// FromXMPPEcho is FromXMPP for a presence that may have started on the other
// side as origin: where origin and the decoded state look the same on XMPP,
// origin is kept, so the round trip returns what was sent.
func (t *Translator) FromXMPPEcho(x XMPPPresence, origin State) Presence {
	p := t.FromXMPP(x)
	if origin.Online() && p.State.Online() && t.ToXMPP(Presence{State: origin}).Show == x.Show {
		p.State = origin
	}
	return p
}

// ToXMPP renders a normalized presence as XMPP. Offline, Unset and Unknown
// become unavailable; callers should not send Unknown at all.
func (t *Translator) ToXMPP(p Presence) XMPPPresence {
	x := XMPPPresence{Status: p.Status, Priority: p.Priority}
	switch p.State {
	case StateAvailable:
		x.Show = ShowNone
	case StateFreeForChat:
		x.Show = ShowChat
	case StateAway:
		x.Show = ShowAway
	case StateExtendedAway:
		x.Show = ShowXA
	case StateBusy:
		x.Show = ShowDND
	default:
		x.Unavailable = true
		x.Priority = 0
	}
	if !p.CurrentlyActive && !p.LastActive.IsZero() {
		x.IdleSince = p.LastActive
	}
	return x
}

// FromMatrix normalizes a Matrix presence observed at now.
func (t *Translator) FromMatrix(m MatrixState, now time.Time) Presence {
	p := Presence{State: t.table.FromMatrix[m.Presence%numMatrix], Status: m.StatusMsg}
	if m.HasLastActive {
		ago := m.LastActiveAgo
		if ago < 0 {
			ago = 0
		}
		p.LastActive = now.Add(-ago).UTC()
	}
	p.CurrentlyActive = m.CurrentlyActive && m.Presence == MatrixOnline
	return p
}

// FromMatrixEcho is FromMatrix for a presence that may have started on the
// other side as origin: where origin renders to the same Matrix presence, it
// is kept, and the busy hint the bridge itself added is taken off again.
func (t *Translator) FromMatrixEcho(m MatrixState, now time.Time, origin State) Presence {
	p := t.FromMatrix(m, now)
	if origin.Online() && p.State.Online() && t.matrixFor(origin) == m.Presence {
		p.State = origin
		if origin == StateBusy && !t.busySupported && m.StatusMsg == t.table.BusyHint {
			p.Status = ""
		}
	}
	return p
}

// ToMatrix renders a normalized presence as Matrix, relative to now.
func (t *Translator) ToMatrix(p Presence, now time.Time) MatrixState {
	m := MatrixState{Presence: t.matrixFor(p.State), StatusMsg: p.Status}
	if p.State == StateBusy && !t.busySupported && m.StatusMsg == "" {
		m.StatusMsg = t.table.BusyHint
	}
	if !p.LastActive.IsZero() {
		m.HasLastActive = true
		m.LastActiveAgo = now.Sub(p.LastActive)
		if m.LastActiveAgo < 0 {
			m.LastActiveAgo = 0
		}
	}
	m.CurrentlyActive = p.CurrentlyActive && m.Presence == MatrixOnline
	return m
}

func (t *Translator) matrixFor(s State) MatrixPresence {
	m := t.table.ToMatrix[s%numStates]
	if m == MatrixBusy && !t.busySupported {
		return t.table.BusyFallback
	}
	return m
}

// BusySupported reports whether MSC3026 busy is used.
func (t *Translator) BusySupported() bool { return t.busySupported }

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
