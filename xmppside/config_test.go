package xmppside

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func validConfig() Config {
	c := Default()
	c.ComponentDomain = "matrix.example.net"
	c.Secret = "s3cret"
	return c
}

func TestDefaultsValidateOnceRequiredFieldsSet(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	d := Default()
	if d.SubscriptionPolicy != PolicyAsk || d.MaxStatusBytes != 1024 || d.ReconnectMin.String() != "500ms" || d.ReconnectMax.String() != "30s" ||
		d.OfflineGrace.String() != "30s" || d.MaxAuthFailures != 3 {
		t.Fatalf("defaults: %+v", d)
	}
	l := d.Limits
	if l.SubscribePerAddress != (Rate{30 * time.Second, 10}) || l.SubscribePerDomain != (Rate{5 * time.Second, 30}) ||
		l.CommandsPerAddress != (Rate{10 * time.Second, 5}) || l.CommandsPerDomain != (Rate{time.Second, 20}) ||
		l.ResourcesPerAddress != 64 || l.TrackedUsers != 65536 {
		t.Fatalf("default limits: %+v", l)
	}
}

func TestValidateReportsEveryProblemWithItsKey(t *testing.T) {
	c := Config{Port: 70000, ComponentDomain: "Bob@Matrix", SubscriptionPolicy: "maybe", ReconnectMin: 2e9, ReconnectMax: 1e9, OfflineGrace: -1,
		Limits: Limits{SubscribePerAddress: Rate{Every: -1, Burst: 1}, SubscribePerDomain: Rate{Every: time.Second}, ResourcesPerAddress: 5000,
			LocalDomains: []string{"ok.example", "Not@OK"}}}
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"host: required", "port: must be 1-65535", "component_domain: ", "secret: required",
		"subscription_policy: \"maybe\"", "max_status_bytes: ", "reconnect_max: ", "connect_timeout: ", "shutdown_timeout: ",
		"offline_grace: must be positive", "max_auth_failures: must be at least 1",
		"limits.subscribe_per_address.every: ", "limits.subscribe_per_domain.burst: ", "limits.commands_per_address.every: ",
		"limits.commands_per_domain.burst: ", "limits.resources_per_address: 5000", "limits.tracked_users: 0",
		"limits.local_domains[1]: \"Not@OK\""} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Error("secret in error")
	}
}

func TestConfigYAMLKeys(t *testing.T) {
	src := `
host: xmpp.example.net
port: 5275
component_domain: matrix.example.net
secret: abc
subscription_policy: accept
max_status_bytes: 200
reconnect_min: 1s
reconnect_max: 1m
connect_timeout: 5s
shutdown_timeout: 3s
offline_grace: 1m
max_auth_failures: 5
limits:
  subscribe_per_domain: {every: 1m, burst: 3}
  tracked_users: 100
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
	if c.Port != 5275 || c.SubscriptionPolicy != PolicyAccept || c.ReconnectMax.Minutes() != 1 || c.MaxStatusBytes != 200 ||
		c.OfflineGrace.Minutes() != 1 || c.MaxAuthFailures != 5 {
		t.Fatalf("decoded %+v", c)
	}
	// A limit given in part keeps the defaults of the rest.
	if c.Limits.SubscribePerDomain != (Rate{time.Minute, 3}) || c.Limits.TrackedUsers != 100 ||
		c.Limits.SubscribePerAddress != Default().Limits.SubscribePerAddress || c.Limits.ResourcesPerAddress != 64 {
		t.Fatalf("decoded limits %+v", c.Limits)
	}
}

func TestNewRefusesMismatchedNamespace(t *testing.T) {
	_, err := New(validConfig(), testNamespace("other.example.net"), nil, nil, nil, nil)
	if !errors.Is(err, ErrNamespace) {
		t.Fatalf("err = %v", err)
	}
	bad := validConfig()
	bad.Port = 0
	if _, err := New(bad, testNamespace(bad.ComponentDomain), nil, nil, nil, nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("err = %v", err)
	}
	good := validConfig()
	if _, err := New(good, testNamespace(good.ComponentDomain), nil, nil, nil, nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("without translator, store and observer: err = %v", err)
	}
}

func TestConfigNeverShowsSecret(t *testing.T) {
	c := validConfig()
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("config", "xmpp", c)
	if s := b.String() + fmt.Sprint(c) + fmt.Sprintf("%+v", c); strings.Contains(s, c.Secret) || !strings.Contains(s, "redacted") {
		t.Fatalf("secret shown or not redacted: %s", s)
	}
}

// TestLocalDomains: by default the server's own domain (the one the
// component domain is under) has no per-domain budget; an explicit list
// replaces it, and an empty one exempts nothing.
func TestLocalDomains(t *testing.T) {
	c := validConfig()
	if got := c.localDomains(); len(got) != 1 || got[0] != "example.net" {
		t.Errorf("default local domains %v, want [example.net]", got)
	}
	c.Limits.LocalDomains = []string{}
	if got := c.localDomains(); len(got) != 0 {
		t.Errorf("explicitly none: %v", got)
	}
	c.Limits.LocalDomains = []string{"a.example", "b.example"}
	if got := c.localDomains(); len(got) != 2 {
		t.Errorf("explicit: %v", got)
	}
}
