package matrixfed

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"maunium.net/go/mautrix/federation"
)

// Config is the "matrix.federation" section of config.yaml: the gateway's
// own server name and how it is reached.
type Config struct {
	// ServerName is the gateway's Matrix server name: ghosts are
	// @<escaped JID>:<server_name>. Required.
	ServerName string `yaml:"server_name"`
	// Listen is the address of the federation HTTPS listener.
	Listen string `yaml:"listen"`
	// TLSCert and TLSKey are the PEM files of the listener's certificate
	// (a certificate valid for ServerName, or for the delegated host).
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// DataDir keeps the signing key (signing.key, generated on first
	// start, Synapse's format). Losing it makes remote servers distrust
	// the gateway until their key caches expire.
	DataDir string `yaml:"data_dir"`
	// WellKnownServer, if set, is served as /.well-known/matrix/server
	// ("m.server"): for a server name whose federation port is not 8448.
	WellKnownServer string `yaml:"well_known_server"`
	// GhostPrefix starts the localpart of every ghost; empty by default
	// (the server name is the gateway's alone).
	GhostPrefix string `yaml:"ghost_prefix"`
	// MaxRequestBytes bounds the body of every inbound request.
	MaxRequestBytes int64 `yaml:"max_request_bytes"`
	// OriginRate and OriginBurst bound the requests each origin server
	// may make: a burst, refilled at OriginRate per second. Over it: 429.
	OriginRate  float64 `yaml:"origin_rate"`
	OriginBurst int     `yaml:"origin_burst"`
	// PresenceRefresh re-sends the presence of every ghost shown online
	// once per period: Synapse marks a remote user offline after 30
	// minutes without an update.
	PresenceRefresh time.Duration `yaml:"presence_refresh"`
	// RetryMin and RetryMax bound the back-off of a destination whose
	// transactions fail.
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`
	// MaxStatusLength caps a ghost's status message, in bytes.
	MaxStatusLength int `yaml:"max_status_length"`
	// AllowPrivateAddresses lets the gateway connect to loopback and
	// private addresses (refused by default, against SSRF): for tests
	// and private federations only.
	AllowPrivateAddresses bool `yaml:"allow_private_addresses"`
	// InsecureSkipVerify accepts any certificate from remote servers:
	// for tests with self-signed certificates only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Default returns the defaults documented in config.yaml.
func Default() Config {
	return Config{
		Listen:          "0.0.0.0:8448",
		DataDir:         "./data/federation",
		MaxRequestBytes: 1 << 20,
		OriginRate:      20,
		OriginBurst:     100,
		PresenceRefresh: 20 * time.Minute,
		RetryMin:        time.Second,
		RetryMax:        30 * time.Second,
		MaxStatusLength: 1024,
	}
}

// KeyPath is where the signing key is kept.
func (c Config) KeyPath() string { return filepath.Join(c.DataDir, "signing.key") }

// Validate reports every problem, each prefixed with its key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}
	if c.ServerName == "" {
		bad("server_name", "required")
	} else if _, _, ok := federation.ParseServerName(c.ServerName); !ok {
		bad("server_name", "%q is not a Matrix server name", c.ServerName)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q: %v", c.Listen, err)
	}
	if c.TLSCert == "" {
		bad("tls_cert", "required")
	}
	if c.TLSKey == "" {
		bad("tls_key", "required")
	}
	if c.DataDir == "" {
		bad("data_dir", "required")
	}
	if c.MaxRequestBytes < 64<<10 {
		bad("max_request_bytes", "%d: must be at least 65536", c.MaxRequestBytes)
	}
	if c.OriginRate <= 0 {
		bad("origin_rate", "must be positive")
	}
	if c.OriginBurst < 1 {
		bad("origin_burst", "must be at least 1")
	}
	if c.PresenceRefresh < time.Minute || c.PresenceRefresh >= 30*time.Minute {
		bad("presence_refresh", "%v: must be between 1m and 30m (remote servers time presence out after 30m)", c.PresenceRefresh)
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		bad("retry_min", "%v..%v: need 0 < retry_min <= retry_max", c.RetryMin, c.RetryMax)
	}
	if c.MaxStatusLength < 1 {
		bad("max_status_length", "must be at least 1")
	}
	return errors.Join(errs...)
}
