package xmppside

import "sync/atomic"

// Refusals counts, by reason, what the component refused or forgot to stay
// within its limits (Config.Limits) and its consent rule, since it was
// created. Metric-ready: the reasons are fixed and carry no user
// identifiers.
type Refusals struct {
	// StrangerPresence: presence to a puppet from someone who holds no
	// subscription with it (not even a pending one), ignored.
	StrangerPresence uint64
	// SubscribePerAddress and SubscribePerDomain: subscription requests
	// over the sender's budget, ignored.
	SubscribePerAddress uint64
	SubscribePerDomain  uint64
	// CommandsPerAddress and CommandsPerDomain: chat commands over the
	// sender's budget, not run nor answered.
	CommandsPerAddress uint64
	CommandsPerDomain  uint64
	// MessagesIgnored: messages that are never answered (error, headline
	// or groupchat, or from a server rather than a person).
	MessagesIgnored uint64
	// ResourcesEvicted: resources forgotten to make room for a new one of
	// the same user (Limits.ResourcesPerAddress).
	ResourcesEvicted uint64
	// UsersEvicted: XMPP users forgotten to make room for another
	// (Limits.TrackedUsers).
	UsersEvicted uint64
}

// Map returns the counts by reason name (snake case), for metrics.
func (r Refusals) Map() map[string]uint64 {
	return map[string]uint64{
		"stranger_presence":     r.StrangerPresence,
		"subscribe_per_address": r.SubscribePerAddress,
		"subscribe_per_domain":  r.SubscribePerDomain,
		"commands_per_address":  r.CommandsPerAddress,
		"commands_per_domain":   r.CommandsPerDomain,
		"messages_ignored":      r.MessagesIgnored,
		"resources_evicted":     r.ResourcesEvicted,
		"users_evicted":         r.UsersEvicted,
	}
}

// refusals is the live counterpart of Refusals.
type refusals struct {
	strangerPresence, subscribePerAddress, subscribePerDomain atomic.Uint64
	commandsPerAddress, commandsPerDomain, messagesIgnored    atomic.Uint64
	resourcesEvicted, usersEvicted                            atomic.Uint64
}

// Refused returns what the component refused or forgot so far, by reason.
// Safe for concurrent use.
func (c *Component) Refused() Refusals {
	r := &c.refused
	return Refusals{
		StrangerPresence:    r.strangerPresence.Load(),
		SubscribePerAddress: r.subscribePerAddress.Load(),
		SubscribePerDomain:  r.subscribePerDomain.Load(),
		CommandsPerAddress:  r.commandsPerAddress.Load(),
		CommandsPerDomain:   r.commandsPerDomain.Load(),
		MessagesIgnored:     r.messagesIgnored.Load(),
		ResourcesEvicted:    r.resourcesEvicted.Load(),
		UsersEvicted:        r.usersEvicted.Load(),
	}
}
