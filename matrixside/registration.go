package matrixside

import (
	"regexp"

	"maunium.net/go/mautrix/appservice"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// Registration returns the appservice registration for cfg, as
// `presence-bridge generate-registration` writes it (render it with its
// YAML method): the tokens of cfg, or fresh random ones where cfg has
// none; the appservice URL; the bot as sender_localpart; the ghosts of ns
// as an exclusive user namespace. Rate limiting is off and ephemeral
// events (MSC2409, under both the stable and the unstable key) are asked
// for, so that Synapse pushes Matrix presence in transactions.
func Registration(cfg Config, ns mapping.Namespace) *appservice.Registration {
	reg := appservice.CreateRegistration() // fresh tokens
	if cfg.ASToken != "" {
		reg.AppToken = cfg.ASToken
	}
	if cfg.HSToken != "" {
		reg.ServerToken = cfg.HSToken
	}
	rateLimited := false
	reg.ID = cfg.ID
	reg.URL = cfg.appserviceURL()
	reg.SenderLocalpart = cfg.BotLocalpart
	reg.RateLimited = &rateLimited
	reg.Namespaces.UserIDs = appservice.NamespaceList{{Regex: GhostRegex(ns), Exclusive: true}}
	reg.EphemeralEvents = true
	reg.SoruEphemeralEvents = true
	return reg
}

// GhostRegex is the user namespace regex of the ghosts of ns, anchored.
func GhostRegex(ns mapping.Namespace) string {
	return "^@" + regexp.QuoteMeta(ns.GhostPrefix) + ".*:" + regexp.QuoteMeta(ns.HomeserverDomain) + "$"
}
