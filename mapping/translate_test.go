package mapping

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func TestFromXMPPTable(t *testing.T) {
	tr := NewTranslator(DefaultTable(), false)
	idle := now.Add(-10 * time.Minute)
	cases := []struct {
		name string
		in   XMPPPresence
		want Presence
	}{
		{"available", XMPPPresence{Status: "hi", Priority: 5}, Presence{State: StateAvailable, Status: "hi", Priority: 5, CurrentlyActive: true}},
		{"chat", XMPPPresence{Show: ShowChat}, Presence{State: StateFreeForChat, CurrentlyActive: true}},
		{"away", XMPPPresence{Show: ShowAway, Status: "lunch"}, Presence{State: StateAway, Status: "lunch"}},
		{"xa idle", XMPPPresence{Show: ShowXA, IdleSince: idle}, Presence{State: StateExtendedAway, LastActive: idle}},
		{"dnd", XMPPPresence{Show: ShowDND}, Presence{State: StateBusy}},
		{"available but idle", XMPPPresence{IdleSince: idle}, Presence{State: StateAvailable, LastActive: idle}},
		{"unavailable keeps status", XMPPPresence{Unavailable: true, Status: "bye", Priority: 3}, Presence{State: StateOffline, Status: "bye"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := tr.FromXMPP(c.in); !got.Equal(c.want) {
				t.Errorf("FromXMPP(%+v) = %+v, want %+v", c.in, got, c.want)
			}
		})
	}
}

func TestToMatrixTable(t *testing.T) {
	cases := []struct {
		name string
		busy bool
		in   Presence
		want MatrixState
	}{
		{"available active", false, Presence{State: StateAvailable, Status: "s", CurrentlyActive: true}, MatrixState{Presence: MatrixOnline, StatusMsg: "s", CurrentlyActive: true}},
		{"chat", false, Presence{State: StateFreeForChat}, MatrixState{Presence: MatrixOnline}},
		{"away", false, Presence{State: StateAway, Status: "x"}, MatrixState{Presence: MatrixUnavailable, StatusMsg: "x"}},
		{"xa with idle", false, Presence{State: StateExtendedAway, LastActive: now.Add(-time.Hour)}, MatrixState{Presence: MatrixUnavailable, HasLastActive: true, LastActiveAgo: time.Hour}},
		{"busy without msc3026 gets hint", false, Presence{State: StateBusy}, MatrixState{Presence: MatrixUnavailable, StatusMsg: "Do not disturb"}},
		{"busy without msc3026 keeps own status", false, Presence{State: StateBusy, Status: "meeting"}, MatrixState{Presence: MatrixUnavailable, StatusMsg: "meeting"}},
		{"busy with msc3026", true, Presence{State: StateBusy}, MatrixState{Presence: MatrixBusy}},
		{"offline keeps last status", false, Presence{State: StateOffline, Status: "gone"}, MatrixState{Presence: MatrixOffline, StatusMsg: "gone"}},
		{"future last active clamps", false, Presence{State: StateAway, LastActive: now.Add(time.Minute)}, MatrixState{Presence: MatrixUnavailable, HasLastActive: true}},
		{"currently active only while online", false, Presence{State: StateAway, CurrentlyActive: true}, MatrixState{Presence: MatrixUnavailable}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr := NewTranslator(DefaultTable(), c.busy)
			if got := tr.ToMatrix(c.in, now); got != c.want {
				t.Errorf("ToMatrix(%+v) = %+v, want %+v", c.in, got, c.want)
			}
		})
	}
}

func TestFromMatrixTable(t *testing.T) {
	tr := NewTranslator(DefaultTable(), true)
	cases := []struct {
		name string
		in   MatrixState
		want Presence
	}{
		{"online active", MatrixState{Presence: MatrixOnline, StatusMsg: "hi", CurrentlyActive: true}, Presence{State: StateAvailable, Status: "hi", CurrentlyActive: true}},
		// last_active_ago is milliseconds on the wire; here a Duration, so no unit slip is possible.
		{"unavailable idle", MatrixState{Presence: MatrixUnavailable, HasLastActive: true, LastActiveAgo: 90 * time.Second}, Presence{State: StateAway, LastActive: now.Add(-90 * time.Second)}},
		{"offline", MatrixState{Presence: MatrixOffline}, Presence{State: StateOffline}},
		{"busy", MatrixState{Presence: MatrixBusy, StatusMsg: "focus"}, Presence{State: StateBusy, Status: "focus"}},
		{"unset is unknown, not offline", MatrixState{}, Presence{State: StateUnknown}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := tr.FromMatrix(c.in, now); !got.Equal(c.want) {
				t.Errorf("FromMatrix(%+v) = %+v, want %+v", c.in, got, c.want)
			}
		})
	}
}

