package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
)

// The preferred loopback ports. A port that is taken is replaced by a free
// one, and the choice is remembered for the next run.
const (
	preferredXMPPPort       = 15222
	preferredComponentPort  = 15347
	preferredMatrixPort     = 18008
	preferredAppServicePort = 29330
	preferredNATSPort       = 14222
)

// The sandbox's fixed names. Plain lower-case names keep the bridged
// addresses (see puppetJID and ghostMXID) free of escapes.
const (
	xmppDomain      = "localhost"
	componentDomain = "matrix.localhost"
	homeserver      = "localhost"
	ghostPrefix     = "_xmpp_"
	xmppUser        = "alice"
	matrixUser      = "bob"
	observerRes     = "sandbox"
)

// state is what a run leaves for the next one, in state.json: the same
// users, passwords, secrets and ports every time.
type state struct {
	XMPPPassword    string `json:"xmpp_password"`
	MatrixPassword  string `json:"matrix_password"`
	MatrixToken     string `json:"matrix_access_token,omitempty"` // the observer's device, reused
	ComponentSecret string `json:"component_secret"`
	ASToken         string `json:"as_token"`
	HSToken         string `json:"hs_token"`
	Ports           ports  `json:"ports"`
}

type ports struct {
	XMPP       int `json:"xmpp"`
	Component  int `json:"component"`
	Matrix     int `json:"matrix"`
	AppService int `json:"appservice"`
	NATS       int `json:"nats"` // the bridge's NATS listener, for its CLI
}

// loadState reads path, or makes a fresh state when it does not exist, and
// fills in whatever is missing.
func loadState(path string) (*state, error) {
	st := &state{}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("sandbox: %w", err)
	default:
		if err := json.Unmarshal(data, st); err != nil {
			return nil, fmt.Errorf("sandbox: %s: %w (remove it, or run make clean, to start over)", path, err)
		}
	}
	for _, s := range []*string{&st.XMPPPassword, &st.MatrixPassword} {
		if *s == "" {
			*s = newPassword()
		}
	}
	for _, s := range []*string{&st.ComponentSecret, &st.ASToken, &st.HSToken} {
		if *s == "" {
			*s = newSecret()
		}
	}
	return st, nil
}

// save writes the state, readable only by its owner.
func (st *state) save(path string) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return nil
}

// choosePorts keeps each remembered port that is free, else takes the
// preferred one if free, else any free loopback port.
func (st *state) choosePorts() error {
	taken := map[int]bool{}
	for _, p := range []struct {
		port      *int
		preferred int
	}{
		{&st.Ports.XMPP, preferredXMPPPort},
		{&st.Ports.Component, preferredComponentPort},
		{&st.Ports.Matrix, preferredMatrixPort},
		{&st.Ports.AppService, preferredAppServicePort},
		{&st.Ports.NATS, preferredNATSPort},
	} {
		chosen := 0
		for _, candidate := range []int{*p.port, p.preferred} {
			if candidate != 0 && !taken[candidate] && portFree(candidate) {
				chosen = candidate
				break
			}
		}
		for chosen == 0 {
			free, err := freePort()
			if err != nil {
				return err
			}
			if !taken[free] {
				chosen = free
			}
		}
		taken[chosen] = true
		*p.port = chosen
	}
	return nil
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("sandbox: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// passwordAlphabet leaves out letters and digits that look alike.
const passwordAlphabet = "abcdefghjkmnpqrstuvwxyz23456789"

// newPassword returns a password easy to type into a client: three groups
// of four characters (about 59 bits).
func newPassword() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+)
	out := make([]byte, 0, 14)
	for i, c := range b {
		if i > 0 && i%4 == 0 {
			out = append(out, '-')
		}
		out = append(out, passwordAlphabet[int(c)%len(passwordAlphabet)])
	}
	return string(out)
}

func newSecret() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// puppetJID is the XMPP address of a Matrix user of the sandbox's
// homeserver, by the rule in the README ("Addressing"): the Matrix ID
// without "@", its ":" written as XEP-0106 "\40", on the component
// domain. Only for plain lower-case localparts, like the sandbox's.
func puppetJID(localpart string) string {
	return localpart + `\40` + homeserver + "@" + componentDomain
}

// ghostMXID is the Matrix ID of an XMPP user of the sandbox's server, by
// the same rule: the ghost prefix, then the bare JID with "@" as "=40".
// Only for plain lower-case localparts.
func ghostMXID(localpart string) string {
	return "@" + ghostPrefix + localpart + "=40" + xmppDomain + ":" + homeserver
}

// paths are the files and directories of one sandbox.
type paths struct {
	root, state, lock          string
	prosody, dendrite, bridge  string // the three programs' directories
	bridgeConfig, registration string
	dendriteLog, bridgeLog     string
	nats                       string // the bridge's state
}

func newPaths(root string) paths {
	return paths{
		root:         root,
		state:        filepath.Join(root, "state.json"),
		lock:         filepath.Join(root, "sandbox.lock"),
		prosody:      filepath.Join(root, "prosody"),
		dendrite:     filepath.Join(root, "dendrite"),
		bridge:       filepath.Join(root, "bridge"),
		bridgeConfig: filepath.Join(root, "bridge", "config.yaml"),
		registration: filepath.Join(root, "bridge", "registration.yaml"),
		dendriteLog:  filepath.Join(root, "dendrite", "dendrite.log"),
		bridgeLog:    filepath.Join(root, "bridge", "bridge.log"),
		nats:         filepath.Join(root, "bridge", "nats"),
	}
}
