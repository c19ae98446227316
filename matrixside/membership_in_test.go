package matrixside

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMembershipEvents(t *testing.T) {
	s := newTestSide(t, testConfig("http://127.0.0.1:1"), nil)
	alice := ghostOf(t, "alice@example.com")
	const bob, room = "@bob:localhost", "!dm:localhost"
	type want struct{ user, peer, membership, member, sender string }
	steps := []struct {
		name                         string
		sender, stateKey, membership string
		want                         []want
	}{
		{"outsiders ignored", "@carol:localhost", "@dave:localhost", "join", nil},
		{"bob invites ghost", bob, alice, "invite", []want{{bob, "alice@example.com", "invite", "alice@example.com", bob}}},
		{"ghost joins", alice, alice, "join", []want{{bob, "alice@example.com", "join", "alice@example.com", "alice@example.com"}}},
		{"carol joins the room", "@carol:localhost", "@carol:localhost", "join", []want{{"@carol:localhost", "alice@example.com", "join", "@carol:localhost", "@carol:localhost"}}},
		{"bot invited", bob, "@presencebot:localhost", "invite", nil},
		{"undecodable ghost", bob, "@_xmpp_UPPER:localhost", "invite", nil},
		{"upper case user", "@Bob:localhost", alice, "invite", nil},
		{"ghost invites dave", alice, "@dave:localhost", "invite", []want{{"@dave:localhost", "alice@example.com", "invite", "@dave:localhost", "alice@example.com"}}},
		{"dave rejects", "@dave:localhost", "@dave:localhost", "leave", []want{{"@dave:localhost", "alice@example.com", "reject", "@dave:localhost", "@dave:localhost"}}},
		{"bob leaves", bob, bob, "leave", []want{{bob, "alice@example.com", "leave", bob, bob}}},
		{"carol kicks ghost", "@carol:localhost", alice, "leave", []want{{"@carol:localhost", "alice@example.com", "leave", "alice@example.com", "@carol:localhost"}}},
		{"nobody left to tell", "@carol:localhost", "@carol:localhost", "leave", nil},
	}
	for _, st := range steps {
		evs := s.membershipEvents(memberEvent{RoomID: room, Sender: st.sender, StateKey: st.stateKey, Membership: st.membership})
		var got []want
		for _, ev := range evs {
			got = append(got, want{ev.User, ev.Peer, ev.Membership.Membership, ev.Membership.Member, ev.Membership.Sender})
		}
		if len(got) != len(st.want) || (len(got) > 0 && got[0] != st.want[0]) {
			t.Errorf("%s: got %+v, want %+v", st.name, got, st.want)
		}
	}
}

// TestImports: matrixside never imports the XMPP side (STYLE: sides never
// import each other).
func TestImports(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			if strings.Contains(imp.Path.Value, "xmppside") || strings.Contains(imp.Path.Value, "/cmd") {
				t.Errorf("%s imports %s", f, imp.Path.Value)
			}
		}
	}
}
