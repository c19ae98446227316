package dendritetest_test

import (
	"testing"
	"time"

	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
)

const (
	asToken = "as-secret-token"
	wait    = 30 * time.Second
)

const registration = `id: presence-bridge
url: http://127.0.0.1:1
as_token: ` + asToken + `
hs_token: hs-secret-token
sender_localpart: presencebot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@_xmpp_.*:localhost"
`

func hasPresence(presence, status string) func(dendritetest.Presence) bool {
	return func(p dendritetest.Presence) bool {
		return p.Presence == presence && p.StatusMsg != nil && *p.StatusMsg == status
	}
}

// sharedRoom has bob create a room, invite carol, and carol join it.
func sharedRoom(t *testing.T, bob, carol *dendritetest.Client) string {
	t.Helper()
	roomID, err := bob.CreateRoom(t.Context(), []string{carol.UserID}, false)
	if err != nil {
		t.Fatal(err)
	}
	gotRoom, inviter := carol.WaitInvite(t, wait)
	if gotRoom != roomID || inviter != bob.UserID {
		t.Fatalf("invite = %s from %s, want %s from %s", gotRoom, inviter, roomID, bob.UserID)
	}
	if err := carol.Join(t.Context(), roomID); err != nil {
		t.Fatal(err)
	}
	return roomID
}

func TestPresence(t *testing.T) {
	t.Parallel()
	srv := dendritetest.Start(t, dendritetest.Options{AppServiceRegistration: registration})
	ctx := t.Context()
	bob := srv.CreateUser(t, "bob", "bob-password")
	carol := srv.CreateUser(t, "carol", "carol-password")
	if bob.UserID != "@bob:localhost" {
		t.Fatalf("bob.UserID = %q", bob.UserID)
	}
	roomID := sharedRoom(t, bob, carol)

	if err := bob.SetPresence(ctx, "unavailable", "lunch"); err != nil {
		t.Fatal(err)
	}
	carol.WaitPresence(t, wait, bob.UserID, hasPresence("unavailable", "lunch"))
	got, err := carol.GetPresence(ctx, bob.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if !hasPresence("unavailable", "lunch")(got) {
		t.Errorf("GetPresence(bob) = %+v", got)
	}

	t.Run("ghost", func(t *testing.T) {
		ghostID := "@_xmpp_test:localhost"
		ghost := srv.AppServiceClient(asToken, ghostID)
		if err := ghost.RegisterAppServiceUser(ctx, "_xmpp_test"); err != nil {
			t.Fatal(err)
		}
		if err := ghost.RegisterAppServiceUser(ctx, "_xmpp_test"); err != nil {
			t.Fatalf("second registration: %v", err)
		}
		if err := bob.Invite(ctx, roomID, ghostID); err != nil {
			t.Fatal(err)
		}
		if err := ghost.Join(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		if err := ghost.SetPresence(ctx, "online", "via XMPP"); err != nil {
			t.Fatal(err)
		}
		p := carol.WaitPresence(t, wait, ghostID, hasPresence("online", "via XMPP"))
		t.Logf("carol sees ghost: %s %q", p.Presence, *p.StatusMsg)
	})
}

func TestRestart(t *testing.T) {
	t.Parallel()
	srv := dendritetest.Start(t, dendritetest.Options{})
	bob := srv.CreateUser(t, "bob", "bob-password")
	carol := srv.CreateUser(t, "carol", "carol-password")
	sharedRoom(t, bob, carol)
	if err := bob.SetPresence(t.Context(), "online", "before"); err != nil {
		t.Fatal(err)
	}
	carol.WaitPresence(t, wait, bob.UserID, hasPresence("online", "before"))

	start := time.Now()
	srv.Restart(t)
	t.Logf("restart took %v", time.Since(start).Round(time.Millisecond))

	// A fresh login works, and carol's old token and since-token still do.
	bob2 := srv.Login(t, "bob", "bob-password")
	if err := bob2.SetPresence(t.Context(), "unavailable", "after restart"); err != nil {
		t.Fatal(err)
	}
	carol.WaitPresence(t, wait, bob.UserID, hasPresence("unavailable", "after restart"))
}
