package core

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// Policy is how subscription requests from XMPP users are answered.
type Policy string

// The policies (reference: SleekXMPP's auto_authorize).
const (
	// PolicyAsk asks the Matrix user (an invite from the XMPP user's ghost).
	PolicyAsk Policy = "ask"
	// PolicyAccept approves every request at once.
	PolicyAccept Policy = "accept"
	// PolicyReject refuses every request.
	PolicyReject Policy = "reject"
)

// Config is the "core" section of config.yaml.
type Config struct {
	// CoalesceWindow: per user, changes within it collapse into the latest.
	CoalesceWindow time.Duration `yaml:"coalesce_window"`
	// Policy answers subscription requests: ask, accept or reject. It is set
	// from xmpp.subscription_policy by cmd, so it is not a key of its own.
	Policy Policy `yaml:"-"`
	// AllowXMPPDomains, if not empty, are the only XMPP domains bridged.
	AllowXMPPDomains []string `yaml:"allow_xmpp_domains"`
	// DenyXMPPDomains are never bridged.
	DenyXMPPDomains []string `yaml:"deny_xmpp_domains"`
	// AllowMatrixServers, if not empty, are the only Matrix servers bridged.
	AllowMatrixServers []string `yaml:"allow_matrix_servers"`
	// DenyMatrixServers are never bridged.
	DenyMatrixServers []string `yaml:"deny_matrix_servers"`
	// InviteLocalOnly lets ghosts invite only Matrix users of the bridge's
	// own homeserver: a gateway on the open XMPP federation then never
	// sends invites into the Matrix federation.
	InviteLocalOnly bool `yaml:"invite_local_only"`
	// Limits are the budgets of requests from XMPP that would create state
	// and Matrix-side effects.
	Limits Limits `yaml:"limits"`
	// Partitions: the users are shared out among the core instances in
	// this many partitions (bridge.InStream). Every instance must use the
	// same number: the stream is made with the first one's.
	Partitions int `yaml:"partitions"`
}

// Limits bound how fast XMPP users can make the bridge ask Matrix users:
// every subscription request that would create a link and an invite (a
// ghost registered, a room created, a Matrix user invited) takes a token
// from the bucket of its address, of its domain, and of the whole bridge.
// A request over any budget is left unanswered (see [Core.Refusals]).
// Users of the local XMPP domains spend only their address's budget.
type Limits struct {
	// PerAddress is the budget of one XMPP address.
	PerAddress Budget `yaml:"per_address"`
	// PerDomain is the budget of one XMPP domain: a server may forge any
	// address of its own domain.
	PerDomain Budget `yaml:"per_domain"`
	// Total is the budget of the whole bridge, for many domains at once.
	Total Budget `yaml:"total"`
	// LocalXMPPDomains are the domains of the XMPP server the component is
	// attached to. Their users are authenticated by that server and no
	// other server can speak for them, so only PerAddress applies to
	// them: a flood from elsewhere never starves them. Empty: the
	// component domain without its first label (matrix.example.net →
	// example.net).
	LocalXMPPDomains []string `yaml:"local_xmpp_domains"`
}

// Budget is a token bucket: one token comes back every Every, up to
// Burst tokens. Every 0 turns the budget off.
type Budget struct {
	Every time.Duration `yaml:"every"`
	Burst int           `yaml:"burst"`
}

// Default returns the defaults documented in config.yaml.
func Default() Config {
	return Config{CoalesceWindow: 250 * time.Millisecond, Policy: PolicyAsk, Limits: DefaultLimits(), Partitions: bridge.DefaultPartitions}
}

// DefaultLimits are budgets a person never notices (a few requests at
// once, a dozen an hour) and a forging server cannot turn into more than
// a handful of invites a minute.
func DefaultLimits() Limits {
	return Limits{
		PerAddress: Budget{Every: 5 * time.Minute, Burst: 10},
		PerDomain:  Budget{Every: 10 * time.Second, Burst: 30},
		Total:      Budget{Every: time.Second, Burst: 100},
	}
}

// Validate reports every problem, each prefixed with its key.
func (c Config) Validate() error {
	var errs []error
	if c.CoalesceWindow < 0 || c.CoalesceWindow > time.Minute {
		errs = append(errs, fmt.Errorf("coalesce_window: %v: must be between 0 and 1m", c.CoalesceWindow))
	}
	if c.Partitions < 1 || c.Partitions > bridge.MaxPartitions {
		errs = append(errs, fmt.Errorf("partitions: %d: must be between 1 and %d", c.Partitions, bridge.MaxPartitions))
	}
	switch c.Policy {
	case PolicyAsk, PolicyAccept, PolicyReject:
	default:
		errs = append(errs, fmt.Errorf("subscription_policy: %q: must be ask, accept or reject", c.Policy))
	}
	for _, l := range []struct {
		key  string
		list []string
	}{{"allow_xmpp_domains", c.AllowXMPPDomains}, {"deny_xmpp_domains", c.DenyXMPPDomains}, {"allow_matrix_servers", c.AllowMatrixServers}, {"deny_matrix_servers", c.DenyMatrixServers}, {"limits.local_xmpp_domains", c.Limits.LocalXMPPDomains}} {
		for i, d := range l.list {
			if d == "" || strings.ContainsAny(d, "@/ ") || strings.ToLower(d) != d {
				errs = append(errs, fmt.Errorf("%s[%d]: %q: want a lower case domain name", l.key, i, d))
			}
		}
	}
	for _, b := range []struct {
		key string
		b   Budget
	}{{"limits.per_address", c.Limits.PerAddress}, {"limits.per_domain", c.Limits.PerDomain}, {"limits.total", c.Limits.Total}} {
		errs = append(errs, b.b.validate(b.key)...)
	}
	return errors.Join(errs...)
}

func (b Budget) validate(key string) []error {
	var errs []error
	if b.Every < 0 {
		errs = append(errs, fmt.Errorf("%s.every: %v: must not be negative (0 turns the budget off)", key, b.Every))
	}
	if b.Every > 0 && (b.Burst < 1 || b.Burst > 1_000_000) {
		errs = append(errs, fmt.Errorf("%s.burst: %d: must be between 1 and 1000000", key, b.Burst))
	}
	return errs
}

// localDomains returns the local XMPP domains: the configured ones, else
// the parent of the component domain.
func (l Limits) localDomains(componentDomain string) map[string]bool {
	out := map[string]bool{}
	for _, d := range l.LocalXMPPDomains {
		out[d] = true
	}
	if len(out) == 0 {
		if _, parent, ok := strings.Cut(componentDomain, "."); ok && parent != "" {
			out[parent] = true
		}
	}
	return out
}
