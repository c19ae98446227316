package matrixside

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// PresenceSource says how Matrix users' presence is read.
type PresenceSource string

// The presence sources.
const (
	// SourceAuto reads MSC2409 ephemeral presence from transactions when
	// the homeserver sends it (Synapse with receive_ephemeral); until the
	// first such event arrives it also runs SourceSync and SourcePoll, which
	// is what Dendrite needs. Once ephemeral presence is seen, sync and poll
	// stop.
	SourceAuto PresenceSource = "auto"
	// SourceEphemeral uses only m.presence from transactions.
	SourceEphemeral PresenceSource = "ephemeral"
	// SourceSync long-polls /sync as the bridge bot: it sees users who
	// share a room with the bot.
	SourceSync PresenceSource = "sync"
	// SourcePoll polls GET /presence for watched and linked users.
	SourcePoll PresenceSource = "poll"
)

// Config is the "matrix" section of config.yaml.
type Config struct {
	// HomeserverURL is where the client-server API is reached, e.g.
	// http://127.0.0.1:8008.
	HomeserverURL string `yaml:"homeserver_url"`
	// HomeserverDomain is the server name in user IDs, e.g. example.org.
	HomeserverDomain string `yaml:"homeserver_domain"`
	// ASToken authenticates the bridge to the homeserver; HSToken the
	// homeserver to the bridge. Both are also in the registration file.
	// The cmd loader may fill them from the environment.
	ASToken string `yaml:"as_token"`
	HSToken string `yaml:"hs_token"`
	// Listen is the address of the appservice HTTP listener.
	Listen string `yaml:"listen"`
	// AppServiceURL is the URL the homeserver uses to reach Listen; it goes
	// into the registration. Default: http://<listen>.
	AppServiceURL string `yaml:"appservice_url"`
	// ID names the appservice in the registration.
	ID string `yaml:"id"`
	// BotLocalpart is the localpart of the bridge bot (sender_localpart).
	BotLocalpart string `yaml:"bot_localpart"`
	// GhostPrefix starts the localpart of every ghost; the registration's
	// exclusive user namespace is derived from it.
	GhostPrefix string `yaml:"ghost_prefix"`
	// PresenceSource: auto | ephemeral | sync | poll.
	PresenceSource PresenceSource `yaml:"presence_source"`
	// PollInterval is the period of GET /presence polling.
	PollInterval time.Duration `yaml:"poll_interval"`
	// GhostRefreshInterval re-sends every ghost's presence once per period,
	// paced over the period, for homeservers that expire presence. 0: off.
	GhostRefreshInterval time.Duration `yaml:"ghost_refresh_interval"`
	// OfflineGrace is how long the homeserver may be unreachable before
	// every Matrix user the side believed online is reported offline
	// (keeping their status), so that their puppets do not look present
	// forever; their real presence is read again once the homeserver
	// answers. 0: never.
	OfflineGrace time.Duration `yaml:"offline_grace"`
	// CoalesceWindow is accepted for old config files and ignored: the
	// core coalesces bursts (core.coalesce_window); the Matrix side only
	// keeps the latest wanted state per ghost. New logs a warning when it
	// is set.
	//
	// Deprecated: ignored.
	CoalesceWindow time.Duration `yaml:"coalesce_window"`
	// MaxStatusLength caps a ghost's status message, in bytes (cut at a
	// UTF-8 boundary).
	MaxStatusLength int `yaml:"max_status_length"`
	// MaxConnections caps the open connections of the appservice
	// listener. When it is full, the oldest connection with no request in
	// progress is closed to make room (see connCap).
	MaxConnections int `yaml:"max_connections"`
	// MaxTracked bounds each in-memory table keyed by what the homeserver
	// or remote users send: ghosts (their outgoing presence, and which
	// are registered), Matrix users (their last presence) and rooms. Past
	// it the least recently used entry is forgotten (Counts.Evicted*).
	MaxTracked int `yaml:"max_tracked"`
	// QueryGhostsPerHour and QueryGhostsPerDomainPerHour budget the
	// ghosts registered for the homeserver's user queries about XMPP users
	// without a link (a Matrix user inviting someone nobody linked yet):
	// in all, and per XMPP domain. Each is a burst of that size, refilled
	// over an hour. 0: never (only ghosts with a link can be invited).
	// Ghosts the core asks for (people with a link) are not counted.
	QueryGhostsPerHour          int `yaml:"query_ghosts_per_hour"`
	QueryGhostsPerDomainPerHour int `yaml:"query_ghosts_per_domain_per_hour"`
}

// Default returns the defaults documented in config.yaml. Tokens and
// homeserver are left empty: they must be configured.
func Default() Config {
	return Config{
		Listen:          "127.0.0.1:29330",
		ID:              "presence-bridge",
		BotLocalpart:    "presencebot",
		GhostPrefix:     "_xmpp_",
		PresenceSource:  SourceAuto,
		PollInterval:    30 * time.Second,
		OfflineGrace:    30 * time.Second,
		MaxStatusLength: 1024,
		MaxConnections:  256,
		MaxTracked:      65536,

		QueryGhostsPerHour:          100,
		QueryGhostsPerDomainPerHour: 20,
	}
}

