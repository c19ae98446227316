package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/proc"
)

// bridgeStopGrace bounds the bridge's clean shutdown (it sends
// "unavailable" from every puppet first).
const bridgeStopGrace = 30 * time.Second

// writeBridgeConfig writes the bridge's config.yaml: the format of the
// repository's config.yaml, every secret generated, everything on
// loopback. It is rewritten at every start from state.json.
func (s *sandbox) writeBridgeConfig() error {
	cfg := `# Written by the sandbox (make run) at every start, from state.json:
# edits here are lost. Run this bridge yourself with
#   presence-bridge -config ` + s.paths.bridgeConfig + `
# while the sandbox's own bridge is stopped.
xmpp:
  host: 127.0.0.1
  port: ` + strconv.Itoa(s.st.Ports.Component) + `
  component_domain: ` + componentDomain + `
  secret: ` + yamlString(s.st.ComponentSecret) + `
  subscription_policy: ask
matrix:
  homeserver_url: ` + s.homeserverURL() + `
  homeserver_domain: ` + homeserver + `
  as_token: ` + yamlString(s.st.ASToken) + `
  hs_token: ` + yamlString(s.st.HSToken) + `
  listen: 127.0.0.1:` + strconv.Itoa(s.st.Ports.AppService) + `
  ghost_prefix: ` + ghostPrefix + `
nats:
  embedded:
    data_dir: ` + yamlString(s.paths.nats) + `
    listen: 127.0.0.1:` + strconv.Itoa(s.st.Ports.NATS) + `   # token-protected: for presence-bridge presence/watch
logging:
  level: info
  format: text
`
	if err := os.MkdirAll(s.paths.bridge, 0o700); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if err := os.WriteFile(s.paths.bridgeConfig, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return nil
}

// yamlString quotes s for YAML (a double-quoted scalar; the generated
// values are hex and paths, so this is only about paths with odd
// characters).
func yamlString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func (s *sandbox) homeserverURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(s.st.Ports.Matrix)
}

// writeRegistration has the bridge write its appservice registration for
// Dendrite, with the tokens of the config (generate-registration never
// overwrites, so the old one goes first).
func (s *sandbox) writeRegistration(ctx context.Context) error {
	if err := os.Remove(s.paths.registration); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sandbox: %w", err)
	}
	cmd := exec.CommandContext(ctx, s.bridgeBin, "generate-registration",
		"-config", s.paths.bridgeConfig, "-out", s.paths.registration)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sandbox: presence-bridge generate-registration: %v\n%s", err, out)
	}
	return nil
}

// startBridge starts "presence-bridge -config FILE", its output appended
// to bridge.log.
func (s *sandbox) startBridge() error {
	logf, err := os.OpenFile(s.paths.bridgeLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "=== sandbox: bridge started at %s\n", time.Now().Format(time.RFC3339))
	cmd := exec.Command(s.bridgeBin, "-config", s.paths.bridgeConfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := proc.Start(cmd)
	if err != nil {
		return err
	}
	s.bridge = p
	return nil
}

// stopBridge stops the bridge cleanly (SIGTERM, like Ctrl-C for the
// bridge), killing it after bridgeStopGrace.
func (s *sandbox) stopBridge() {
	if s.bridge == nil {
		return
	}
	if err := s.bridge.Stop(syscall.SIGTERM, bridgeStopGrace); err != nil {
		s.log.Warn("bridge did not stop in time", "err", err)
	}
}