func TestToXMPPTable(t *testing.T) {
	tr := NewTranslator(DefaultTable(), false)
	idle := now.Add(-time.Minute)
	cases := []struct {
		in   Presence
		want XMPPPresence
	}{
		{Presence{State: StateAvailable, CurrentlyActive: true, LastActive: idle}, XMPPPresence{}},
		{Presence{State: StateAway, Status: "brb", LastActive: idle}, XMPPPresence{Show: ShowAway, Status: "brb", IdleSince: idle}},
		{Presence{State: StateBusy}, XMPPPresence{Show: ShowDND}},
		{Presence{State: StateOffline, Status: "x", Priority: 4}, XMPPPresence{Unavailable: true, Status: "x"}},
		{Presence{State: StateUnknown}, XMPPPresence{Unavailable: true}},
	}
	for _, c := range cases {
		if got := tr.ToXMPP(c.in); got != c.want {
			t.Errorf("ToXMPP(%+v) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

// TestRoundTrip is the property the bridge relies on to never flap: every XMPP
// show and every Matrix presence, carried across and back with its origin
// state on the bus event, comes back unchanged, and no status message appears
// that the user did not set.
func TestRoundTrip(t *testing.T) {
	for _, busy := range []bool{false, true} {
		tr := NewTranslator(DefaultTable(), busy)
		for _, unavailable := range []bool{false, true} {
			for show := ShowNone; show < numShows; show++ {
				for _, status := range []string{"", "at lunch"} {
					in := XMPPPresence{Unavailable: unavailable, Show: show, Status: status}
					if unavailable {
						in.Show = ShowNone
					}
					n := tr.FromXMPP(in)
					m := tr.ToMatrix(n, now)
					back := tr.ToXMPP(tr.FromMatrixEcho(m, now, n.State))
					if back.Show != in.Show || back.Unavailable != in.Unavailable || back.Status != in.Status {
						t.Errorf("busy=%v: XMPP %+v → Matrix %+v → XMPP %+v", busy, in, m, back)
					}
					if status == "" && m.StatusMsg != "" && !(n.State == StateBusy && !busy) {
						t.Errorf("busy=%v: %+v invented status %q", busy, in, m.StatusMsg)
					}
				}
			}
		}
		for mp := MatrixOnline; mp < numMatrix; mp++ {
			if mp == MatrixBusy && !busy {
				continue // a homeserver without MSC3026 never sends it
			}
			for _, status := range []string{"", "in a call"} {
				in := MatrixState{Presence: mp, StatusMsg: status}
				n := tr.FromMatrix(in, now)
				x := tr.ToXMPP(n)
				back := tr.ToMatrix(tr.FromXMPPEcho(x, n.State), now)
				if back.Presence != in.Presence || back.StatusMsg != in.StatusMsg {
					t.Errorf("busy=%v: Matrix %+v → XMPP %+v → Matrix %+v", busy, in, x, back)
				}
				if status == "" && x.Status != "" {
					t.Errorf("Matrix %+v invented XMPP status %q", in, x.Status)
				}
			}
		}
	}
}

func TestIdleCrossesBothWays(t *testing.T) {
	tr := NewTranslator(DefaultTable(), false)
	idle := now.Add(-5 * time.Minute)
	m := tr.ToMatrix(tr.FromXMPP(XMPPPresence{Show: ShowAway, IdleSince: idle}), now)
	if !m.HasLastActive || m.LastActiveAgo != 5*time.Minute {
		t.Errorf("XMPP idle 5m → last_active_ago %v (has=%v)", m.LastActiveAgo, m.HasLastActive)
	}
	x := tr.ToXMPP(tr.FromMatrix(MatrixState{Presence: MatrixUnavailable, HasLastActive: true, LastActiveAgo: 5 * time.Minute}, now))
	if !x.IdleSince.Equal(idle) {
		t.Errorf("Matrix last_active_ago 5m → idle since %v, want %v", x.IdleSince, idle)
	}
}

func TestTableOverride(t *testing.T) {
	tab := DefaultTable()
	if err := tab.Override(map[string]string{"xa": "offline"}, map[string]string{"unavailable": "xa"}); err != nil {
		t.Fatal(err)
	}
	tr := NewTranslator(tab, false)
	if got := tr.ToMatrix(Presence{State: StateExtendedAway}, now).Presence; got != MatrixOffline {
		t.Errorf("overridden xa → %v", got)
	}
	if got := tr.FromMatrix(MatrixState{Presence: MatrixUnavailable}, now).State; got != StateExtendedAway {
		t.Errorf("overridden unavailable → %v", got)
	}
	err := tab.Override(map[string]string{"sleepy": "online", "away": "gone", "unknown": "online"}, map[string]string{"busy": "nope"})
	if !errors.Is(err, ErrUnknownValue) {
		t.Fatalf("bad override: err = %v", err)
	}
	for _, want := range []string{"to_matrix.sleepy", "to_matrix.away", "to_matrix.unknown", "from_matrix.busy"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestEnumStrings(t *testing.T) {
	for s := State(0); s < numStates; s++ {
		if got, err := ParseState(s.String()); err != nil || got != s {
			t.Errorf("ParseState(%q) = %v, %v", s.String(), got, err)
		}
	}
	for s := ShowNone; s < numShows; s++ {
		if got, err := ParseShow(s.String()); err != nil || got != s {
			t.Errorf("ParseShow(%q) = %v, %v", s.String(), got, err)
		}
	}
	for m := MatrixOnline; m < numMatrix; m++ {
		if got, err := ParseMatrixPresence(m.String()); err != nil || got != m {
			t.Errorf("ParseMatrixPresence(%q) = %v, %v", m.String(), got, err)
		}
	}
	if s, err := ParseShow("sleeping"); s != ShowNone || !errors.Is(err, ErrUnknownValue) {
		t.Errorf("unknown show: %v, %v; want ShowNone (available) and ErrUnknownValue", s, err)
	}
	if p, err := ParsePriority("300"); p != 0 || err == nil {
		t.Errorf("priority 300: %v, %v", p, err)
	}
	if p, err := ParsePriority("-5"); p != -5 || err != nil {
		t.Errorf("priority -5: %v, %v", p, err)
	}
}

func TestTruncateStatus(t *testing.T) {
	cases := []struct {
		in   string
		max  int
		want string
	}{
		{"hello", 10, "hello"},
		{"hello", 3, "hel"},
		{"héllo", 2, "h"}, // never split a rune
		{"ab\xffc", 0, "ab\uFFFDc"},
	}
	for _, c := range cases {
		if got := TruncateStatus(c.in, c.max); got != c.want {
			t.Errorf("TruncateStatus(%q, %d) = %q, want %q", c.in, c.max, got, c.want)
		}
	}
}
