// Package prosodytest runs a real Prosody XMPP server for integration tests.
// It is internal/prosody (the server and the client) bound to a test:
// temporary directory, free ports, cleanup, and failures instead of errors.
//
// Start writes a throw-away configuration into a temporary directory, launches
// "prosody --config CFG -F" bound to 127.0.0.1 on two free ports (one for
// client-to-server connections, one for XEP-0114 external components) and
// waits until both ports accept connections. The server is stopped
// automatically when the test ends; on test failure its log is printed.
// Server.Restart restarts it cleanly on the same ports and data, and
// Server.Kill takes it down with SIGKILL, as a crash would.
//
// Users are created with Server.Register (prosodyctl register), and
// Server.Login returns a Client: a logged-in mellium.im/xmpp session over plain
// TCP that records every stanza it receives. Tests send raw XML with
// Client.Send and wait for stanzas with Client.Wait, which polls the receive
// buffer with a deadline instead of sleeping.
//
// Prosody is an external program. If it is not installed the tests using this
// package are skipped, unless the environment variable CI is "true", in which
// case they fail. Install it with:
//
//	apt-get install -y prosody
//
// The configuration is deliberately insecure (plain-text authentication
// without TLS) and only listens on loopback; never use it outside tests.
package prosodytest
