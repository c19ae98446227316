package bridge

import (
	"fmt"
	"strings"

	"github.com/presence-bridge/presence-bridge/mapping"
)

// Direction says who publishes on a subject.
type Direction string

// The directions.
const (
	// In: a side reports what it observed on its network.
	In Direction = "in"
	// Out: the core asks a side to act on its network.
	Out Direction = "out"
)

const subjectRoot = "pb.v1"

// Subject returns the subject of an event about user.
func Subject(dir Direction, net mapping.Network, kind Kind, user string) string {
	return subjectRoot + "." + string(dir) + "." + net.String() + "." + string(kind) + "." + EncodeToken(user)
}

// SubjectFilter returns a subject with wildcards for subscribing: empty
// arguments match anything.
func SubjectFilter(dir Direction, net mapping.Network, kind Kind) string {
	d, n, k := string(dir), "*", string(kind)
	if d == "" {
		d = "*"
	}
	if net != mapping.NetworkUnknown {
		n = net.String()
	}
	if k == "" {
		k = "*"
	}
	return subjectRoot + "." + d + "." + n + "." + k + ".*"
}

// ParseSubject splits a subject made by [Subject].
func ParseSubject(subject string) (dir Direction, net mapping.Network, kind Kind, user string, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 6 || parts[0]+"."+parts[1] != subjectRoot {
		return "", 0, "", "", fmt.Errorf("bridge: subject %q: not pb.v1.<dir>.<network>.<kind>.<user>", subject)
	}
	dir = Direction(parts[2])
	if dir != In && dir != Out {
		return "", 0, "", "", fmt.Errorf("bridge: subject %q: bad direction", subject)
	}
	if net, err = mapping.ParseNetwork(parts[3]); err != nil {
		return "", 0, "", "", fmt.Errorf("bridge: subject %q: %w", subject, err)
	}
	kind = Kind(parts[4])
	if !kind.valid() {
		return "", 0, "", "", fmt.Errorf("bridge: subject %q: bad kind", subject)
	}
	if user, err = DecodeToken(parts[5]); err != nil {
		return "", 0, "", "", fmt.Errorf("bridge: subject %q: %w", subject, err)
	}
	return dir, net, kind, user, nil
}