// appserviceURL returns AppServiceURL or its default.
func (c Config) appserviceURL() string {
	if c.AppServiceURL != "" {
		return c.AppServiceURL
	}
	return "http://" + c.Listen
}

// BotMXID returns the Matrix user ID of the bridge bot.
func (c Config) BotMXID() id.UserID { return id.NewUserID(c.BotLocalpart, c.HomeserverDomain) }

// KeyError is one problem of a [Config]: Error is "key: problem", and
// errors.Is(err, ErrConfig) holds.
type KeyError struct {
	Key string // YAML key within the matrix section, e.g. "as_token"
	Msg string
}

func (e *KeyError) Error() string { return e.Key + ": " + e.Msg }

// Unwrap makes errors.Is(err, ErrConfig) true.
func (e *KeyError) Unwrap() error { return ErrConfig }

// Validate reports every problem as a [*KeyError], joined in one error.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: key, Msg: fmt.Sprintf(format, a...)})
	}
	if err := checkHTTPURL(c.HomeserverURL); err != nil {
		add("homeserver_url", "%v", err)
	}
	if c.HomeserverDomain == "" {
		add("homeserver_domain", "required")
	} else if _, _, err := mapping.ParseMXID("@x:" + c.HomeserverDomain); err != nil {
		add("homeserver_domain", "%q is not a valid server name", c.HomeserverDomain)
	}
	checkToken := func(key, tok string) {
		switch {
		case tok == "":
			add(key, "required")
		case strings.ContainsAny(tok, " \t\r\n"):
			add(key, "must not contain whitespace")
		}
	}
	checkToken("as_token", c.ASToken)
	checkToken("hs_token", c.HSToken)
	if c.ASToken != "" && c.ASToken == c.HSToken {
		add("hs_token", "must differ from as_token")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		add("listen", "%v", err)
	}
	if c.AppServiceURL != "" {
		if err := checkHTTPURL(c.AppServiceURL); err != nil {
			add("appservice_url", "%v", err)
		}
	}
	if c.ID == "" {
		add("id", "required")
	}
	if err := checkLocalpart(c.BotLocalpart); err != nil {
		add("bot_localpart", "%v", err)
	} else if c.GhostPrefix != "" && strings.HasPrefix(c.BotLocalpart, c.GhostPrefix) {
		add("bot_localpart", "%q is inside the ghost namespace %q", c.BotLocalpart, c.GhostPrefix)
	}
	if err := checkLocalpart(c.GhostPrefix); err != nil {
		add("ghost_prefix", "%v", err)
	}
	switch c.PresenceSource {
	case SourceAuto, SourceEphemeral, SourceSync, SourcePoll:
	default:
		add("presence_source", "%q: want auto, ephemeral, sync or poll", c.PresenceSource)
	}
	if c.PollInterval < 100*time.Millisecond {
		add("poll_interval", "%v: must be at least 100ms", c.PollInterval)
	}
	if c.GhostRefreshInterval != 0 && c.GhostRefreshInterval < time.Second {
		add("ghost_refresh_interval", "%v: must be 0 (off) or at least 1s", c.GhostRefreshInterval)
	}
	if c.OfflineGrace != 0 && (c.OfflineGrace < 100*time.Millisecond || c.OfflineGrace > time.Hour) {
		add("offline_grace", "%v: must be 0 (never) or between 100ms and 1h", c.OfflineGrace)
	}
	if c.MaxStatusLength < 1 || c.MaxStatusLength > 65536 {
		add("max_status_length", "%d: must be between 1 and 65536", c.MaxStatusLength)
	}
	if c.MaxConnections < 8 || c.MaxConnections > 65536 {
		add("max_connections", "%d: must be between 8 and 65536", c.MaxConnections)
	}
	if c.MaxTracked < 64 || c.MaxTracked > 1<<24 {
		add("max_tracked", "%d: must be between 64 and %d", c.MaxTracked, 1<<24)
	}
	if c.QueryGhostsPerHour < 0 || c.QueryGhostsPerHour > 1_000_000 {
		add("query_ghosts_per_hour", "%d: must be between 0 (never) and 1000000", c.QueryGhostsPerHour)
	}
	if c.QueryGhostsPerDomainPerHour < 0 || c.QueryGhostsPerDomainPerHour > 1_000_000 {
		add("query_ghosts_per_domain_per_hour", "%d: must be between 0 (never) and 1000000", c.QueryGhostsPerDomainPerHour)
	}
	return errors.Join(errs...)
}

func checkHTTPURL(s string) error {
	if s == "" {
		return errors.New("required")
	}
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q: want http(s)://host[:port]", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q: must not have a query or fragment", s)
	}
	return nil
}

// checkLocalpart accepts the strict Matrix localpart grammar.
func checkLocalpart(s string) error {
	if s == "" {
		return errors.New("required")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("._=-/+", c) >= 0) {
			return fmt.Errorf("%q: byte %q is not allowed in a Matrix localpart", s, c)
		}
	}
	return nil
}
