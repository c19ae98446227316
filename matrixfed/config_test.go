package matrixfed

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	good := Default()
	good.ServerName, good.TLSCert, good.TLSKey = "gw.example.net", "/c", "/k"
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no server name", func(c *Config) { c.ServerName = "" }, "server_name: required"},
		{"bad server name", func(c *Config) { c.ServerName = "gw example" }, "server_name:"},
		{"bad listen", func(c *Config) { c.Listen = "8448" }, "listen:"},
		{"no certificate", func(c *Config) { c.TLSCert = "" }, "tls_cert: required"},
		{"tiny bodies", func(c *Config) { c.MaxRequestBytes = 10 }, "max_request_bytes:"},
		{"no rate", func(c *Config) { c.OriginRate = 0 }, "origin_rate:"},
		{"refresh too slow for Synapse", func(c *Config) { c.PresenceRefresh = 30 * time.Minute }, "presence_refresh:"},
		{"retries upside down", func(c *Config) { c.RetryMin, c.RetryMax = time.Minute, time.Second }, "retry_min:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
	// Every problem at once.
	var none Config
	if n := len(strings.Split(none.Validate().Error(), "\n")); n < 8 {
		t.Errorf("an empty config reports %d problems, want them all", n)
	}
}
