package mapping_test

import (
	"fmt"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

func Example() {
	ns := mapping.Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: "example.org", ComponentDomain: "matrix.example.net"}
	ghost, _ := ns.GhostMXID("alice@example.com")
	puppet, _ := ns.PuppetJID("@bob:example.org")
	fmt.Println(ghost)
	fmt.Println(puppet)

	tr := mapping.NewTranslator(mapping.DefaultTable(), false)
	now := time.Now()
	m := tr.ToMatrix(tr.FromXMPP(mapping.XMPPPresence{Show: mapping.ShowDND}), now)
	fmt.Println(m.Presence, m.StatusMsg)
	// Output:
	// @_xmpp_alice=40example.com:example.org
	// bob\40example.org@matrix.example.net
	// unavailable Do not disturb
}
