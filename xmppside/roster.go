package xmppside

import (
	"github.com/presence-bridge/presence-bridge/bridge"
)

// The subscription state machine of RFC 6121 Appendix A, seen from the
// puppet: the puppet is the "user", the XMPP person is the "contact".
// Inbound is what the contact sends to the puppet, Outbound what the puppet
// sends to the contact. Both are pure; the component persists the result
// with compare-and-set.

// Inbound returns the state after the puppet receives a subscription stanza
// of type t from the contact (RFC 6121 A.2), and whether the stanza is
// delivered, i.e. is news for the puppet's owner. For every legal state,
// deliver is true exactly when the state changes. An illegal input state is
// first normalized (see [Normalize]).
func Inbound(s bridge.Subscription, t bridge.SubscriptionType) (next bridge.Subscription, deliver bool) {
	s = Normalize(s)
	next = s
	switch t {
	case bridge.Subscribe: // A.2.1
		if !s.From && !s.PendingIn {
			next.PendingIn = true
		}
	case bridge.Unsubscribe: // A.2.2
		next.PendingIn, next.From = false, false
	case bridge.Subscribed: // A.2.3
		if s.PendingOut {
			next.PendingOut, next.To = false, true
		}
	case bridge.Unsubscribed: // A.2.4
		next.PendingOut, next.To = false, false
	}
	return next, !SameState(s, next)
}

// Outbound returns the state after the puppet sends a subscription stanza
// of type t to the contact (RFC 6121 A.3), and whether the stanza should be
// sent. subscribe and unsubscribe are always sent (a repeated request is
// harmless and lets a lost one through); subscribed and unsubscribed only
// when they answer or revoke something, since RFC 6121 §3.1.5 and §3.2 have
// the contact's server ignore them otherwise.
func Outbound(s bridge.Subscription, t bridge.SubscriptionType) (next bridge.Subscription, send bool) {
	s = Normalize(s)
	next = s
	switch t {
	case bridge.Subscribe: // A.3.1
		if !s.To {
			next.PendingOut = true
		}
		return next, true
	case bridge.Unsubscribe: // A.3.2
		next.PendingOut, next.To = false, false
		return next, true
	case bridge.Subscribed: // A.3.3
		if s.PendingIn {
			next.PendingIn, next.From = false, true
		}
	case bridge.Unsubscribed: // A.3.4
		next.PendingIn, next.From = false, false
	}
	return next, !SameState(s, next)
}

// Normalize turns one of the seven illegal combinations into the nearest
// legal state: To wins over PendingOut, From over PendingIn.
func Normalize(s bridge.Subscription) bridge.Subscription {
	if s.To {
		s.PendingOut = false
	}
	if s.From {
		s.PendingIn = false
	}
	return s
}

// SameState compares two subscriptions ignoring UpdatedAt.
func SameState(a, b bridge.Subscription) bool {
	return a.To == b.To && a.From == b.From && a.PendingOut == b.PendingOut && a.PendingIn == b.PendingIn
}

// StateName returns the RFC 6121 Appendix A name of a state, for logs and
// tests: "None", "None + Pending Out", ..., "Both".
func StateName(s bridge.Subscription) string {
	switch {
	case s.To && s.From:
		return "Both"
	case s.To && s.PendingIn:
		return "To + Pending In"
	case s.To:
		return "To"
	case s.From && s.PendingOut:
		return "From + Pending Out"
	case s.From:
		return "From"
	case s.PendingOut && s.PendingIn:
		return "None + Pending Out/In"
	case s.PendingOut:
		return "None + Pending Out"
	case s.PendingIn:
		return "None + Pending In"
	}
	return "None"
}
