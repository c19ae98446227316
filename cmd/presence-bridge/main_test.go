package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestExampleConfigChecks: the shipped config.yaml is valid once its
// secrets are in the environment.
func TestExampleConfigChecks(t *testing.T) {
	t.Setenv("PB_XMPP_SECRET", "s")
	t.Setenv("PB_MATRIX_AS_TOKEN", "as")
	t.Setenv("PB_MATRIX_HS_TOKEN", "hs")
	code, out, errs := runCLI(t, "-config", "../../config.yaml", "-check")
	if code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
}

func TestBrokenConfigListsEveryProblem(t *testing.T) {
	p := writeFile(t, "xmpp:\n  port: 99999\n  bogus: 1\nmatrix:\n  homeserver_url: ftp://x\nnats:\n  replicas: 9\nlogging:\n  level: loud\n")
	code, _, errs := runCLI(t, "-config", p, "-check")
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{"line 2: xmpp.port", "line 3: field bogus", "xmpp.component_domain: required", "matrix.homeserver_url", "line 7: nats.replicas", "line 9: logging.level"} {
		if !strings.Contains(errs, want) {
			t.Errorf("missing %q in:\n%s", want, errs)
		}
	}
}

func TestMissingConfigFile(t *testing.T) {
	code, _, errs := runCLI(t, "-config", filepath.Join(t.TempDir(), "nope.yaml"), "-check")
	if code != 1 || !strings.Contains(errs, "no such file") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}

func TestGenerateRegistration(t *testing.T) {
	p := writeFile(t, "xmpp:\n  component_domain: matrix.example.net\n  secret: x\nmatrix:\n  homeserver_url: http://127.0.0.1:8008\n  homeserver_domain: example.org\n")
	out := filepath.Join(t.TempDir(), "registration.yaml")
	code, _, errs := runCLI(t, "generate-registration", "-config", p, "-out", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	data, _ := os.ReadFile(out)
	var reg map[string]any
	if err := yaml.Unmarshal(data, &reg); err != nil {
		t.Fatal(err)
	}
	as, hs := reg["as_token"].(string), reg["hs_token"].(string)
	if len(as) < 32 || len(hs) < 32 || as == hs {
		t.Fatalf("tokens not fresh and distinct: %q %q", as, hs)
	}
	if !strings.Contains(string(data), `^@_xmpp_.*:example\.org$`) {
		t.Fatalf("namespace missing:\n%s", data)
	}
	// Never overwrites an existing file.
	if code, _, _ := runCLI(t, "generate-registration", "-config", p, "-out", out); code == 0 {
		t.Fatal("overwrote an existing registration")
	}
	// Fresh tokens each time.
	_, again, _ := runCLI(t, "generate-registration", "-config", p)
	if strings.Contains(again, as) {
		t.Fatal("tokens repeated")
	}
}

func TestVersionAndHelp(t *testing.T) {
	if code, out, _ := runCLI(t, "version"); code != 0 || !strings.HasPrefix(out, "presence-bridge ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, out, _ := runCLI(t, "--help"); code != 0 || !strings.Contains(out, "generate-registration") {
		t.Fatalf("help: %d %q", code, out)
	}
	if code, _, _ := runCLI(t, "frobnicate"); code != 2 {
		t.Fatalf("unknown command: exit %d", code)
	}
}

// TestRoleNeedsExternalNATS: a split role on the embedded server is
// refused with a message that says what to do; a bad role is refused.
func TestRoleNeedsExternalNATS(t *testing.T) {
	t.Setenv("PB_XMPP_SECRET", "s")
	t.Setenv("PB_MATRIX_AS_TOKEN", "as")
	t.Setenv("PB_MATRIX_HS_TOKEN", "hs")
	for _, role := range []string{"xmpp", "matrix", "core"} {
		code, _, errs := runCLI(t, "-config", "../../config.yaml", "-role", role, "-check")
		if code != 1 || !strings.Contains(errs, "-role "+role+" needs nats.urls") {
			t.Errorf("-role %s: exit %d: %s", role, code, errs)
		}
	}
	code, _, errs := runCLI(t, "-config", "../../config.yaml", "-role", "sides", "-check")
	if code != 2 || !strings.Contains(errs, "must be all, xmpp, matrix or core") {
		t.Errorf("-role sides: exit %d: %s", code, errs)
	}
	code, out, errs := runCLI(t, "-config", "../../config.yaml", "-role", "all", "-check")
	if code != 0 || !strings.Contains(out, "OK") {
		t.Errorf("-role all: exit %d: %s%s", code, out, errs)
	}
}

// TestRoleWithClusterChecks: with nats.urls every role's config checks,
// and the cluster section is validated with its keys.
func TestRoleWithClusterChecks(t *testing.T) {
	p := writeFile(t, "xmpp:\n  component_domain: matrix.example.net\n  secret: s\nmatrix:\n  homeserver_url: http://127.0.0.1:8008\n  homeserver_domain: example.org\n  as_token: a\n  hs_token: h\nnats:\n  urls: [nats://127.0.0.1:4222]\n  replicas: 3\n")
	for _, role := range []string{"all", "xmpp", "matrix", "core"} {
		if code, out, errs := runCLI(t, "-config", p, "-role", role, "-check"); code != 0 || !strings.Contains(out, "OK") {
			t.Errorf("-role %s: exit %d: %s%s", role, code, out, errs)
		}
	}
	bad := writeFile(t, "xmpp:\n  component_domain: matrix.example.net\n  secret: s\nmatrix:\n  homeserver_url: http://127.0.0.1:8008\n  homeserver_domain: example.org\n  as_token: a\n  hs_token: h\ncluster:\n  lease_ttl: 2s\n  lease_renew: 3s\n")
	code, _, errs := runCLI(t, "-config", bad, "-check")
	if code != 1 || !strings.Contains(errs, "cluster.lease_renew") {
		t.Errorf("renew above the TTL: exit %d: %s", code, errs)
	}
}
