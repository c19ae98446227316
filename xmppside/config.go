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
	return errors.Join(errs...)
}
