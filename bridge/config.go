package bridge

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Config is the "nats" section of config.yaml.
type Config struct {
	// URLs of an existing NATS cluster. Empty (the default) embeds a NATS
	// server with JetStream in the bridge process.
	URLs []string `yaml:"urls"`
	// CredentialsFile is a NATS .creds file for URLs.
	CredentialsFile string `yaml:"credentials_file"`
	// User and Password, or Token, authenticate to URLs.
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	Token    string `yaml:"token"`
	// Replicas of the stream and buckets in a cluster (1 when embedded).
	Replicas int `yaml:"replicas"`
	// Embedded configures the embedded server.
	Embedded EmbeddedConfig `yaml:"embedded"`
	// ControlMaxAge bounds how long undelivered control events are kept.
	ControlMaxAge time.Duration `yaml:"control_max_age"`
	// MaxDeliver is how many times a durable consumer tries a control
	// event before it moves it to the dead-letter stream ([DeadLetterStream]).
	// The retries back off from 1s to 5m: the default, 300, is about a day.
	MaxDeliver int `yaml:"max_deliver"`
	// Partitions of the reports to the core ([InStream]): cmd sets it
	// from core.partitions. A new stream is made with it (0:
	// [DefaultPartitions]); a core instance whose number differs from
	// the stream's refuses to start.
	Partitions int `yaml:"-"`
}

// EmbeddedConfig configures the embedded NATS server.
type EmbeddedConfig struct {
	// DataDir holds JetStream's files: the bridge's whole state.
	DataDir string `yaml:"data_dir"`
	// Listen, if set (host:port), also opens the server to other processes,
	// for the nats CLI or a second machine. Empty: in-process only.
	Listen string `yaml:"listen"`
}

// DefaultMaxDeliver tries a failing control event for about a day (see
// [Config.MaxDeliver]): a homeserver or XMPP server down for hours, or
// overnight, loses no consent step, and an event that can never succeed
// is still dead-lettered, visibly, well before the stream's
// control_max_age (7 days) would drop it silently.
const DefaultMaxDeliver = 300

// Default returns the defaults documented in config.yaml.
func Default() Config {
	return Config{Replicas: 1, Embedded: EmbeddedConfig{DataDir: "./data/nats"}, ControlMaxAge: 7 * 24 * time.Hour, MaxDeliver: DefaultMaxDeliver}
}

// ClusterAuth returns the options that authenticate to the cluster of
// URLs: credentials file, token or user and password, whichever is set.
func (c Config) ClusterAuth() []nats.Option {
	switch {
	case c.CredentialsFile != "":
		return []nats.Option{nats.UserCredentials(c.CredentialsFile)}
	case c.Token != "":
		return []nats.Option{nats.Token(c.Token)}
	case c.User != "":
		return []nats.Option{nats.UserInfo(c.User, c.Password)}
	}
	return nil
}

// Embedded reports whether the bridge runs its own NATS server.
func (c Config) IsEmbedded() bool { return len(c.URLs) == 0 }

// Validate reports every problem, each prefixed with its key.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, a ...any) { errs = append(errs, fmt.Errorf(key+": "+format, a...)) }
	if c.IsEmbedded() {
		if c.Embedded.DataDir == "" {
			add("embedded.data_dir", "required when no urls are given")
		}
		if c.Embedded.Listen != "" {
			if _, _, err := net.SplitHostPort(c.Embedded.Listen); err != nil {
				add("embedded.listen", "%v", err)
			}
		}
	}
	for i, u := range c.URLs {
		if !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
			add(fmt.Sprintf("urls[%d]", i), "%q: want nats://host:port or tls://host:port", u)
		}
	}
	if c.Token != "" && (c.User != "" || c.CredentialsFile != "") {
		add("token", "use one of token, user/password, credentials_file")
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		add("replicas", "%d: must be 1 to 5", c.Replicas)
	}
	if c.ControlMaxAge < time.Minute {
		add("control_max_age", "%v: must be at least 1m", c.ControlMaxAge)
	}
	switch span := retrySpan(c.MaxDeliver, retryBase); {
	case c.MaxDeliver < 2 || c.MaxDeliver > 100_000:
		add("max_deliver", "%d: must be between 2 and 100000", c.MaxDeliver)
	case c.ControlMaxAge >= time.Minute && span >= c.ControlMaxAge:
		// The stream would drop the event before it is dead-lettered,
		// silently.
		add("max_deliver", "%d: the retries would last %v, longer than control_max_age (%v)", c.MaxDeliver, span.Round(time.Minute), c.ControlMaxAge)
	}
	return errors.Join(errs...)
}
