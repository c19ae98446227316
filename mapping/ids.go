package mapping

// BareJID is an XMPP user's address without a resource (local@domain), in
// the case-folded form servers produce. Make one with [NewBareJID], which
// validates; a conversion from string does not, so it is for values that
// were validated before (read back from the bridge's own state).
type BareJID string

// NewBareJID validates s as a bare JID (see [ParseBareJID]).
func NewBareJID(s string) (BareJID, error) {
	if _, _, err := ParseBareJID(s); err != nil {
		return "", err
	}
	return BareJID(s), nil
}

// Domain returns the domainpart.
func (j BareJID) Domain() string {
	for i := len(j) - 1; i >= 0; i-- {
		if j[i] == '@' {
			return string(j[i+1:])
		}
	}
	return string(j)
}

func (j BareJID) String() string { return string(j) }

// UserID is a Matrix user ID (@local:server) that the bridge can represent
// as a JID. Make one with [NewUserID], which validates (see [ParseMXID]).
type UserID string

// NewUserID validates s as a Matrix user ID.
func NewUserID(s string) (UserID, error) {
	if _, _, err := ParseMXID(s); err != nil {
		return "", err
	}
	return UserID(s), nil
}

// Server returns the server name.
func (u UserID) Server() string {
	for i := 0; i < len(u); i++ {
		if u[i] == ':' {
			return string(u[i+1:])
		}
	}
	return ""
}

// Localpart returns the localpart, without the sigil.
func (u UserID) Localpart() string {
	for i := 0; i < len(u); i++ {
		if u[i] == ':' {
			return string(u[1:i])
		}
	}
	return ""
}

func (u UserID) String() string { return string(u) }
