package xmppside

import "errors"

// Errors of the package. Test for them with errors.Is.
var (
	// ErrConfig wraps a configuration that does not validate.
	ErrConfig = errors.New("xmppside: invalid configuration")
	// ErrNamespace is returned by New when the mapping namespace does not
	// use the configured component domain.
	ErrNamespace = errors.New("xmppside: namespace does not match component_domain")
	// ErrRunning is returned by Run when the component is already running.
	ErrRunning = errors.New("xmppside: already running")
	// ErrNotConnected is returned by SendSubscription while the component
	// has no stream: the command must come again later.
	ErrNotConnected = errors.New("xmppside: not connected to the XMPP server")
	// ErrAuthentication is returned by Run when the XMPP server refused the
	// component's handshake Config.MaxAuthFailures times in a row: the
	// secret is wrong, which no retry can fix.
	ErrAuthentication = errors.New("xmppside: the XMPP server refused the component secret")
)
