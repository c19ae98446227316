package xmppside

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	prosodytest "github.com/presence-bridge/presence-bridge/internal/testenv/prosody"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// These tests play a hostile XMPP server: a second component on the test
// Prosody (evilDomain) that forges any sender on its own domain, as a
// server on the open federation may for its users.

// blast sends n stanzas made by stanzaAt from c, as fast as the stream
// takes them.
func blast(t testing.TB, c *prosodytest.Client, n int, stanzaAt func(i int) string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range n {
		if err := c.Send(ctx, stanzaAt(i)); err != nil {
			t.Fatalf("stanza %d: %v", i, err)
		}
	}
}

var syncs atomic.Int64

// sync returns once the component handled everything c sent before: the
// component handles one stream's stanzas in order, and Prosody keeps the
// order of one sender's stanzas.
func (r *rig) sync(c *prosodytest.Client, from string) {
	r.t.Helper()
	id := "sync-" + strconv.FormatInt(syncs.Add(1), 10)
	fromAttr := ""
	if from != "" {
		fromAttr = ` from='` + from + `'`
	}
	if err := c.Send(r.ctx(), `<iq type='get' id='`+id+`'`+fromAttr+` to='`+r.srv.ComponentDomain+`'><ping xmlns='urn:xmpp:ping'/></iq>`); err != nil {
		r.t.Fatal(err)
	}
	c.Wait(r.t, 2*time.Minute, "ping "+id+" answered", func(s prosodytest.Stanza) bool { return s.Name == "iq" && s.ID == id })
}

// reportsFrom counts the reports about users of domain.
func (f *fakeObserver) reportsFrom(domain string) (presences, subs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.presences {
		if p.User.Domain() == domain {
			presences++
		}
	}
	for _, s := range f.subs {
		if s.Contact.Domain() == domain {
			subs++
		}
	}
	return presences, subs
}

