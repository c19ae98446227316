package matrixside_test

import (
	"fmt"

	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/matrixside"
)

// The registration file that `presence-bridge generate-registration`
// writes (with fresh tokens where the config has none).
func ExampleRegistration() {
	cfg := matrixside.Default()
	cfg.HomeserverDomain = "example.org"
	cfg.ASToken, cfg.HSToken = "AS_TOKEN", "HS_TOKEN"
	ns := mapping.Namespace{GhostPrefix: cfg.GhostPrefix, HomeserverDomain: cfg.HomeserverDomain, ComponentDomain: "matrix.example.net"}
	data, err := matrixside.Registration(cfg, ns).YAML()
	if err != nil {
		panic(err)
	}
	fmt.Print(data)
	// Output:
	// id: presence-bridge
	// url: http://127.0.0.1:29330
	// as_token: AS_TOKEN
	// hs_token: HS_TOKEN
	// sender_localpart: presencebot
	// rate_limited: false
	// namespaces:
	//     users:
	//         - regex: ^@_xmpp_.*:example\.org$
	//           exclusive: true
	// de.sorunome.msc2409.push_ephemeral: true
	// receive_ephemeral: true
}
