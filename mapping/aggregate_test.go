package mapping

import (
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
