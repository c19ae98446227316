// Package archtest enforces the import rules of STYLE.md, the only test of
// them: mapping reaches only the standard library; the two sides never
// import each other; the core and the sides speak through the ports of
// package bridge and never learn the NATS transport; only cmd knows
// everything.
package archtest

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const module = "github.com/presence-bridge/presence-bridge"

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
	Standard   bool
}

func deps(t *testing.T, pattern string) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-json", pattern).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pattern, err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func TestMappingImportsOnlyStandardLibrary(t *testing.T) {
	for _, p := range deps(t, module+"/mapping/...") {
		if !p.Standard && !strings.HasPrefix(p.ImportPath, module+"/mapping") {
			t.Errorf("mapping reaches %s", p.ImportPath)
		}
	}
}

func TestSidesNeverImportEachOther(t *testing.T) {
	rules := map[string][]string{
		"xmppside":    {module + "/matrixside", module + "/matrixfed", module + "/cmd", module + "/bridge/core", module + "/bridge/transport", "maunium.net/go/mautrix"},
		"matrixside":  {module + "/xmppside", module + "/matrixfed", module + "/cmd", module + "/bridge/core", module + "/bridge/transport", "mellium.im/xmpp"},
		"matrixfed":   {module + "/xmppside", module + "/matrixside", module + "/cmd", module + "/bridge/core", module + "/bridge/transport", "mellium.im/xmpp"},
		"bridge":      {module + "/xmppside", module + "/matrixside", module + "/matrixfed", module + "/cmd", "mellium.im/xmpp", "maunium.net/go/mautrix"},
		"bridge/core": {module + "/bridge/transport"},
	}
	for from, forbidden := range rules {
		for _, p := range deps(t, module+"/"+from+"/...") {
			for _, f := range forbidden {
				if p.ImportPath == f || strings.HasPrefix(p.ImportPath, f+"/") {
					if strings.HasPrefix(p.ImportPath, module+"/"+from) {
						continue
					}
					t.Errorf("%s reaches %s", from, p.ImportPath)
				}
			}
		}
	}
}

// TestSidesSpeakOnlyThroughThePorts: of the project's packages, a side
// imports only mapping, bridge (the ports and the state) and its own
// subpackages.
func TestSidesSpeakOnlyThroughThePorts(t *testing.T) {
	for _, side := range []string{"xmppside", "matrixside", "matrixfed"} {
		for _, p := range deps(t, module+"/"+side+"/...") {
			if !strings.HasPrefix(p.ImportPath, module+"/"+side) {
				continue
			}
			for _, imp := range p.Imports {
				if !strings.HasPrefix(imp, module+"/") || strings.HasPrefix(imp, module+"/"+side) {
					continue
				}
				if imp != module+"/mapping" && imp != module+"/bridge" {
					t.Errorf("%s imports %s", p.ImportPath, imp)
				}
			}
		}
	}
}

// TestNobodyButTheTransportSpeaksNATS: the bus, its envelope and its
// subjects live in package bridge for the transport and cmd; the core and
// the sides never name them, in code or tests (they test against fakes of
// the ports and an in-memory or embedded store).
func TestNobodyButTheTransportSpeaksNATS(t *testing.T) {
	forbidden := regexp.MustCompile(`\bbridge\.(Bus|Event|Subject|SubjectFilter|Kind[A-Z]\w*|Direction|In|Out|DecodeEvent|EncodeEvent)\b`)
	for _, dir := range []string{"xmppside", "matrixside", "matrixfed", "bridge/core"} {
		root := filepath.Join("..", "..", dir)
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
				return err
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for i, line := range strings.Split(string(src), "\n") {
				if m := forbidden.FindString(line); m != "" {
					t.Errorf("%s:%d names %s", path, i+1, m)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
