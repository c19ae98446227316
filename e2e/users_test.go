package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/dendrite"
	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"
)

// Timeouts for things the stories do not measure.
const (
	flowTimeout = 20 * time.Second // consent round trips, room creation
	sloLatency  = time.Second      // what the stories promise for one change
	waitLatency = 10 * time.Second // how long to wait before calling a change lost
)

// xmppUser registers name on Prosody and logs it in. Like every real client
// it fetches its roster first: Prosody delivers subscription approvals
// (and roster pushes) only to resources that did. No initial presence is
// sent.
func (e *env) xmppUser(name string) *prosodytest.Client {
	e.t.Helper()
	e.xmpp.Register(e.t, name, password)
	return e.xmppLogin(name)
}

// xmppLogin logs an existing user in again and fetches its roster.
func (e *env) xmppLogin(name string) *prosodytest.Client {
	e.t.Helper()
	c := e.xmpp.Login(e.t, name, password, "e2e")
	rosterOf(e.t, c)
	return c
}

// send sends raw XML or fails the test.
func send(t testing.TB, c *prosodytest.Client, xml string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Send(ctx, xml); err != nil {
		t.Fatalf("%s: send %s: %v", c.JID, xml, err)
	}
}

// sendPresence sends a presence stanza or fails the test.
func sendPresence(t testing.TB, c *prosodytest.Client, typ, to, show, status string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.SendPresence(ctx, typ, to, show, status, 0); err != nil {
		t.Fatalf("%s: send presence: %v", c.JID, err)
	}
}

// pingServer makes a round trip to the user's server: once it is answered,
// Prosody has processed (and routed) everything the user sent before.
func pingServer(t testing.TB, c *prosodytest.Client) {
	t.Helper()
	id := "ping-" + randomToken()[:8]
	send(t, c, `<iq type='get' id='`+id+`' to='`+c.JID.Domain().String()+`'><ping xmlns='urn:xmpp:ping'/></iq>`)
	c.Wait(t, 10*time.Second, "ping answer", func(s prosodytest.Stanza) bool { return s.Name == "iq" && s.ID == id })
}

func bare(j string) string {
	b, _, _ := strings.Cut(j, "/")
	return b
}

// presenceFrom matches presence (available or unavailable, not
// subscription) from jid's bare JID that also satisfies pred.
func presenceFrom(jid string, pred func(prosodytest.Stanza) bool) func(prosodytest.Stanza) bool {
	return func(s prosodytest.Stanza) bool {
		return s.Name == "presence" && bare(s.From) == jid && (s.Type == "" || s.Type == "unavailable") && (pred == nil || pred(s))
	}
}

// subscriptionFrom matches a subscription stanza of type typ from jid.
func subscriptionFrom(jid, typ string) func(prosodytest.Stanza) bool {
	return func(s prosodytest.Stanza) bool {
		return s.Name == "presence" && bare(s.From) == jid && s.Type == typ
	}
}

// received returns the stanzas c received from index from on that match pred.
func received(c *prosodytest.Client, from int, pred func(prosodytest.Stanza) bool) []prosodytest.Stanza {
	var out []prosodytest.Stanza
	all := c.Received()
	for _, s := range all[min(from, len(all)):] {
		if pred(s) {
			out = append(out, s)
		}
	}
	return out
}

// mxUser is a Matrix user with a client that syncs like a real one (its
// syncs keep the user online, see dendritetest) and remembers every
// presence event and invite it saw.
type mxUser struct {
	*dendritetest.Client
	t testing.TB

	mu       sync.Mutex
	since    string
	presence []mxPresence
	invites  []mxInvite
	consumed int // invites returned by waitInvite
}

// mxPresence is one m.presence event as seen by /sync.
type mxPresence struct {
	Sender string
	dendritetest.Presence
	At       time.Time
	consumed bool
}

func (p mxPresence) String() string {
	b, _ := json.Marshal(p.Presence)
	return fmt.Sprintf("%s %s at %s", p.Sender, b, p.At.Format("15:04:05.000"))
}

type mxInvite struct {
	RoomID, Inviter string
}

// matrixUser creates the Matrix user name on Dendrite.
func (e *env) matrixUser(name string) *mxUser {
	e.t.Helper()
	return &mxUser{Client: e.hs.CreateUser(e.t, name, password), t: e.t}
}

