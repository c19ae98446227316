package matrixside

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// registerCounter records the ghosts the side registers on the homeserver.
type registerCounter struct {
	base http.RoundTripper
	mu   sync.Mutex
	regs []string // user_id of each POST /register
	// invites counts createRoom and invite requests.
	invites int
}

func (c *registerCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	switch {
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/register"):
		c.regs = append(c.regs, r.URL.Query().Get("user_id"))
	case r.Method == http.MethodPost && (strings.HasSuffix(r.URL.Path, "/createRoom") || strings.HasSuffix(r.URL.Path, "/invite")):
		c.invites++
	}
	c.mu.Unlock()
	return c.base.RoundTrip(r)
}

func (c *registerCounter) registered() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.regs...)
}

// profileStatus is what a Matrix user's client gets when it looks a user
// up (Element does before inviting): 200, or the error status.
func profileStatus(t *testing.T, c *dendritetest.Client, userID string) int {
	t.Helper()
	var out map[string]any
	err := c.Do(t.Context(), http.MethodGet, "/_matrix/client/v3/profile/"+url.PathEscape(userID), nil, &out)
	var he *dendritetest.HTTPError
	switch {
	case err == nil:
		return 200
	case errors.As(err, &he):
		return he.Status
	}
	t.Fatalf("profile of %s: %v", userID, err)
	return 0
}

// TestGhostRegisteredOnlyWithConsent: a user query of the homeserver
// (here: Matrix users looking ghosts up, as clients do before inviting;
// on Synapse also any event naming a ghost, federated invites included)
// registers a ghost, an account on the homeserver for good, only for an
// XMPP user with a link, or within the registration budget per XMPP
// domain and in all; past it the answer is "no such user". An invite to a
// ghost nobody registered still reaches the core, and the ghost is
// registered when the core asks it to join: with consent.
func TestGhostRegisteredOnlyWithConsent(t *testing.T) {
	t.Parallel()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	regs := &registerCounter{base: base}
	const linked = "carol@linked.example"
	logs, log := newLogRecords(t)
	e := startEnvLog(t, log, func(c *Config) {
		c.PresenceSource = SourceEphemeral
		c.QueryGhostsPerHour, c.QueryGhostsPerDomainPerHour = 3, 2
	}, func(s *Side) {
		s.setTransport(regs)
		// The core linked carol with bob earlier.
		l := bridge.Link{MatrixUser: "@bob:localhost", XMPPUser: linked, State: bridge.LinkApproved, UpdatedAt: time.Now()}
		if _, err := s.store.Links.Put(t.Context(), bridge.PairKey(string(l.MatrixUser), string(l.XMPPUser)), l); err != nil {
			t.Fatal(err)
		}
	})
	bob := e.srv.CreateUser(t, "bob", "bob-password")

	for _, tt := range []struct {
		jid    mapping.BareJID
		status int
	}{
		{"a1@evil.example", 200},
		{"a2@evil.example", 200},
		{"a3@evil.example", 404}, // evil.example's budget (2) is spent
		{"a4@evil.example", 404},
		{"b1@other.example", 200},
		{"b2@other.example", 404}, // the total budget (3) is spent
		{linked, 200},             // a link: no budget needed
		{"a1@evil.example", 200},  // registered already
	} {
		if got := profileStatus(t, bob, ghostOf(t, tt.jid)); got != tt.status {
			t.Errorf("profile of the ghost of %s: %d, want %d", tt.jid, got, tt.status)
		}
	}
	want := []string{ghostOf(t, "a1@evil.example"), ghostOf(t, "a2@evil.example"), ghostOf(t, "b1@other.example"), ghostOf(t, linked)}
	if got := regs.registered(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("registered %q, want %q", got, want)
	}
	c := e.side.Counts()
	if c.GhostQueriesRegistered != 3 || c.GhostQueriesRefused < 3 {
		t.Errorf("Counts %+v, want 3 registered for queries, 3 or more refused", c)
	}
	if n := logs.count(slog.LevelWarn, "registration budget spent"); n != 1 {
		t.Errorf("%d log lines for the refused queries, want 1", n)
	}

	// bob invites a ghost nobody registered: the invite exists (Dendrite
	// does not ask), it is reported to the core, and the ghost is
	// registered only once the core, with the XMPP user's consent, has it
	// join.
	const dave = "dave@evil.example"
	roomID := inviteGhost(t, e, bob, dave)
	if got := regs.registered(); len(got) != len(want) {
		t.Errorf("an invite alone registered %q", got[len(want):])
	}
	e.membership(t, bridge.GhostMembership{Ghost: dave, Peer: mapping.UserID(bob.UserID), Membership: bridge.MembershipJoin, RoomID: roomID})
	if _, ok := joinedMembers(t, bob, roomID)[ghostOf(t, dave)]; !ok {
		t.Errorf("dave's ghost did not join %s", roomID)
	}
	if got := regs.registered(); len(got) != len(want)+1 || got[len(want)] != ghostOf(t, dave) {
		t.Errorf("registered %q, want dave's ghost last", got)
	}
}
