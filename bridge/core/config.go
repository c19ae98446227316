package core

import (
	"errors"
	"fmt"
	"strings"
	"time"
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
}

// Default returns the defaults documented in config.yaml.
func Default() Config {
	return Config{CoalesceWindow: 250 * time.Millisecond, Policy: PolicyAsk}
}

// Validate reports every problem, each prefixed with its key.
func (c Config) Validate() error {
	var errs []error
	if c.CoalesceWindow < 0 || c.CoalesceWindow > time.Minute {
		errs = append(errs, fmt.Errorf("coalesce_window: %v: must be between 0 and 1m", c.CoalesceWindow))
	}
	switch c.Policy {
	case PolicyAsk, PolicyAccept, PolicyReject:
	default:
		errs = append(errs, fmt.Errorf("subscription_policy: %q: must be ask, accept or reject", c.Policy))
	}
	for key, list := range map[string][]string{"allow_xmpp_domains": c.AllowXMPPDomains, "deny_xmpp_domains": c.DenyXMPPDomains, "allow_matrix_servers": c.AllowMatrixServers, "deny_matrix_servers": c.DenyMatrixServers} {
		for i, d := range list {
			if d == "" || strings.ContainsAny(d, "@/ ") || strings.ToLower(d) != d {
				errs = append(errs, fmt.Errorf("%s[%d]: %q: want a lower case domain name", key, i, d))
			}
		}
	}
	return errors.Join(errs...)
}
