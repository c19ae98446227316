package main

import (
	"strings"
	"testing"
)

// TestFederationModeConfig: in federation mode the appservice keys are
// not needed, the gateway's are, each problem with its path; an empty
// ghost prefix is fine (the server name is the gateway's own).
func TestFederationModeConfig(t *testing.T) {
	ok := writeFile(t, "xmpp:\n  component_domain: matrix.example.net\n  secret: x\nmatrix:\n  mode: federation\n  federation:\n    server_name: gw.example.net\n    tls_cert: /c.pem\n    tls_key: /k.pem\n")
	if code, out, errs := runCLI(t, "-config", ok, "-check"); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("valid federation config refused: exit %d\n%s%s", code, out, errs)
	}
	bad := writeFile(t, "xmpp:\n  component_domain: matrix.example.net\n  secret: x\nmatrix:\n  mode: federation\n  federation:\n    server_name: \"bad name\"\n    retry_min: 0s\n")
	code, _, errs := runCLI(t, "-config", bad, "-check")
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{"line 7: matrix.federation.server_name", "matrix.federation.tls_cert: required", "matrix.federation.retry_min"} {
		if !strings.Contains(errs, want) {
			t.Errorf("missing %q in:\n%s", want, errs)
		}
	}
	if strings.Contains(errs, "homeserver_url") || strings.Contains(errs, "as_token") {
		t.Errorf("appservice keys required in federation mode:\n%s", errs)
	}
	mode := writeFile(t, "xmpp:\n  component_domain: matrix.example.net\n  secret: x\nmatrix:\n  mode: peer\n")
	if code, _, errs := runCLI(t, "-config", mode, "-check"); code != 1 || !strings.Contains(errs, "matrix.mode") {
		t.Errorf("unknown mode: exit %d\n%s", code, errs)
	}
}
