package prosodytest

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

const waitTimeout = 10 * time.Second

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestPresenceMessageRoster(t *testing.T) {
	s := Start(t, Options{})
	s.Register(t, "alice", "alice-pw")
	s.Register(t, "bob", "bob-pw")
	ctx := testContext(t)

	alice := s.Login(t, "alice", "alice-pw", "test")
	bob := s.Login(t, "bob", "bob-pw", "test")
	if got := alice.JID.Bare().String(); got != "alice@localhost" {
		t.Fatalf("alice bound %q", alice.JID)
	}
	if alice.JID.Resourcepart() == "" {
		t.Fatalf("alice has no resource: %q", alice.JID)
	}
	if err := bob.SendPresence(ctx, "", "", "", "", 0); err != nil {
		t.Fatal(err)
	}

	// Directed presence with XEP-0319 idle, sent as raw XML.
	err := alice.Send(ctx, fmt.Sprintf(`<presence to='%s'><show>away</show><status>lunch</status>`+
		`<priority>5</priority><idle xmlns='urn:xmpp:idle:1' since='2024-01-02T03:04:05Z'/></presence>`, bob.JID))
	if err != nil {
		t.Fatal(err)
	}
	p := bob.Wait(t, waitTimeout, "alice's directed presence", func(st Stanza) bool {
		return st.Name == "presence" && strings.HasPrefix(st.From, "alice@localhost/")
	})
	if p.Show != "away" || p.Status != "lunch" || p.Priority != "5" || p.IdleSince != "2024-01-02T03:04:05Z" {
		t.Errorf("presence fields: %+v", p)
	}
	if p.From != alice.JID.String() || p.To != bob.JID.String() {
		t.Errorf("presence from/to = %q/%q, want %q/%q", p.From, p.To, alice.JID, bob.JID)
	}

	if err := alice.Send(ctx, fmt.Sprintf(`<message to='%s' type='chat'><body>hi &amp; bye</body></message>`, bob.JID)); err != nil {
		t.Fatal(err)
	}
	m := bob.Wait(t, waitTimeout, "alice's message", func(st Stanza) bool { return st.Name == "message" })
	if m.Body != "hi & bye" || m.Type != "chat" {
		t.Errorf("message: %+v", m)
	}
	// A consumed stanza is not returned again, but still listed.
	if n := len(bob.Received()); n < 2 {
		t.Errorf("bob received %d stanzas, want at least 2", n)
	}

	// Subscribing puts bob on alice's roster (pushed, then fetched).
	roster, err := alice.Roster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(roster) != 0 {
		t.Errorf("initial roster = %v, want empty", roster)
	}
	if err := alice.SendPresence(ctx, "subscribe", "bob@localhost", "", "", 0); err != nil {
		t.Fatal(err)
	}
	bob.Wait(t, waitTimeout, "subscription request", func(st Stanza) bool {
		return st.Name == "presence" && st.Type == "subscribe" && st.From == "alice@localhost"
	})
	alice.Wait(t, waitTimeout, "roster push", func(st Stanza) bool {
		return st.Name == "iq" && st.Type == "set" && strings.Contains(st.Raw, "bob@localhost")
	})
	roster, err = alice.Roster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sub, ok := roster["bob@localhost"]; !ok || sub != "none" {
		t.Errorf("roster = %v, want bob@localhost: none", roster)
	}
}

func TestRestart(t *testing.T) {
	s := Start(t, Options{})
	s.Register(t, "alice", "pw")
	c2s, comp := s.C2SAddr, s.ComponentAddr
	old := s.Login(t, "alice", "pw", "")

	s.Restart(t)
	if s.C2SAddr != c2s || s.ComponentAddr != comp {
		t.Fatalf("addresses changed: %s %s -> %s %s", c2s, comp, s.C2SAddr, s.ComponentAddr)
	}
	old.Close() // the connection was dropped; Close must not hang

	// The account survived in the data dir; a new login works.
	c := s.Login(t, "alice", "pw", "")
	if err := c.SendPresence(testContext(t), "", "", "", "back", 0); err != nil {
		t.Fatal(err)
	}
	c.Wait(t, waitTimeout, "own presence echo", func(st Stanza) bool {
		return st.Name == "presence" && st.Status == "back"
	})

	if _, err := s.login("alice", "wrong", ""); err == nil {
		t.Error("login with a wrong password succeeded")
	}
}

