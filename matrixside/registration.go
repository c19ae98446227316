package matrixside

import (
	"crypto/rand"
	"encoding/base64"
	"regexp"

	"gopkg.in/yaml.v3"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// RegistrationFile is an appservice registration file, as the homeserver
// reads it (application service API, "Registration").
type RegistrationFile struct {
	ID              string     `yaml:"id"`
	URL             string     `yaml:"url"`
	ASToken         string     `yaml:"as_token"`
	HSToken         string     `yaml:"hs_token"`
	SenderLocalpart string     `yaml:"sender_localpart"`
	RateLimited     bool       `yaml:"rate_limited"`
	Namespaces      Namespaces `yaml:"namespaces"`
	// ReceiveEphemeral asks for MSC2409 ephemeral events (m.presence) in
	// transactions; the second key is the unstable name older Synapse
	// versions read. Dendrite ignores both.
	ReceiveEphemeral         bool `yaml:"receive_ephemeral"`
	ReceiveEphemeralUnstable bool `yaml:"de.sorunome.msc2409.push_ephemeral"`
}

// Namespaces are the registration's user, alias and room namespaces.
type Namespaces struct {
	Users   []NamespaceRule `yaml:"users"`
	Aliases []NamespaceRule `yaml:"aliases"`
	Rooms   []NamespaceRule `yaml:"rooms"`
}

// NamespaceRule is one regex of a namespace.
type NamespaceRule struct {
	Exclusive bool   `yaml:"exclusive"`
	Regex     string `yaml:"regex"`
}

// Registration returns the registration file for cfg: its tokens (fill
// them with [NewToken] first for a new installation), its URL, the bot as
// sender_localpart, and the ghosts of ns as an exclusive user namespace.
// Rate limiting is off and ephemeral events are asked for.
func Registration(cfg Config, ns mapping.Namespace) *RegistrationFile {
	return &RegistrationFile{
		ID:              cfg.ID,
		URL:             cfg.appserviceURL(),
		ASToken:         cfg.ASToken,
		HSToken:         cfg.HSToken,
		SenderLocalpart: cfg.BotLocalpart,
		RateLimited:     false,
		Namespaces: Namespaces{
			Users:   []NamespaceRule{{Exclusive: true, Regex: GhostRegex(ns)}},
			Aliases: []NamespaceRule{},
			Rooms:   []NamespaceRule{},
		},
		ReceiveEphemeral:         true,
		ReceiveEphemeralUnstable: true,
	}
}

// GhostRegex is the user namespace regex of the ghosts of ns, anchored.
func GhostRegex(ns mapping.Namespace) string {
	return "^@" + regexp.QuoteMeta(ns.GhostPrefix) + ".*:" + regexp.QuoteMeta(ns.HomeserverDomain) + "$"
}

// YAML renders the registration file.
func (r *RegistrationFile) YAML() ([]byte, error) { return yaml.Marshal(r) }

// NewToken returns a fresh random token for as_token or hs_token.
func NewToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}
