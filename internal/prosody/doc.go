// Package prosody runs a real Prosody XMPP server on loopback and logs in
// to it as an XMPP client. The test harness (internal/testenv/prosody) and
// the sandbox (internal/sandbox) are built on it.
//
// Start writes a configuration into Config.Dir (kept there: data survives
// a restart), launches "prosody --config CFG -F" bound to 127.0.0.1 on the
// given ports (one for clients, one for XEP-0114 external components) and
// waits until both ports accept connections. Users are created with
// Server.Register (prosodyctl register).
//
// Dial returns a Client: a logged-in mellium.im/xmpp session over plain TCP
// that records every stanza it receives. Callers send raw XML with
// Client.Send and wait for stanzas with Client.Wait, which waits for a
// notification with a deadline instead of sleeping.
//
// The configuration is deliberately insecure (plain-text authentication
// without TLS) and only listens on loopback; never use it for anything but
// tests and the local sandbox.
package prosody
