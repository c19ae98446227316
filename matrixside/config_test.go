package matrixside

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

func TestConfigDefaultIsValidOnceRequiredKeysAreSet(t *testing.T) {
	if err := testConfig("http://127.0.0.1:8008").Validate(); err != nil {
		t.Fatal(err)
	}
	err := Default().Validate()
	for _, key := range []string{"homeserver_url", "homeserver_domain", "as_token", "hs_token"} {
		if err == nil || !strings.Contains(err.Error(), key+": required") {
			t.Errorf("Default().Validate() = %v, want %s: required", err, key)
		}
	}
	if !errors.Is(err, ErrConfig) {
		t.Errorf("error does not wrap ErrConfig: %v", err)
	}
}

func TestConfigValidateReportsEveryKey(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		key  string
	}{
		{"url scheme", func(c *Config) { c.HomeserverURL = "ftp://x" }, "homeserver_url"},
		{"domain", func(c *Config) { c.HomeserverDomain = "Bad Domain" }, "homeserver_domain"},
		{"same tokens", func(c *Config) { c.HSToken = c.ASToken }, "hs_token"},
		{"token space", func(c *Config) { c.ASToken = "a b" }, "as_token"},
		{"listen", func(c *Config) { c.Listen = "nope" }, "listen"},
		{"appservice url", func(c *Config) { c.AppServiceURL = "x" }, "appservice_url"},
		{"bot", func(c *Config) { c.BotLocalpart = "Bot" }, "bot_localpart"},
		{"bot in namespace", func(c *Config) { c.BotLocalpart = "_xmpp_bot" }, "bot_localpart"},
		{"prefix", func(c *Config) { c.GhostPrefix = "" }, "ghost_prefix"},
		{"source", func(c *Config) { c.PresenceSource = "push" }, "presence_source"},
		{"poll", func(c *Config) { c.PollInterval = 0 }, "poll_interval"},
		{"refresh", func(c *Config) { c.GhostRefreshInterval = time.Millisecond }, "ghost_refresh_interval"},
		{"grace", func(c *Config) { c.OfflineGrace = time.Millisecond }, "offline_grace"},
		{"status", func(c *Config) { c.MaxStatusLength = 0 }, "max_status_length"},
		{"connections", func(c *Config) { c.MaxConnections = 1 }, "max_connections"},
		{"tracked", func(c *Config) { c.MaxTracked = 0 }, "max_tracked"},
		{"query budget", func(c *Config) { c.QueryGhostsPerHour = -1 }, "query_ghosts_per_hour"},
		{"query budget per domain", func(c *Config) { c.QueryGhostsPerDomainPerHour = -1 }, "query_ghosts_per_domain_per_hour"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig("http://127.0.0.1:8008")
			tt.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.key+": ") {
				t.Fatalf("Validate() = %v, want an error for %s", err, tt.key)
			}
		})
	}
	// All at once.
	c := Config{PresenceSource: "x", OfflineGrace: -1}
	if n := strings.Count(c.Validate().Error(), "\n") + 1; n < 8 {
		t.Errorf("want every problem reported, got %d:\n%v", n, c.Validate())
	}
}

func TestConfigYAMLKeys(t *testing.T) {
	src := `
homeserver_url: http://hs:8008
homeserver_domain: example.org
as_token: a
hs_token: h
listen: 0.0.0.0:29331
bot_localpart: bot
ghost_prefix: _x_
presence_source: poll
poll_interval: 10s
ghost_refresh_interval: 1h
coalesce_window: 1s
offline_grace: 10s
max_status_length: 100
max_connections: 32
max_tracked: 1000
query_ghosts_per_hour: 0
query_ghosts_per_domain_per_hour: 5
`
	c := Default()
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.PollInterval != 10*time.Second || c.GhostRefreshInterval != time.Hour || c.PresenceSource != SourcePoll || c.MaxStatusLength != 100 || c.OfflineGrace != 10*time.Second ||
		c.MaxConnections != 32 || c.MaxTracked != 1000 || c.QueryGhostsPerHour != 0 || c.QueryGhostsPerDomainPerHour != 5 {
		t.Fatalf("decoded %+v", c)
	}
}

// TestDeprecatedCoalesceWindowIgnored: old config files with
// matrix.coalesce_window still load; the key is ignored with a warning.
func TestDeprecatedCoalesceWindowIgnored(t *testing.T) {
	cfg := testConfig("http://127.0.0.1:8008")
	cfg.CoalesceWindow = -time.Second // even nonsense: it is not read
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	_, err := New(cfg, testNS, mapping.NewTranslator(mapping.DefaultTable(), false), &bridge.Store{}, &fakeObserver{}, log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "coalesce_window is deprecated and ignored") {
		t.Errorf("no deprecation warning in %q", logs.String())
	}
}

func TestRegistrationFile(t *testing.T) {
	cfg := testConfig("http://127.0.0.1:8008")
	cfg.ASToken, cfg.HSToken = "", ""
	fresh := Registration(cfg, testNS)
	again := Registration(cfg, testNS)
	if fresh.AppToken == fresh.ServerToken || len(fresh.AppToken) < 40 || fresh.AppToken == again.AppToken {
		t.Fatalf("tokens not fresh and distinct: %q %q %q", fresh.AppToken, fresh.ServerToken, again.AppToken)
	}
	cfg.ASToken, cfg.HSToken = fresh.AppToken, fresh.ServerToken
	data, err := Registration(cfg, testNS).YAML()
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := yaml.Unmarshal([]byte(data), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"id": "presence-bridge", "url": "http://127.0.0.1:29330", "as_token": cfg.ASToken, "hs_token": cfg.HSToken,
		"sender_localpart": "presencebot", "rate_limited": false, "receive_ephemeral": true,
		"de.sorunome.msc2409.push_ephemeral": true,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	users := got["namespaces"].(map[string]any)["users"].([]any)[0].(map[string]any)
	if users["exclusive"] != true || users["regex"] != `^@_xmpp_.*:localhost$` {
		t.Errorf("user namespace %v", users)
	}
}
