package mapping

import (
	"slices"
	"strings"
	"time"
)

// Resource is one XMPP resource's presence, as [Resources] holds it.
type Resource struct {
	Name     string    `json:"name"`
	Presence Presence  `json:"presence"`
	At       time.Time `json:"at"`
}

// List returns the resources, sorted by name: for the operations service,
// which reports each resource with its priority.
func (r *Resources) List() []Resource {
	out := make([]Resource, 0, len(r.byName))
	for name, e := range r.byName {
		out = append(out, Resource{Name: name, Presence: e.p, At: e.at})
	}
	slices.SortFunc(out, func(a, b Resource) int { return strings.Compare(a.Name, b.Name) })
	return out
}
