package xmppside

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"mellium.im/xmpp/jid"
)

// Policy says how subscription requests from XMPP users to puppets are
// answered. The core decides (cmd hands it Config.SubscriptionPolicy); the
// component only reports the requests and carries out the answers.
type Policy string

// The policies.
const (
	// PolicyAccept approves every request at once and subscribes back.
	PolicyAccept Policy = "accept"
	// PolicyReject denies every request.
	PolicyReject Policy = "reject"
	// PolicyAsk asks the Matrix user (an invite from the XMPP user's ghost).
	PolicyAsk Policy = "ask"
)

// Config is the "xmpp" section of config.yaml.
type Config struct {
	// Host and Port of the XMPP server's XEP-0114 component listener.
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// ComponentDomain is the component's JID, e.g. matrix.example.net; the
	// puppets live on it.
	ComponentDomain string `yaml:"component_domain"`
	// Secret is the XEP-0114 shared secret. cmd may fill it from the
	// environment; it is never logged.
	Secret string `yaml:"secret"`
	// SubscriptionPolicy is accept, reject or ask (the default). It lives
	// in this section for the users' sake; the core applies it and the
	// component never reads it.
	SubscriptionPolicy Policy `yaml:"subscription_policy"`
	// MaxStatusBytes cuts longer status messages, in both directions.
	MaxStatusBytes int `yaml:"max_status_bytes"`
	// ReconnectMin and ReconnectMax bound the exponential backoff between
	// connection attempts.
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
	// ConnectTimeout bounds the TCP dial and the handshake.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ShutdownTimeout bounds the clean shutdown: unavailable presences and
	// the closing of the stream.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// OfflineGrace is how long the component may be without its stream
	// before the XMPP users it saw online are reported offline: the server
	// keeps nothing for a component that lost its stream, so their ghosts
	// would otherwise show the last presence forever.
	OfflineGrace time.Duration `yaml:"offline_grace"`
	// MaxAuthFailures is how many handshakes in a row the server may refuse
	// (a wrong secret) before Run gives up with ErrAuthentication.
	MaxAuthFailures int `yaml:"max_auth_failures"`
	// Limits bound what XMPP peers can make the component do and keep.
	Limits Limits `yaml:"limits"`
}

// Limits bound what XMPP peers can make the component do and keep: a
// gateway on the open federation hears from servers that may forge any
// number of their own users.
type Limits struct {
	// SubscribePerAddress and SubscribePerDomain budget the subscription
	// requests (subscribe) that reach the core, per sender address and per
	// sender domain; a request over either budget is ignored: nothing is
	// stored, reported or answered (see doc.go).
	SubscribePerAddress Rate `yaml:"subscribe_per_address"`
	SubscribePerDomain  Rate `yaml:"subscribe_per_domain"`
	// CommandsPerAddress and CommandsPerDomain budget the chat commands
	// (optout, optin, help) that are run and answered.
	CommandsPerAddress Rate `yaml:"commands_per_address"`
	CommandsPerDomain  Rate `yaml:"commands_per_domain"`
	// LocalDomains are the XMPP server's own domains: their users are
	// accounts of the server the component is attached to, so the
	// per-domain budgets do not apply to them (the per-address ones do).
	// Nil (absent from the file): the domain ComponentDomain is under
	// (example.net for matrix.example.net). An empty list exempts nothing.
	LocalDomains []string `yaml:"local_domains"`
	// ResourcesPerAddress caps the resources kept per XMPP user; a new one
	// beyond it replaces the one heard from least recently.
	ResourcesPerAddress int `yaml:"resources_per_address"`
	// TrackedUsers caps the XMPP users whose presence is kept; beyond it
	// the one heard from least recently is forgotten (and reported offline
	// if they were reported online).
	TrackedUsers int `yaml:"tracked_users"`
}

// localDomains returns Limits.LocalDomains, or by default the domain the
// component domain is under.
func (c Config) localDomains() []string {
	if c.Limits.LocalDomains != nil {
		return c.Limits.LocalDomains
	}
	if _, parent, ok := strings.Cut(c.ComponentDomain, "."); ok && parent != "" {
		return []string{parent}
	}
	return nil
}

// Rate is a token bucket: one more event allowed every Every, up to
// Burst at once.
type Rate struct {
	Every time.Duration `yaml:"every"`
	Burst int           `yaml:"burst"`
}

func (r Rate) String() string { return fmt.Sprintf("%d then 1/%v", r.Burst, r.Every) }

// validate adds r's problems under key.
func (r Rate) validate(key string, add func(key, format string, a ...any)) {
	if r.Every <= 0 || r.Every > 24*time.Hour {
		add(key+".every", "%v: must be positive and at most 24h", r.Every)
	}
	if r.Burst < 1 || r.Burst > 1_000_000 {
		add(key+".burst", "%d: must be 1 to 1000000", r.Burst)
	}
}

