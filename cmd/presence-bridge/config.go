package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/core"
	"github.com/presence-bridge/presence-bridge/bridge/metrics"
	"github.com/presence-bridge/presence-bridge/internal/config"
	"github.com/presence-bridge/presence-bridge/mapping"
	"github.com/presence-bridge/presence-bridge/matrixfed"
	"github.com/presence-bridge/presence-bridge/matrixside"
	"github.com/presence-bridge/presence-bridge/xmppside"
)

// File is config.yaml. Each section belongs to the package that uses it.
type File struct {
	XMPP    xmppside.Config    `yaml:"xmpp"`
	Matrix  MatrixConfig       `yaml:"matrix"`
	NATS    bridge.Config      `yaml:"nats"`
	Core    core.Config        `yaml:"core"`
	Mapping MappingConfig      `yaml:"mapping"`
	Logging LoggingConfig      `yaml:"logging"`
	Metrics metrics.Config     `yaml:"metrics"`
	Cluster bridge.LeaseConfig `yaml:"cluster"`
}

// MatrixConfig is the "matrix" section: the appservice's keys
// (matrixside), or with mode federation the gateway's, under
// "federation" (matrixfed).
type MatrixConfig struct {
	matrixside.Config `yaml:",inline"`
	// Mode: appservice (default) or federation.
	Mode       string           `yaml:"mode"`
	Federation matrixfed.Config `yaml:"federation"`
}

// The Matrix modes.
const (
	ModeAppservice = "appservice"
	ModeFederation = "federation"
)

// IsFederation reports whether the bridge runs as a federation gateway.
func (m MatrixConfig) IsFederation() bool { return m.Mode == ModeFederation }

// Validate reports the problems of the mode in use, each prefixed with
// its key.
func (m MatrixConfig) Validate() error {
	switch m.Mode {
	case "", ModeAppservice:
		return stripPrefix(m.Config.Validate(), matrixside.ErrConfig.Error()+": ")
	case ModeFederation:
		var errs []error
		if err := m.Federation.Validate(); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				errs = append(errs, errors.New("federation."+line))
			}
		}
		return errors.Join(errs...)
	}
	return fmt.Errorf("mode: %q: must be appservice or federation", m.Mode)
}

// MappingConfig overrides the default presence table (see README).
type MappingConfig struct {
	// ToMatrix maps a state (available, chat, away, xa, busy, offline) to a
	// Matrix presence (online, unavailable, offline, busy).
	ToMatrix map[string]string `yaml:"to_matrix"`
	// FromMatrix maps a Matrix presence to a state.
	FromMatrix map[string]string `yaml:"from_matrix"`
	// BusyStatusHint is shown as the status of a busy XMPP user who set
	// none, where the homeserver has no busy presence. "" turns it off.
	BusyStatusHint *string `yaml:"busy_status_hint"`
	// Busy: auto (ask the homeserver), on, or off.
	Busy string `yaml:"msc3026_busy"`
}

// Table builds the translation table.
func (m MappingConfig) Table() (mapping.Table, error) {
	t := mapping.DefaultTable()
	if m.BusyStatusHint != nil {
		t.BusyHint = *m.BusyStatusHint
	}
	return t, t.Override(m.ToMatrix, m.FromMatrix)
}

// Validate reports every problem, each prefixed with its key.
func (m MappingConfig) Validate() error {
	var errs []error
	if _, err := m.Table(); err != nil {
		errs = append(errs, err)
	}
	switch m.Busy {
	case "", "auto", "on", "off":
	default:
		errs = append(errs, fmt.Errorf("msc3026_busy: %q: must be auto, on or off", m.Busy))
	}
	return errors.Join(errs...)
}

// LoggingConfig is the "logging" section.
type LoggingConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// Validate reports every problem, each prefixed with its key.
func (l LoggingConfig) Validate() error {
	var errs []error
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(l.Level)); err != nil {
		errs = append(errs, fmt.Errorf("level: %q: must be debug, info, warn or error", l.Level))
	}
	if l.Format != "text" && l.Format != "json" {
		errs = append(errs, fmt.Errorf("format: %q: must be text or json", l.Format))
	}
	return errors.Join(errs...)
}

