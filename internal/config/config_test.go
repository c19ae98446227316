package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

type server struct {
	Host   string   `yaml:"host"`
	Port   int      `yaml:"port"`
	Secret string   `yaml:"secret"`
	URLs   []string `yaml:"urls"`
}

func (s server) Validate() error {
	var errs []error
	if s.Port < 1 || s.Port > 65535 {
		errs = append(errs, fmt.Errorf("port: %d is not a port", s.Port))
	}
	if s.Secret == "" {
		errs = append(errs, errors.New("secret: required"))
	}
	for i, u := range s.URLs {
		if !strings.HasPrefix(u, "nats://") {
			errs = append(errs, fmt.Errorf("urls[%d]: bad url %q", i, u))
		}
	}
	return errors.Join(errs...)
}

type file struct {
	XMPP server `yaml:"xmpp"`
}

func TestEveryProblemAtOnceWithPathAndLine(t *testing.T) {
	in := "xmpp:\n  host: localhost\n  port: 0\n  urls:\n    - nats://a:1\n    - http://b\n"
	var f file
	err := Parse("c.yaml", []byte(in), &f, Section{Path: "xmpp", Validate: func() error { return f.XMPP.Validate() }})
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("err = %v", err)
	}
	want := []string{"line 1: xmpp.secret: required", "line 3: xmpp.port: 0 is not a port", "line 6: xmpp.urls[1]: bad url \"http://b\""}
	if len(cerr.Problems) != len(want) {
		t.Fatalf("problems:\n%v", err)
	}
	for i, w := range want {
		if got := cerr.Problems[i].String(); got != w {
			t.Errorf("problem %d = %q, want %q", i, got, w)
		}
	}
}

func TestUnknownKeysRejected(t *testing.T) {
	var f file
	err := Parse("c.yaml", []byte("xmpp:\n  host: x\n  prot: 5347\nextra: 1\n"), &f)
	if err == nil || !strings.Contains(err.Error(), "line 3: field prot not found") || !strings.Contains(err.Error(), "line 4: field extra not found") {
		t.Fatalf("err = %v", err)
	}
}

func TestEnvSecrets(t *testing.T) {
	t.Setenv("PB_TEST_SECRET", "s3cr:et #1")
	var f file
	err := Parse("c.yaml", []byte("xmpp:\n  port: 5347\n  secret: ${PB_TEST_SECRET}\n"), &f, Section{Path: "xmpp", Validate: func() error { return f.XMPP.Validate() }})
	if err != nil || f.XMPP.Secret != "s3cr:et #1" || f.XMPP.Port != 5347 {
		t.Fatalf("f=%+v err=%v", f, err)
	}
	err = Parse("c.yaml", []byte("xmpp:\n  secret: ${PB_TEST_UNSET_VAR}\n"), &f)
	if err == nil || !strings.Contains(err.Error(), "line 2: xmpp.secret: environment variable PB_TEST_UNSET_VAR is not set") {
		t.Fatalf("err = %v", err)
	}
}

func TestBadYAMLAndTypes(t *testing.T) {
	var f file
	if err := Parse("c.yaml", []byte("xmpp: [\n"), &f); err == nil {
		t.Fatal("broken YAML accepted")
	}
	err := Parse("c.yaml", []byte("xmpp:\n  port: lots\n"), &f)
	if err == nil || !strings.Contains(err.Error(), "line 2:") {
		t.Fatalf("err = %v", err)
	}
}

func TestDefaultsKept(t *testing.T) {
	f := file{XMPP: server{Host: "default-host", Port: 5347}}
	if err := Parse("c.yaml", []byte("xmpp:\n  secret: x\n"), &f); err != nil {
		t.Fatal(err)
	}
	if f.XMPP.Host != "default-host" || f.XMPP.Port != 5347 {
		t.Fatalf("defaults lost: %+v", f.XMPP)
	}
}

// One type error is reported once: an unexpanded ${VAR} in the original
// text is no second problem.
func TestTypeErrorWithEnvReportedOnce(t *testing.T) {
	t.Setenv("PB_TEST_PORT", "5347")
	var f file
	in := "xmpp:\n  host: ${PB_TEST_PORT}\n  port: ${PB_TEST_PORT}x\n  secret: s\n"
	err := Parse("c.yaml", []byte(in), &f, Section{Path: "xmpp", Validate: func() error { return f.XMPP.Validate() }})
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("err = %v", err)
	}
	if len(cerr.Problems) != 2 || !strings.Contains(cerr.Problems[0].Msg, "5347x") || !strings.Contains(cerr.Problems[1].Msg, "is not a port") {
		t.Fatalf("want the type error of port and its validation, nothing more; got:\n%v", err)
	}
}

func TestEnvValuesTakeTheFieldsType(t *testing.T) {
	t.Setenv("PB_TEST_PORT", "5347")
	t.Setenv("PB_TEST_SECRET", "12345")
	t.Setenv("PB_TEST_ODD", "a: b # c")
	var f file
	in := "xmpp:\n  host: ${PB_TEST_ODD}\n  port: ${PB_TEST_PORT}\n  secret: ${PB_TEST_SECRET}\n"
	if err := Parse("c.yaml", []byte(in), &f, Section{Path: "xmpp", Validate: func() error { return f.XMPP.Validate() }}); err != nil {
		t.Fatal(err)
	}
	if f.XMPP.Port != 5347 || f.XMPP.Secret != "12345" || f.XMPP.Host != "a: b # c" {
		t.Fatalf("decoded %+v", f.XMPP)
	}
}

func TestNoFalseErrorFromUnexpandedValues(t *testing.T) {
	t.Setenv("PB_TEST_PORT", "5347")
	var f file
	in := "xmpp:\n  host: h\n  port: ${PB_TEST_PORT}\n  secret: s\n  urls: nope\n"
	err := Parse("c.yaml", []byte(in), &f, Section{Path: "xmpp", Validate: func() error { return f.XMPP.Validate() }})
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("err = %v", err)
	}
	if len(cerr.Problems) != 1 || cerr.Problems[0].Line != 5 || !strings.Contains(cerr.Problems[0].Msg, "nope") {
		t.Fatalf("want one problem, about urls on line 5; got:\n%v", err)
	}
}
