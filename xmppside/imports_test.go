package xmppside

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImportGraph: the XMPP side depends on mapping, bridge and its protocol
// libraries only, never on the Matrix side or the wiring.
func TestImportGraph(t *testing.T) {
	const module = "github.com/presence-bridge/presence-bridge/"
	allowed := map[string]bool{module + "mapping": true, module + "bridge": true, module + "xmppside/stanza": true}
	for _, dir := range []string{".", "stanza"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				path := strings.Trim(imp.Path.Value, `"`)
				if strings.HasPrefix(path, module) && !allowed[path] {
					t.Errorf("%s imports %s", f, path)
				}
			}
		}
	}
}
