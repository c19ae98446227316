package mapping

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestResourcesAggregate(t *testing.T) {
	t0 := now
	type step struct {
		resource string
		p        Presence
		want     State
		wantStat string
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"highest priority wins over more available", []step{
			{"phone", Presence{State: StateAvailable, Priority: 0, Status: "phone"}, StateAvailable, "phone"},
			{"desk", Presence{State: StateAway, Priority: 10, Status: "desk"}, StateAway, "desk"},
		}},
		{"equal priority: most available wins", []step{
			{"a", Presence{State: StateExtendedAway, Priority: 1}, StateExtendedAway, ""},
			{"b", Presence{State: StateBusy, Priority: 1}, StateBusy, ""},
			{"c", Presence{State: StateFreeForChat, Priority: 1}, StateFreeForChat, ""},
		}},
		{"equal priority and state: most recent wins", []step{
			{"a", Presence{State: StateAway, Status: "first"}, StateAway, "first"},
			{"b", Presence{State: StateAway, Status: "second"}, StateAway, "second"},
		}},
		{"resource going offline changes the aggregate", []step{
			{"desk", Presence{State: StateAvailable, Priority: 5, Status: "desk"}, StateAvailable, "desk"},
			{"phone", Presence{State: StateAway, Priority: 1, Status: "phone"}, StateAvailable, "desk"},
			{"desk", Presence{State: StateOffline}, StateAway, "phone"},
			// The unavailable's own text ("bye", or a server's "Disconnected:
			// …") is not the status: the last one shown while available is.
			{"phone", Presence{State: StateOffline, Status: "bye"}, StateOffline, "phone"},
		}},
		{"bare unavailable clears all, last status kept", []step{
			{"a", Presence{State: StateAvailable, Status: "x"}, StateAvailable, "x"},
			{"b", Presence{State: StateAway}, StateAvailable, "x"},
			{"", Presence{State: StateOffline, Status: "Disconnected: Received SIGTERM"}, StateOffline, "x"},
		}},
		{"negative priority still counts for presence", []step{
			{"bot", Presence{State: StateAway, Priority: -1}, StateAway, ""},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var r Resources
			for i, s := range c.steps {
				got := r.Update(s.resource, s.p, t0.Add(time.Duration(i)*time.Second))
				if got.State != s.want || got.Status != s.wantStat {
					t.Fatalf("step %d (%s %v): aggregate %v %q, want %v %q", i, s.resource, s.p.State, got.State, got.Status, s.want, s.wantStat)
				}
			}
		})
	}
}

func TestResourcesForgetKeepsStatus(t *testing.T) {
	var r Resources
	r.Update("a", Presence{State: StateAway, Status: "lunch"}, now)
	r.Forget()
	if got := r.Aggregate(); got.State != StateOffline || got.Status != "lunch" {
		t.Fatalf("after Forget: %v %q, want offline keeping %q", got.State, got.Status, "lunch")
	}
	if r.Len() != 0 {
		t.Fatalf("%d resources after Forget", r.Len())
	}
}

// TestResourcesIncrementalMatchesScan: after any sequence of updates the
// incrementally kept aggregate is the one a scan of all resources finds.
func TestResourcesIncrementalMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	states := []State{StateOffline, StateAvailable, StateFreeForChat, StateAway, StateExtendedAway, StateBusy}
	for run := range 200 {
		r := Resources{Max: rng.IntN(6)} // 0: no cap
		for i := range 300 {
			res := string(rune('a' + rng.IntN(10)))
			if rng.IntN(40) == 0 {
				res = ""
			}
			p := Presence{State: states[rng.IntN(len(states))], Priority: int8(rng.IntN(3)), Status: res}
			got := r.Update(res, p, now.Add(time.Duration(i)*time.Millisecond))
			want := scanAggregate(&r)
			if got.State != want.State || got.Status != want.Status || got.Priority != want.Priority {
				t.Fatalf("run %d step %d: incremental %+v, scan %+v", run, i, got, want)
			}
			if r.Max > 0 && r.Len() > r.Max {
				t.Fatalf("run %d step %d: %d resources, max %d", run, i, r.Len(), r.Max)
			}
		}
	}
}

// scanAggregate is the aggregate by a scan of every resource.
func scanAggregate(r *Resources) Presence {
	var best resourceEntry
	found := false
	for _, e := range r.byName {
		if !found || better(e, best) {
			best, found = e, true
		}
	}
	if !found {
		return Presence{State: StateOffline, Status: r.status, LastActive: r.lastActive}
	}
	return best.p
}

// TestResourcesMax: beyond Max, a new resource replaces the one updated
// least recently; an update of a kept one replaces nothing.
func TestResourcesMax(t *testing.T) {
	r := Resources{Max: 2}
	r.Update("a", Presence{State: StateAway, Priority: 9, Status: "a"}, now)
	r.Update("b", Presence{State: StateAway, Status: "b"}, now.Add(time.Second))
	r.Update("b", Presence{State: StateBusy, Status: "b2"}, now.Add(2*time.Second))
	if !r.Has("a") || !r.Has("b") || r.Len() != 2 {
		t.Fatalf("an update of a kept resource evicted one")
	}
	got := r.Update("c", Presence{State: StateAvailable, Status: "c"}, now.Add(3*time.Second))
	if r.Has("a") || !r.Has("b") || !r.Has("c") {
		t.Fatalf("want a (least recently updated) replaced by c")
	}
	if got.Status != "c" && got.Status != "b2" || got.Status == "a" {
		t.Fatalf("aggregate %+v still from the evicted resource", got)
	}
	if got.Status != "c" {
		t.Fatalf("aggregate %q, want c (available beats busy at equal priority)", got.Status)
	}
}