// Default returns the defaults documented in config.yaml.
func Default() Config {
	return Config{
		Host:               "127.0.0.1",
		Port:               5347,
		SubscriptionPolicy: PolicyAsk,
		MaxStatusBytes:     1024,
		ReconnectMin:       500 * time.Millisecond,
		ReconnectMax:       30 * time.Second,
		ConnectTimeout:     10 * time.Second,
		ShutdownTimeout:    10 * time.Second,
		OfflineGrace:       30 * time.Second,
		MaxAuthFailures:    3,
		Limits: Limits{
			SubscribePerAddress: Rate{Every: 30 * time.Second, Burst: 10},
			SubscribePerDomain:  Rate{Every: 5 * time.Second, Burst: 30},
			CommandsPerAddress:  Rate{Every: 10 * time.Second, Burst: 5},
			CommandsPerDomain:   Rate{Every: time.Second, Burst: 20},
			ResourcesPerAddress: 64,
			TrackedUsers:        1 << 16,
		},
	}
}

// LogValue implements slog.LogValuer: the configuration without the secret.
func (c Config) LogValue() slog.Value {
	secret := ""
	if c.Secret != "" {
		secret = "[redacted]"
	}
	return slog.GroupValue(
		slog.String("host", c.Host), slog.Int("port", c.Port),
		slog.String("component_domain", c.ComponentDomain), slog.String("secret", secret),
		slog.String("subscription_policy", string(c.SubscriptionPolicy)), slog.Int("max_status_bytes", c.MaxStatusBytes),
		slog.Duration("reconnect_min", c.ReconnectMin), slog.Duration("reconnect_max", c.ReconnectMax),
		slog.Duration("connect_timeout", c.ConnectTimeout), slog.Duration("shutdown_timeout", c.ShutdownTimeout),
		slog.Duration("offline_grace", c.OfflineGrace), slog.Int("max_auth_failures", c.MaxAuthFailures),
		slog.Group("limits",
			slog.String("subscribe_per_address", c.Limits.SubscribePerAddress.String()),
			slog.String("subscribe_per_domain", c.Limits.SubscribePerDomain.String()),
			slog.String("commands_per_address", c.Limits.CommandsPerAddress.String()),
			slog.String("commands_per_domain", c.Limits.CommandsPerDomain.String()),
			slog.Any("local_domains", c.localDomains()),
			slog.Int("resources_per_address", c.Limits.ResourcesPerAddress), slog.Int("tracked_users", c.Limits.TrackedUsers)),
	)
}

// String is the configuration without the secret, for %v.
func (c Config) String() string { return c.LogValue().String() }

// Validate reports every problem at once, each prefixed with its key.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, a ...any) { errs = append(errs, fmt.Errorf(key+": "+format, a...)) }
	if c.Host == "" {
		add("host", "required")
	} else if strings.ContainsAny(c.Host, " /") {
		add("host", "%q: want a host name or IP address", c.Host)
	}
	if c.Port < 1 || c.Port > 65535 {
		add("port", "must be 1-65535")
	}
	if c.ComponentDomain == "" {
		add("component_domain", "required")
	} else if j, err := jid.Parse(c.ComponentDomain); err != nil {
		add("component_domain", "%q: %v", c.ComponentDomain, err)
	} else if j.Localpart() != "" || j.Resourcepart() != "" || j.String() != c.ComponentDomain {
		add("component_domain", "%q: want a bare, lower case domain such as matrix.example.net", c.ComponentDomain)
	}
	if c.Secret == "" {
		add("secret", "required (may come from the environment)")
	}
	switch c.SubscriptionPolicy {
	case PolicyAccept, PolicyReject, PolicyAsk:
	default:
		add("subscription_policy", "%q: must be accept, reject or ask", c.SubscriptionPolicy)
	}
	if c.MaxStatusBytes < 1 {
		add("max_status_bytes", "must be at least 1")
	}
	if c.ReconnectMin <= 0 {
		add("reconnect_min", "must be positive")
	}
	if c.ReconnectMax < c.ReconnectMin {
		add("reconnect_max", "%v: must be at least reconnect_min (%v)", c.ReconnectMax, c.ReconnectMin)
	}
	if c.ConnectTimeout <= 0 {
		add("connect_timeout", "must be positive")
	}
	if c.ShutdownTimeout <= 0 {
		add("shutdown_timeout", "must be positive")
	}
	if c.OfflineGrace <= 0 {
		add("offline_grace", "must be positive")
	}
	if c.MaxAuthFailures < 1 {
		add("max_auth_failures", "must be at least 1")
	}
	l := c.Limits
	l.SubscribePerAddress.validate("limits.subscribe_per_address", add)
	l.SubscribePerDomain.validate("limits.subscribe_per_domain", add)
	l.CommandsPerAddress.validate("limits.commands_per_address", add)
	l.CommandsPerDomain.validate("limits.commands_per_domain", add)
	if l.ResourcesPerAddress < 1 || l.ResourcesPerAddress > 1024 {
		add("limits.resources_per_address", "%d: must be 1 to 1024", l.ResourcesPerAddress)
	}
	if l.TrackedUsers < 1 {
		add("limits.tracked_users", "%d: must be at least 1", l.TrackedUsers)
	}
	for i, d := range l.LocalDomains {
		if j, err := jid.Parse(d); err != nil || j.String() != d || j.Localpart() != "" || j.Resourcepart() != "" {
			add(fmt.Sprintf("limits.local_domains[%d]", i), "%q: want a lower case domain such as example.net", d)
		}
	}
	return errors.Join(errs...)
}
