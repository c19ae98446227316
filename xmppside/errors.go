package xmppside

import "errors"

// Errors of the package. Test for them with errors.Is.
var (
	// ErrConfig wraps a configuration that does not validate.
	ErrConfig = errors.New("xmppside: invalid configuration")
	// ErrNotConnected is returned when something must be sent while the
	// component has no stream; durable commands are redelivered later.
	ErrNotConnected = errors.New("xmppside: not connected to the XMPP server")
	// ErrNamespace is returned by New when the mapping namespace does not
	// use the configured component domain.
	ErrNamespace = errors.New("xmppside: namespace does not match component_domain")
	// ErrUnauthorized is returned by Run when the server refuses the
	// handshake (wrong secret or domain); retrying would not help... but Run
	// keeps retrying with backoff since the server's config may be fixed.
	ErrUnauthorized = errors.New("xmppside: handshake refused by the server")
)
