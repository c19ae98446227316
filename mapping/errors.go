package mapping

import "errors"

// Errors returned by the parsers and identity functions. They are wrapped with
// the offending input, so test for them with errors.Is.
var (
	// ErrInvalidJID is returned for a string that is not a valid bare JID.
	ErrInvalidJID = errors.New("mapping: invalid JID")
	// ErrInvalidMXID is returned for a string that is not a valid Matrix user ID,
	// or one the bridge cannot represent as a JID.
	ErrInvalidMXID = errors.New("mapping: invalid Matrix user ID")
	// ErrNotGhost is returned when a Matrix user ID is valid but not in the
	// bridge's ghost namespace.
	ErrNotGhost = errors.New("mapping: not a ghost user ID")
	// ErrNotPuppet is returned when a JID is valid but not a puppet on the
	// bridge's component domain.
	ErrNotPuppet = errors.New("mapping: not a puppet JID")
	// ErrTooLong is returned when an address would exceed its protocol's limit.
	ErrTooLong = errors.New("mapping: address too long")
	// ErrUnknownValue is returned by the enum parsers for a value they do not know.
	ErrUnknownValue = errors.New("mapping: unknown value")
)
