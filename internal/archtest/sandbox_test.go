package archtest

import (
	"strings"
	"testing"
)

// TestSandboxUsesOnlyTheBinary: the sandbox drives the bridge through its
// command line and config file only, like an operator, so that it survives
// any redesign of the bridge's packages; and what it runs is no test code.
func TestSandboxUsesOnlyTheBinary(t *testing.T) {
	forbidden := []string{
		module + "/bridge", module + "/xmppside", module + "/matrixside", module + "/mapping",
		module + "/cmd/presence-bridge", module + "/internal/testenv", "testing",
	}
	for _, pattern := range []string{module + "/cmd/sandbox", module + "/internal/sandbox/..."} {
		for _, p := range deps(t, pattern) {
			for _, f := range forbidden {
				if p.ImportPath == f || strings.HasPrefix(p.ImportPath, f+"/") {
					t.Errorf("%s reaches %s", pattern, p.ImportPath)
				}
			}
		}
	}
}
