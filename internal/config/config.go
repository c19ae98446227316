// Package config loads config.yaml: strict decoding (unknown keys are
// errors), ${VAR} references to environment variables in any value (for
// secrets), and validation by the section owners, with every problem
// reported at once with its YAML path and line. The file is never rewritten.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a config file.
type Problem struct {
	Path string // YAML path, e.g. "xmpp.port"; empty if unknown
	Line int    // 1-based line in the file; 0 if unknown
	Msg  string
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Error lists every problem found in a config file.
type Error struct {
	File     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem(s)", e.File, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Section is one part of the config and the function that validates it.
// Validate's errors are split (errors.Join) and each is expected to start
// with its key within the section ("port: ..."), which is prefixed with Path.
type Section struct {
	Path     string
	Validate func() error
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// Load decodes the YAML file at path into dst (which must already hold the
// defaults), expanding ${VAR} in scalar values, then runs every section's
// validation. All problems come back together in an *Error.
func Load(path string, dst any, sections ...Section) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return Parse(path, data, dst, sections...)
}

// Parse is Load for data already read; name is used in messages.
func Parse(name string, data []byte, dst any, sections ...Section) error {
	cerr := &Error{File: name}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		cerr.Problems = append(cerr.Problems, yamlProblems(err)...)
		return cerr
	}
	expandEnv(&root, "", cerr)
	if len(root.Content) > 0 {
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		if err := enc.Encode(&root); err != nil {
			return fmt.Errorf("config: %w", err)
		}
		// Decode the original text for line numbers in errors, with values
		// from the expanded tree: decode the tree itself, strictly.
		dec := yaml.NewDecoder(bytes.NewReader(buf.Bytes()))
		dec.KnownFields(true)
		if err := dec.Decode(dst); err != nil {
			// The problems are those of the expanded text; the original
			// text only lends its line numbers where it has the same
			// problem. Its own problems (a ${VAR} where a number belongs)
			// are not real ones.
			lines := map[string]int{}
			orig := yaml.NewDecoder(bytes.NewReader(data))
			orig.KnownFields(true)
			if err := orig.Decode(reflect.New(reflect.TypeOf(dst).Elem()).Interface()); err != nil {
				for _, p := range yamlProblems(err) {
					lines[p.Msg] = p.Line
				}
			}
			for _, p := range yamlProblems(err) {
				if l, ok := lines[p.Msg]; ok {
					p.Line = l
				}
				cerr.Problems = append(cerr.Problems, p)
			}
		}
	}
	for _, s := range sections {
		if s.Validate == nil {
			continue
		}
		for _, e := range split(s.Validate()) {
			msg := e.Error()
			path := s.Path
			if key, rest, ok := strings.Cut(msg, ": "); ok && !strings.ContainsAny(key, " \t") {
				path = joinPath(s.Path, key)
				msg = rest
			}
			cerr.Problems = append(cerr.Problems, Problem{Path: path, Line: lineOf(&root, path), Msg: msg})
		}
	}
	if len(cerr.Problems) > 0 {
		sort.SliceStable(cerr.Problems, func(i, j int) bool { return cerr.Problems[i].Line < cerr.Problems[j].Line })
		return cerr
	}
	return nil
}

func joinPath(a, b string) string {
	if a == "" {
		return b
	}
	if strings.HasPrefix(b, "[") {
		return a + b
	}
	return a + "." + b
}

func split(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, split(e)...)
		}
		return out
	}
	return []error{err}
}

var yamlLine = regexp.MustCompile(`^line (\d+): (.*)$`)

func yamlProblems(err error) []Problem {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		var ps []Problem
		for _, e := range te.Errors {
			ps = append(ps, lineProblem(e))
		}
		return ps
	}
	return []Problem{lineProblem(strings.TrimPrefix(err.Error(), "yaml: "))}
}

func lineProblem(s string) Problem {
	if m := yamlLine.FindStringSubmatch(s); m != nil {
		n, _ := strconv.Atoi(m[1])
		return Problem{Line: n, Msg: m[2]}
	}
	return Problem{Msg: s}
}

// expandEnv replaces ${VAR} in every scalar with the environment value; an
// unset variable is a problem (a secret silently empty is worse).
func expandEnv(n *yaml.Node, path string, cerr *Error) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for i, c := range n.Content {
			p := path
			if n.Kind == yaml.SequenceNode {
				p = fmt.Sprintf("%s[%d]", path, i)
			}
			expandEnv(c, p, cerr)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			expandEnv(n.Content[i+1], joinPath(path, n.Content[i].Value), cerr)
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "${") {
			return
		}
		n.Value = envRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
			name := envRef.FindStringSubmatch(ref)[1]
			v, ok := os.LookupEnv(name)
			if !ok {
				cerr.Problems = append(cerr.Problems, Problem{Path: path, Line: n.Line, Msg: fmt.Sprintf("environment variable %s is not set", name)})
			}
			return v
		})
		// The expanded value is typed as if written in place: a port may
		// come from the environment; a secret of digits still decodes
		// into a string field.
		n.Tag = ""
	}
}

// lineOf finds the line of the value at a dotted path ("a.b[2].c"), or of
// the deepest parent that exists.
func lineOf(root *yaml.Node, path string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.FieldsFunc(path, func(r rune) bool { return r == '.' }) {
		name, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			name = part[:i]
			idx, _ = strconv.Atoi(part[i+1 : len(part)-1])
		}
		next := (*yaml.Node)(nil)
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == name {
					line = n.Content[i].Line
					next = n.Content[i+1]
				}
			}
		}
		if next == nil {
			return line
		}
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}