// sync runs one /sync (long-polling up to timeout) and records what it saw.
func (u *mxUser) sync(timeout time.Duration) error {
	u.mu.Lock()
	since := u.since
	u.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	resp, err := u.Sync(ctx, dendrite.SyncOptions{Since: since, Timeout: timeout})
	if err != nil {
		return err
	}
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.since = resp.NextBatch
	for _, ev := range resp.Presence {
		u.presence = append(u.presence, mxPresence{Sender: ev.Sender, Presence: ev.Content, At: now})
	}
	for _, inv := range resp.Invites {
		if !u.hasInvite(inv.RoomID) {
			u.invites = append(u.invites, mxInvite{RoomID: inv.RoomID, Inviter: inv.Inviter})
		}
	}
	return nil
}

func (u *mxUser) hasInvite(roomID string) bool {
	for _, in := range u.invites {
		if in.RoomID == roomID {
			return true
		}
	}
	return false
}

// syncUntil syncs until found returns true or timeout passes.
func (u *mxUser) syncUntil(timeout time.Duration, found func() bool) bool {
	u.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if found() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		if err := u.sync(min(left, 500*time.Millisecond)); err != nil {
			u.t.Fatalf("%s: sync: %v", u.UserID, err)
		}
	}
}

// takePresence returns the first presence of sender not yet returned that
// matches pred, consuming it and every earlier one of sender.
func (u *mxUser) takePresence(sender string, pred func(dendritetest.Presence) bool) (mxPresence, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range u.presence {
		p := &u.presence[i]
		if p.consumed || p.Sender != sender || !pred(p.Presence) {
			continue
		}
		for j := 0; j <= i; j++ {
			if u.presence[j].Sender == sender {
				u.presence[j].consumed = true
			}
		}
		return *p, true
	}
	return mxPresence{}, false
}

// waitPresence syncs until a presence of sender matching pred arrives and
// returns it; it fails the test after timeout, listing what was seen.
func (u *mxUser) waitPresence(timeout time.Duration, sender, desc string, pred func(dendritetest.Presence) bool) mxPresence {
	u.t.Helper()
	var got mxPresence
	if u.syncUntil(timeout, func() bool {
		var ok bool
		got, ok = u.takePresence(sender, pred)
		return ok
	}) {
		return got
	}
	u.t.Fatalf("%s: no presence of %s (%s) within %v; seen: %v", u.UserID, sender, desc, timeout, u.presenceOf(sender))
	return mxPresence{}
}

// presenceOf returns every presence of sender seen so far.
func (u *mxUser) presenceOf(sender string) []mxPresence {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []mxPresence
	for _, p := range u.presence {
		if p.Sender == sender {
			out = append(out, p)
		}
	}
	return out
}

// skipPresence consumes every presence seen so far.
func (u *mxUser) skipPresence() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range u.presence {
		u.presence[i].consumed = true
	}
}

// waitInvite syncs until an invite not returned before arrives.
func (u *mxUser) waitInvite(timeout time.Duration) mxInvite {
	u.t.Helper()
	var got mxInvite
	if u.syncUntil(timeout, func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.consumed < len(u.invites) {
			got = u.invites[u.consumed]
			u.consumed++
			return true
		}
		return false
	}) {
		return got
	}
	u.t.Fatalf("%s: no invite within %v", u.UserID, timeout)
	return mxInvite{}
}

// invitesSeen returns every invite seen so far.
func (u *mxUser) invitesSeen() []mxInvite {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]mxInvite(nil), u.invites...)
}

// put sets the user's presence.
func (u *mxUser) put(presence, status string) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := u.SetPresence(ctx, presence, status); err != nil {
		u.t.Fatalf("%s: set presence: %v", u.UserID, err)
	}
}

// say sends a text message to roomID.
func (u *mxUser) say(roomID, text string) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + randomToken()
	if err := u.Do(ctx, http.MethodPut, path, map[string]string{"msgtype": "m.text", "body": text}, nil); err != nil {
		u.t.Fatalf("%s: send %q to %s: %v", u.UserID, text, roomID, err)
	}
}