// Logger builds the logger.
func (l LoggingConfig) Logger() *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(l.Level))
	opts := &slog.HandlerOptions{Level: lv}
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func defaults() File {
	nats := bridge.Default()
	// The operator's commands reach the bridge here (token-protected);
	// bridge.Default stays in-process only for tests and embedding.
	nats.Embedded.Listen = DefaultNATSListen
	return File{
		XMPP:    xmppside.Default(),
		Matrix:  MatrixConfig{Config: matrixside.Default(), Mode: ModeAppservice, Federation: matrixfed.Default()},
		NATS:    nats,
		Core:    core.Default(),
		Mapping: MappingConfig{Busy: "auto"},
		Logging: LoggingConfig{Level: "info", Format: "text"},
		Metrics: metrics.Default(),
		Cluster: bridge.DefaultLeaseConfig(),
	}
}

// DefaultNATSListen is the default of nats.embedded.listen.
const DefaultNATSListen = "127.0.0.1:4222"

// Namespace is where puppets and ghosts live.
func (f *File) Namespace() mapping.Namespace {
	if f.Matrix.IsFederation() {
		// The server name is the gateway's own: ghosts need no prefix.
		return mapping.Namespace{GhostPrefix: f.Matrix.Federation.GhostPrefix, HomeserverDomain: f.Matrix.Federation.ServerName,
			ComponentDomain: f.XMPP.ComponentDomain, OwnServer: true}
	}
	return mapping.Namespace{GhostPrefix: f.Matrix.GhostPrefix, HomeserverDomain: f.Matrix.HomeserverDomain, ComponentDomain: f.XMPP.ComponentDomain}
}

// loadConfig reads path and reports every problem at once.
func loadConfig(path string) (*File, error) {
	f := defaults()
	err := config.Load(path, &f,
		config.Section{Path: "xmpp", Validate: func() error { return f.XMPP.Validate() }},
		config.Section{Path: "matrix", Validate: func() error { return f.Matrix.Validate() }},
		config.Section{Path: "nats", Validate: func() error { return f.NATS.Validate() }},
		config.Section{Path: "core", Validate: func() error { return f.Core.Validate() }},
		config.Section{Path: "mapping", Validate: func() error { return f.Mapping.Validate() }},
		config.Section{Path: "logging", Validate: func() error { return f.Logging.Validate() }},
		config.Section{Path: "metrics", Validate: func() error { return f.Metrics.Validate() }},
		config.Section{Path: "cluster", Validate: func() error { return f.Cluster.Validate() }},
		config.Section{Path: "", Validate: func() error { return namespaceProblems(f.Namespace()) }},
	)
	f.Core.Policy = core.Policy(f.XMPP.SubscriptionPolicy)
	f.NATS.Partitions = f.Core.Partitions
	return &f, err
}

// namespaceProblems reports namespace errors under the keys they come from.
func namespaceProblems(ns mapping.Namespace) error {
	if (ns.GhostPrefix == "" && !ns.OwnServer) || ns.HomeserverDomain == "" || ns.ComponentDomain == "" {
		return nil // already reported as required by the sections
	}
	err := ns.Validate()
	if err == nil {
		return nil
	}
	var errs []error
	for _, line := range strings.Split(err.Error(), "\n") {
		key := "matrix.ghost_prefix"
		switch {
		case strings.HasPrefix(line, "homeserver domain"):
			key = "matrix.homeserver_domain"
		case strings.HasPrefix(line, "component domain"):
			key = "xmpp.component_domain"
		}
		errs = append(errs, fmt.Errorf("%s: %s", key, line))
	}
	return errors.Join(errs...)
}

// stripPrefix removes a package's own prefix from each joined error, so
// that every message starts with its key.
func stripPrefix(err error, prefix string) error {
	if err == nil {
		return nil
	}
	var out []error
	for _, line := range strings.Split(err.Error(), "\n") {
		out = append(out, errors.New(strings.TrimPrefix(line, prefix)))
	}
	return errors.Join(out...)
}
