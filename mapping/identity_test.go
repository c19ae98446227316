package mapping

import (
	"errors"
	"strings"
	"testing"
)

var testNS = Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: "example.org", ComponentDomain: "matrix.example.net"}

func TestGhostMXID(t *testing.T) {
	cases := []struct{ jid, mxid string }{
		{"alice@example.com", "@_xmpp_alice=40example.com:example.org"},
		{"a_b@x.y", "@_xmpp_a__b=40x.y:example.org"},
		{"zoë@example.com", "@_xmpp_zo=c3=ab=40example.com:example.org"},
		{"o+hara@example.com", "@_xmpp_o=2bhara=40example.com:example.org"},
		{"a=b@[::1]", "@_xmpp_a=3db=40=5b=3a=3a1=5d:example.org"},
	}
	for _, c := range cases {
		got, err := testNS.GhostMXID(BareJID(c.jid))
		if err != nil || string(got) != c.mxid {
			t.Errorf("GhostMXID(%q) = %q, %v; want %q", c.jid, got, err, c.mxid)
			continue
		}
		back, err := testNS.ParseGhostMXID(got)
		if err != nil || string(back) != c.jid {
			t.Errorf("ParseGhostMXID(%q) = %q, %v; want %q", got, back, err, c.jid)
		}
	}
}

func TestGhostMXIDErrors(t *testing.T) {
	bad := []struct {
		in   string
		want error
	}{
		{"example.com", ErrInvalidJID},
		{"@example.com", ErrInvalidJID},
		{"Alice@example.com", ErrInvalidJID},
		{"al ice@example.com", ErrInvalidJID},
		{"alice@example.com/res", ErrInvalidJID},
		{"alice@", ErrInvalidJID},
		{strings.Repeat("a", 300) + "@example.com", ErrTooLong},
	}
	for _, c := range bad {
		if _, err := testNS.GhostMXID(BareJID(c.in)); !errors.Is(err, c.want) {
			t.Errorf("GhostMXID(%q) err = %v, want %v", c.in, err, c.want)
		}
	}
	notGhost := []struct {
		in   string
		want error
	}{
		{"@bob:example.org", ErrNotGhost},
		{"@_xmpp_alice=40example.com:other.org", ErrNotGhost},
		{"@_xmpp_alice:example.org", ErrNotGhost},                 // no domain in the JID
		{"@_xmpp_alice=40example=2ecom:example.org", ErrNotGhost}, // '.' escaped: not canonical
		{"@_xmpp_alice=4:example.org", ErrNotGhost},
		{"@_xmpp_a_=40b.c:example.org", ErrNotGhost},
		{"@_xmpp_a_=40b.c", ErrInvalidMXID},
		{"bob", ErrInvalidMXID},
	}
	for _, c := range notGhost {
		if _, err := testNS.ParseGhostMXID(UserID(c.in)); !errors.Is(err, c.want) {
			t.Errorf("ParseGhostMXID(%q) err = %v, want %v", c.in, err, c.want)
		}
	}
}

func TestPuppetJID(t *testing.T) {
	cases := []struct{ mxid, jid string }{
		{"@bob:example.org", `bob\40example.org@matrix.example.net`},
		{"@bob:example.org:8448", `bob\40example.org\3a8448@matrix.example.net`},
		{"@a/b:[::1]:8448", `a\2fb\40[\3a\3a1]\3a8448@matrix.example.net`},
		{"@o'h&x:e.org", `o\27h\26x\40e.org@matrix.example.net`},
		{`@back\slash:e.org`, `back\5cslash\40e.org@matrix.example.net`},
	}
	for _, c := range cases {
		got, err := testNS.PuppetJID(UserID(c.mxid))
		if err != nil || string(got) != c.jid {
			t.Errorf("PuppetJID(%q) = %q, %v; want %q", c.mxid, got, err, c.jid)
			continue
		}
		back, err := testNS.ParsePuppetJID(string(got) + "/resource")
		if err != nil || string(back) != c.mxid {
			t.Errorf("ParsePuppetJID(%q) = %q, %v; want %q", got, back, err, c.mxid)
		}
	}
}

func TestPuppetJIDErrors(t *testing.T) {
	for _, in := range []string{"bob:example.org", "@:example.org", "@Bob:example.org", "@bob:Example.org", "@bob:", "@bo b:example.org", "@bob:ex_ample.org", "@bob:example.org:99999999"} {
		if _, err := testNS.PuppetJID(UserID(in)); !errors.Is(err, ErrInvalidMXID) {
			t.Errorf("PuppetJID(%q) err = %v, want ErrInvalidMXID", in, err)
		}
	}
	for _, in := range []string{
		`bob\40example.org@other.net`,
		`bob@matrix.example.net`,
		`bob\4example.org@matrix.example.net`,
		`bob\41example.org@matrix.example.net`,
		`bob@example.org@matrix.example.net`, // '@' unescaped: not canonical
		`matrix.example.net`,
	} {
		if _, err := testNS.ParsePuppetJID(in); !errors.Is(err, ErrNotPuppet) {
			t.Errorf("ParsePuppetJID(%q) err = %v, want ErrNotPuppet", in, err)
		}
	}
}

func TestNamespaceValidate(t *testing.T) {
	if err := testNS.Validate(); err != nil {
		t.Fatal(err)
	}
	err := Namespace{GhostPrefix: "X!", HomeserverDomain: "", ComponentDomain: "a..b"}.Validate()
	for _, want := range []string{"ghost prefix", "homeserver domain", "component domain"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v does not mention %s", err, want)
		}
	}
}