// link makes x and m see each other through the consent flow of the "ask"
// policy: x subscribes to m's puppet, m gets an invite from x's ghost and
// joins, x gets subscribed and a subscribe from the puppet and approves
// it. It returns the room.
func (e *env) link(x *prosodytest.Client, m *mxUser) string {
	e.t.Helper()
	puppet, ghost := e.puppet(m.UserID), e.ghost(x.JID.Bare().String())
	sendPresence(e.t, x, "subscribe", puppet, "", "")
	inv := m.waitInvite(flowTimeout)
	if inv.Inviter != ghost {
		e.t.Fatalf("%s invited by %s, want the ghost %s", m.UserID, inv.Inviter, ghost)
	}
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	if err := m.Join(ctx, inv.RoomID); err != nil {
		e.t.Fatalf("%s: join %s: %v", m.UserID, inv.RoomID, err)
	}
	x.Wait(e.t, flowTimeout, "subscribed from "+puppet, subscriptionFrom(puppet, "subscribed"))
	x.Wait(e.t, flowTimeout, "subscribe from "+puppet, subscriptionFrom(puppet, "subscribe"))
	sendPresence(e.t, x, "subscribed", puppet, "", "")
	return inv.RoomID
}

// rosterOf fetches c's roster.
func rosterOf(t testing.TB, c *prosodytest.Client) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Roster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// within fails the test if took exceeds limit, naming what took it.
func within(t testing.TB, what string, took, limit time.Duration) {
	t.Helper()
	if took > limit {
		t.Errorf("%s took %v, want at most %v", what, took.Round(time.Millisecond), limit)
	} else {
		t.Logf("%s: %v", what, took.Round(time.Millisecond))
	}
}

// is returns a predicate for a Matrix presence with this value and status
// message.
func is(presence, statusMsg string) func(dendritetest.Presence) bool {
	return func(p dendritetest.Presence) bool {
		return p.Presence == presence && statusOf(p) == statusMsg
	}
}

// statusOf returns the status message of p; absent is "".
func statusOf(p dendritetest.Presence) string {
	if p.StatusMsg == nil {
		return ""
	}
	return *p.StatusMsg
}

// xmark remembers what an XMPP client had received at one moment.
type xmark struct {
	c   *prosodytest.Client
	old map[string]bool
	n   int
}

// markX returns a mark of everything c received so far.
func markX(c *prosodytest.Client) xmark {
	all := c.Received()
	m := xmark{c: c, old: make(map[string]bool, len(all)), n: len(all)}
	for _, s := range all {
		m.old[s.Raw] = true
	}
	return m
}

// fresh restricts pred to stanzas received after the mark.
func (m xmark) fresh(pred func(prosodytest.Stanza) bool) func(prosodytest.Stanza) bool {
	return func(s prosodytest.Stanza) bool { return !m.old[s.Raw] && pred(s) }
}

// wait is Client.Wait for a stanza received after the mark.
func (m xmark) wait(t testing.TB, timeout time.Duration, desc string, pred func(prosodytest.Stanza) bool) prosodytest.Stanza {
	t.Helper()
	return m.c.Wait(t, timeout, desc, m.fresh(pred))
}

// since returns the stanzas received after the mark that match pred.
func (m xmark) since(pred func(prosodytest.Stanza) bool) []prosodytest.Stanza {
	return received(m.c, m.n, m.fresh(pred))
}

// never fails the test if found reports something during quiet. It is how
// a story asserts that something does not cross: only after a barrier
// (the bridge has seen the change, or its arrival elsewhere) and for longer
// than the latency the stories promise.
func never(t testing.TB, quiet time.Duration, desc string, found func() string) {
	t.Helper()
	deadline := time.NewTimer(quiet)
	defer deadline.Stop()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		if what := found(); what != "" {
			t.Errorf("%s: %s", desc, what)
			return
		}
		select {
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

// quietX fails the test if c receives, within quiet after the mark, a
// stanza matching pred.
func quietX(t testing.TB, m xmark, quiet time.Duration, desc string, pred func(prosodytest.Stanza) bool) {
	t.Helper()
	never(t, quiet, desc, func() string {
		if got := m.since(pred); len(got) > 0 {
			return "received " + got[0].Raw
		}
		return ""
	})
}

// quietMx fails the test if u's /sync shows, within quiet, a presence of
// sender matching pred.
func quietMx(t testing.TB, u *mxUser, quiet time.Duration, sender, desc string, pred func(dendritetest.Presence) bool) {
	t.Helper()
	deadline := time.Now().Add(quiet)
	for {
		if p, ok := u.takePresence(sender, pred); ok {
			t.Errorf("%s: %s saw %v", desc, u.UserID, p)
			return
		}
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		if err := u.sync(min(left, 500*time.Millisecond)); err != nil {
			t.Fatalf("%s: sync: %v", u.UserID, err)
		}
	}
}
