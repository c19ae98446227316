package mapping

import (
	"testing"
	"time"
)

func TestResourcesList(t *testing.T) {
	var r Resources
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r.Update("phone", Presence{State: StateAway, Priority: -1}, at)
	r.Update("desk", Presence{State: StateAvailable, Priority: 5}, at)
	got := r.List()
	if len(got) != 2 || got[0].Name != "desk" || got[0].Presence.Priority != 5 || got[1].Name != "phone" || !got[1].At.Equal(at) {
		t.Fatalf("%+v", got)
	}
	r.Update("", Presence{State: StateOffline}, at)
	if len(r.List()) != 0 {
		t.Fatal("resources left after the bare JID went offline")
	}
}