// TestKill: Kill takes Prosody down without a goodbye, and Restart brings
// it back on the same ports and data, stale pid file and all.
func TestKill(t *testing.T) {
	s := Start(t, Options{})
	s.Register(t, "alice", "pw")
	c := s.Login(t, "alice", "pw", "")

	s.Kill()
	select {
	case <-c.Done():
	case <-time.After(waitTimeout):
		t.Fatal("the client's stream outlived the killed server")
	}
	if log := s.Log(); strings.Contains(log, "SIGTERM") || strings.Contains(log, "Shutting down") {
		t.Errorf("a killed Prosody shut down cleanly:\n%s", log)
	}
	s.Kill() // no-op when not running

	s.Restart(t)
	c = s.Login(t, "alice", "pw", "")
	if err := c.SendPresence(testContext(t), "", "", "", "back", 0); err != nil {
		t.Fatal(err)
	}
	c.Wait(t, waitTimeout, "own presence echo", func(st Stanza) bool {
		return st.Name == "presence" && st.Status == "back"
	})
}

// TestComponentPort checks that the XEP-0114 port answers with a stream
// header and accepts the configured secret.
func TestComponentPort(t *testing.T) {
	s := Start(t, Options{ComponentDomain: "bridge.localhost", ComponentSecret: "s3cret"})
	conn, err := net.DialTimeout("tcp", s.ComponentAddr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, `<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' `+
		`xmlns:stream='http://etherx.jabber.org/streams' to='%s'>`, s.ComponentDomain)

	r := bufio.NewReader(conn)
	header, err := readUntil(r, "<stream:stream")
	if err != nil {
		t.Fatalf("reading stream header: %v (got %q)", err, header)
	}
	id := regexp.MustCompile(`\bid=['"]([^'"]+)['"]`).FindStringSubmatch(header)
	if id == nil {
		t.Fatalf("no stream id in %q", header)
	}

	sum := sha1.Sum([]byte(id[1] + s.ComponentSecret))
	fmt.Fprintf(conn, "<handshake>%s</handshake>", hex.EncodeToString(sum[:]))
	reply, err := readUntil(r, "handshake")
	if err != nil || strings.Contains(reply, "error") {
		t.Fatalf("handshake reply %q: %v", reply, err)
	}
}

// readUntil reads from r, up to a '>', until what was read contains want.
func readUntil(r *bufio.Reader, want string) (string, error) {
	var b strings.Builder
	for !strings.Contains(b.String(), want) {
		s, err := r.ReadString('>')
		b.WriteString(s)
		if err != nil {
			return b.String(), err
		}
	}
	return b.String(), nil
}

// TestExtraComponentForgesItsUsers: an extra component domain can send as
// any JID on its domain, as a hostile server can for its users; roster
// items show a pending request as ask.
func TestExtraComponentForgesItsUsers(t *testing.T) {
	s := Start(t, Options{ExtraComponents: []Component{{Domain: "evil.localhost", Secret: "evil"}}})
	s.Register(t, "alice", "alice-pw")
	ctx := testContext(t)
	alice := s.Login(t, "alice", "alice-pw", "test")
	if err := alice.SendPresence(ctx, "", "", "", "", 0); err != nil {
		t.Fatal(err)
	}
	evil := s.DialComponent(t, "evil.localhost", "evil")
	if err := evil.Send(ctx, `<message type='chat' from='forged@evil.localhost/x' to='alice@localhost'><body>hi</body></message>`); err != nil {
		t.Fatal(err)
	}
	m := alice.Wait(t, waitTimeout, "the forged message", func(st Stanza) bool { return st.Name == "message" && st.Body == "hi" })
	if m.From != "forged@evil.localhost/x" {
		t.Errorf("from %q", m.From)
	}
	if err := alice.SendPresence(ctx, "subscribe", "forged@evil.localhost", "", "", 0); err != nil {
		t.Fatal(err)
	}
	evil.Wait(t, waitTimeout, "the request", func(st Stanza) bool { return st.Name == "presence" && st.Type == "subscribe" })
	items, err := alice.RosterItems(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if it := items["forged@evil.localhost"]; it.Subscription != "none" || it.Ask != "subscribe" {
		t.Errorf("roster item %+v, want none with ask subscribe", it)
	}
}