// storedPairs counts the pairs stored in the subscriptions bucket whose
// contact is on domain (all of them if domain is empty).
func (r *rig) storedPairs(domain string) int {
	r.t.Helper()
	n := 0
	err := r.store.Subscriptions.Range(r.ctx(), func(key string, _ bridge.Subscription) error {
		if _, contact, err := parsePairKey(key); err == nil && (domain == "" || contact.Domain() == domain) {
			n++
		}
		return nil
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return n
}

// trackedUsers is the number of XMPP users whose presence the component
// keeps.
func trackedUsers(c *Component) int {
	c.users.mu.Lock()
	defer c.users.mu.Unlock()
	return len(c.users.m)
}

// TestStrangerPresenceForgotten: presence from 2,000 forged addresses
// that hold no subscription with the puppet is reported to nobody and
// leaves nothing behind (no tracked user, no stored pair); a probe from a
// stranger is answered unsubscribed (RFC 6121 §4.3.2). A contact's
// presence still goes through.
func TestStrangerPresenceForgotten(t *testing.T) {
	r, evil := startHostileRig(t, PolicyAccept)
	const aliceJID mapping.BareJID = "alice@localhost"
	alice := r.login("alice", "laptop", 0, "", "")
	r.befriend(alice, bob)
	waitFor(t, waitLong, "alice's presence", func() bool { return r.obs.lastPresence(aliceJID).State == mapping.StateAvailable })
	users, pairs := trackedUsers(r.comp), r.storedPairs("")

	puppets := []string{r.puppet(bob), r.puppet(carol)}
	const n = 2000
	blast(t, evil, n, func(i int) string {
		switch i % 4 {
		case 3:
			return fmt.Sprintf(`<presence type='unavailable' from='s%d@%s/r' to='%s'/>`, i-1, evilDomain, puppets[i%2])
		case 2:
			return fmt.Sprintf(`<presence from='s%d@%s' to='%s'><show>dnd</show><status>bare</status></presence>`, i, evilDomain, puppets[i%2])
		}
		return fmt.Sprintf(`<presence from='s%d@%s/r%d' to='%s'><show>chat</show><status>spam %d</status><priority>5</priority></presence>`, i, evilDomain, i, puppets[i%2], i)
	})
	if err := evil.Send(r.ctx(), `<presence type='probe' from='prober@`+evilDomain+`/r' to='`+puppets[0]+`'/>`); err != nil {
		t.Fatal(err)
	}
	evil.Wait(t, waitLong, "unsubscribed in answer to a stranger's probe", func(s prosodytest.Stanza) bool {
		return s.Name == "presence" && s.Type == "unsubscribed" && s.From == puppets[0] && s.To == "prober@"+evilDomain
	})
	r.sync(evil, "sync@"+evilDomain+"/r")

	if p, s := r.obs.reportsFrom(evilDomain); p+s != 0 {
		t.Errorf("strangers' presence made %d presence and %d subscription reports", p, s)
	}
	if got := trackedUsers(r.comp); got != users {
		t.Errorf("tracked users: %d before, %d after the strangers", users, got)
	}
	if got := r.storedPairs(""); got != pairs {
		t.Errorf("stored pairs: %d before, %d after the strangers", pairs, got)
	}
	for _, s := range evil.Received() {
		if s.Name == "presence" && s.Type == "" {
			t.Fatalf("a stranger was shown a puppet's presence: %s", s.Raw)
		}
	}

	// The contact is still heard.
	if err := alice.SendPresence(r.ctx(), "", "", "away", "still here", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice away", func() bool { return r.obs.lastPresence(aliceJID).Status == "still here" })
}

// TestSubscribeFloodBudget: a hostile server sends subscribe requests from
// one forged address to 200 puppets, then from 2,000 forged addresses: the
// core hears no more than the per-address and per-domain budgets allow,
// and nothing is stored for the refused requests. A user of another
// server who asks meanwhile is heard and answered at once, and her
// presence flows.
func TestSubscribeFloodBudget(t *testing.T) {
	r, evil := startHostileRig(t, PolicyAsk)
	const aliceJID mapping.BareJID = "alice@localhost"
	alice := r.login("alice", "laptop", 0, "", "")
	lim := Default().Limits
	start := time.Now()

	const spammer = "spammer@" + evilDomain
	blast(t, evil, 200, func(i int) string {
		return fmt.Sprintf(`<presence type='subscribe' from='%s' to='%s'/>`, spammer, r.puppet(mapping.UserID(fmt.Sprintf("@u%d:example.org", i))))
	})
	const n = 2000
	blast(t, evil, n, func(i int) string {
		if i == n/2 {
			if err := alice.SendPresence(r.ctx(), "subscribe", r.puppet(bob), "", "", 0); err != nil {
				t.Fatal(err)
			}
		}
		return fmt.Sprintf(`<presence type='subscribe' from='s%d@%s' to='%s'/>`, i, evilDomain, r.puppet(mapping.UserID(fmt.Sprintf("@u%d:example.org", i%50))))
	})
	r.sync(evil, "sync@"+evilDomain+"/r")
	elapsed := time.Since(start)

	budget := func(rt Rate) int { return rt.Burst + int(elapsed/rt.Every) + 1 }
	spammerReports := 0
	r.obs.mu.Lock()
	for _, s := range r.obs.subs {
		if s.Contact == spammer {
			spammerReports++
		}
	}
	r.obs.mu.Unlock()
	if max := budget(lim.SubscribePerAddress); spammerReports > max {
		t.Errorf("one address made %d subscription reports in %v, budget %d", spammerReports, elapsed, max)
	}
	_, reports := r.obs.reportsFrom(evilDomain)
	if max := budget(lim.SubscribePerDomain); reports > max || reports == 0 {
		t.Errorf("the hostile domain made %d subscription reports in %v, want 1 to %d", reports, elapsed, max)
	}
	if stored := r.storedPairs(evilDomain); stored != reports {
		t.Errorf("%d pairs stored for the hostile domain, %d reported: refused requests must leave nothing", stored, reports)
	}
	refused := r.comp.Refused()
	if got, want := refused.SubscribePerAddress+refused.SubscribePerDomain, uint64(200+n-reports); got != want {
		t.Errorf("refusals counted: %+v, want %d in all", refused, want)
	}
	t.Logf("%d requests in %v: %d reported, refusals %+v", 200+n, elapsed, reports, refused)
	// The log does not follow the flood.
	for _, msg := range []string{"subscription request over the domain's budget", "subscription request over the address's budget"} {
		if n, max := len(r.logs.matching(slog.LevelInfo, msg)), budget(peerLogRate); n > max {
			t.Errorf("%d lines %q in %v, budget %d", n, msg, elapsed, max)
		}
	}

	// The well-behaved user was heard and is answered.
	waitFor(t, waitLong, "alice's request reported", func() bool { return r.obs.subscriptions(aliceJID, bob, bridge.Subscribe) == 1 })
	r.command(bob, aliceJID, bridge.Subscribed)
	alice.Wait(t, waitLong, "subscribed", from("presence", "subscribed", r.puppet(bob)))
	r.command(bob, aliceJID, bridge.Subscribe)
	alice.Wait(t, waitLong, "subscribe from the puppet", from("presence", "subscribe", r.puppet(bob)))
	if err := alice.SendPresence(r.ctx(), "subscribed", r.puppet(bob), "", "", 0); err != nil {
		t.Fatal(err)
	}
	if err := alice.SendPresence(r.ctx(), "", "", "dnd", "busy", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "alice's presence", func() bool { return r.obs.lastPresence(aliceJID).Status == "busy" })
}

// TestResourceFlood: a hostile server sends presence from 60,000
// resources of one of its users who is a contact of a puppet. The
// component keeps at most Limits.ResourcesPerAddress of them, keeps
// up (the aggregate is not recomputed over every resource for every
// stanza), and reports the aggregate.
func TestResourceFlood(t *testing.T) {
	r, evil := startHostileRig(t, PolicyAccept)
	const mallory = "mallory@" + evilDomain
	puppet := r.puppet(bob)
	if err := evil.Send(r.ctx(), `<presence type='subscribe' from='`+mallory+`' to='`+puppet+`'/>`); err != nil {
		t.Fatal(err)
	}
	evil.Wait(t, waitLong, "subscribe from the puppet", func(s prosodytest.Stanza) bool {
		return s.Name == "presence" && s.Type == "subscribe" && s.From == puppet && s.To == mallory
	})
	if err := evil.Send(r.ctx(), `<presence type='subscribed' from='`+mallory+`' to='`+puppet+`'/>`); err != nil {
		t.Fatal(err)
	}
	r.waitSub(bob, mallory, sBoth)

	const n = 60000
	start := time.Now()
	blast(t, evil, n, func(i int) string {
		return fmt.Sprintf(`<presence from='%s/r%d' to='%s'><priority>%d</priority><status>r%d</status></presence>`, mallory, i, puppet, i%7, i)
	})
	sent := time.Since(start)
	r.sync(evil, mallory+"/sync")
	took := time.Since(start)
	t.Logf("%d resources: sent in %v, handled in %v", n, sent, took)

	r.comp.users.mu.Lock()
	kept := 0
	if e := r.comp.users.m[mallory]; e != nil {
		kept = e.res.Len()
	}
	r.comp.users.mu.Unlock()
	if max := Default().Limits.ResourcesPerAddress; kept > max || kept == 0 {
		t.Errorf("%d resources kept, want 1 to %d", kept, max)
	}
	if p := r.obs.lastPresence(mallory); p.State != mapping.StateAvailable || !strings.HasPrefix(p.Status, "r") {
		t.Errorf("aggregate %+v", p)
	}
	if d := took - sent; d > 10*time.Second {
		t.Errorf("the component needed %v after the last stanza was sent", d)
	}
}

// TestCommandsToPeopleOnly: an echo bot that sends every message it gets
// back to the component gets a bounded number of replies; messages of
// type error, headline or groupchat and messages from servers are never
// answered; chat and normal ones from people are.
func TestCommandsToPeopleOnly(t *testing.T) {
	r, evil := startHostileRig(t, PolicyAsk)
	domain := r.srv.ComponentDomain
	bot := r.login("bot", "echo", 0, "", "")
	replies := func(c *prosodytest.Client) int {
		n := 0
		for _, s := range c.Received() {
			if s.Name == "message" && s.From == domain && s.Type != "error" {
				n++
			}
		}
		return n
	}

	// Types that are never answered, from a person and from a server.
	for _, typ := range []string{"headline", "groupchat", "error"} {
		if err := bot.Send(r.ctx(), `<message type='`+typ+`' to='`+domain+`'><body>help</body></message>`); err != nil {
			t.Fatal(err)
		}
	}
	if err := evil.Send(r.ctx(), `<message type='chat' from='`+evilDomain+`' to='`+domain+`'><body>help</body></message>`); err != nil {
		t.Fatal(err)
	}
	r.sync(evil, "")
	r.ping(bot, domain)
	if n := replies(bot) + replies(evil); n != 0 {
		t.Fatalf("%d replies to messages that must not be answered", n)
	}

	// A normal message from a person is answered.
	if err := bot.Send(r.ctx(), `<message to='`+domain+`'><body>help</body></message>`); err != nil {
		t.Fatal(err)
	}
	s := bot.Wait(t, waitLong, "help", func(s prosodytest.Stanza) bool { return s.Name == "message" && s.From == domain })

	// The echo bot: every reply goes back as a chat message.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	echoes := 0
	for {
		if err := bot.Send(ctx, `<message type='chat' to='`+domain+`'><body>`+xmlEscape(s.Body)+`</body></message>`); err != nil {
			break
		}
		echoes++
		var err error
		if s, err = bot.Client.Wait(ctx, func(s prosodytest.Stanza) bool { return s.Name == "message" && s.From == domain }); err != nil {
			break
		}
	}
	lim := Default().Limits.CommandsPerAddress
	if max := lim.Burst + int(5*time.Second/lim.Every) + 1; replies(bot) > max {
		t.Errorf("%d replies to an echo bot in 5 s, budget %d", replies(bot), max)
	}
	t.Logf("echo bot: %d replies in 5 s, %d echoes; refusals %+v", replies(bot), echoes, r.comp.Refused())
	if rf := r.comp.Refused(); rf.CommandsPerAddress+rf.CommandsPerDomain == 0 {
		t.Error("refused commands not counted")
	}
}

func xmlEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '&':
			b.WriteString("&amp;")
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}
