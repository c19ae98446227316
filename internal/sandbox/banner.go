package sandbox

import (
	"fmt"
	"strconv"
	"text/tabwriter"
)

// BannerEnd is the last line of the login instructions; presence lines
// follow it.
const BannerEnd = "Presence crossing the bridge, as each side sees it (Ctrl-C stops everything):"

// printBanner prints how to log in with any XMPP client and any Matrix
// client. The "key: value" lines under the two headings are stable: the
// sandbox's test reads them.
func (s *sandbox) printBanner() {
	xmppPort := strconv.Itoa(s.st.Ports.XMPP)
	w := tabwriter.NewWriter(s.w, 0, 0, 1, ' ', 0)
	line := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	line("")
	line("The presence-bridge sandbox is running: Prosody, Dendrite and the bridge, on 127.0.0.1 only.")
	line("alice (XMPP) and bob (Matrix) see each other's presence: change it in either client.")
	line("")
	line("XMPP: log in with any XMPP client")
	line("  server:\t127.0.0.1")
	line("  port:\t%s", xmppPort)
	line("  user:\t%s@%s", xmppUser, xmppDomain)
	line("  password:\t%s", s.st.XMPPPassword)
	line("  TLS:\toff (loopback only): allow plain-text connections and passwords")
	line("  contact:\t%s\t(bob on Matrix, already in alice's roster)", puppetJID(matrixUser))
	line("  e.g.:\tprofanity, then: /connect %s@%s server 127.0.0.1 port %s tls disable", xmppUser, xmppDomain, xmppPort)
	line("")
	line("Matrix: log in with any Matrix client")
	line("  homeserver:\t%s", s.homeserverURL())
	line("  user:\t@%s:%s\t(user name %s)", matrixUser, homeserver, matrixUser)
	line("  password:\t%s", s.st.MatrixPassword)
	line("  TLS:\toff (loopback only): a plain http:// homeserver URL")
	line("  contact:\t%s\t(alice on XMPP, in a direct chat with bob)", ghostMXID(xmppUser))
	line("  e.g.:\tElement Desktop: Sign in, Edit the homeserver, %s", s.homeserverURL())
	line("")
	line("To show what each side sees, the sandbox itself stays logged in as alice (resource %q,", observerRes)
	line("priority -1: your client's presence wins) and as bob (without ever making bob online).")
	line("Data, configs and logs: %s (the bridge's config: %s).", s.paths.root, s.paths.bridgeConfig)
	line("Ask the bridge itself: .build/bin/presence-bridge watch -config %s", s.paths.bridgeConfig)
	line("  (or presence alice@%s @%s:%s, subscriptions @%s:%s, statuses)", xmppDomain, matrixUser, homeserver, matrixUser, homeserver)
	line("make run again reuses the same users and state; make clean removes it.")
	line("")
	line("%s", BannerEnd)
	_ = w.Flush()
}
