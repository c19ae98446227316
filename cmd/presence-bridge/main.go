// Command presence-bridge bridges presence between XMPP and Matrix.
//
//	presence-bridge [-config config.yaml] [-role all|xmpp|matrix|core] [-check]     run the bridge (or only check the config)
//	presence-bridge generate-registration [-config config.yaml] [-out registration.yaml]
//	presence-bridge version
//	presence-bridge presence|request|statuses|subscriptions|watch [-config config.yaml] [-json] …
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

var usage = `presence-bridge: presence between XMPP and Matrix.

Usage:
  presence-bridge [-config FILE] [-role ROLE] [-check]
        Run the bridge with FILE (default config.yaml). With -check, only
        validate the config: every problem is listed, exit status 1 if any.
        ROLE is the part this process runs: all (the default: everything,
        with the embedded NATS server unless nats.urls is set), or, on an
        external NATS cluster (nats.urls), xmpp, matrix or core; run each
        on as many machines as you like (one xmpp and one matrix instance
        is active at a time, the others take over when it dies).
  presence-bridge generate-registration [-config FILE] [-out FILE]
        Write a Matrix appservice registration (fresh tokens unless the
        config sets them) for the homeserver. Put the same tokens in the
        config (matrix.as_token, matrix.hs_token).
  presence-bridge version
        Print the version.

Talking to the running bridge (same config file; see docs/operations.md):
` + cliUsage + `
Secrets may be written as ${ENV_VAR} in any config value.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "version", "-version", "--version":
			fmt.Fprintln(stdout, "presence-bridge", buildVersion())
			return 0
		case "presence", "request", "statuses", "subscriptions", "watch":
			return runOps(ctx, args[0], args[1:], stdout, stderr)
		case "generate-registration":
			return generateRegistration(args[1:], stdout, stderr)
		case "help", "-h", "-help", "--help":
			fmt.Fprint(stdout, usage)
			return 0
		}
	}
	fs := flag.NewFlagSet("presence-bridge", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	path := fs.String("config", "config.yaml", "config file")
	check := fs.Bool("check", false, "validate the config and exit")
	roleFlag := fs.String("role", string(RoleAll), "the part this process runs: all, xmpp, matrix or core")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "presence-bridge: unknown command %q\n\n%s", fs.Arg(0), usage)
		return 2
	}
	role, err := ParseRole(*roleFlag)
	if err != nil {
		fmt.Fprintf(stderr, "presence-bridge: %v\n", err)
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := checkRole(role, cfg); err != nil {
		fmt.Fprintf(stderr, "presence-bridge: %v\n", err)
		return 1
	}
	if *check {
		fmt.Fprintf(stdout, "%s: OK\n", *path)
		return 0
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal the bridge shuts down cleanly; a second one
	// (default handling restored) ends the process at once.
	go func() { <-ctx.Done(); stop() }()
	if err := runBridge(ctx, cfg, role); err != nil {
		fmt.Fprintln(stderr, "presence-bridge:", err)
		return 1
	}
	return 0
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

func generateRegistration(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("generate-registration", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.yaml", "config file")
	out := fs.String("out", "", "write here instead of standard output (never overwrites)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		// Tokens are usually missing before the first registration: only
		// the problems the registration itself depends on are fatal.
		if cfg == nil || cfg.Matrix.HomeserverDomain == "" || cfg.XMPP.ComponentDomain == "" {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	reg, err := registrationYAML(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "presence-bridge:", err)
		return 1
	}
	if *out == "" {
		_, _ = stdout.Write(reg)
		return 0
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		fmt.Fprintln(stderr, "presence-bridge:", err)
		return 1
	}
	defer f.Close()
	if _, err := f.Write(reg); err != nil {
		fmt.Fprintln(stderr, "presence-bridge:", err)
		return 1
	}
	fmt.Fprintf(stderr, "wrote %s; put its as_token and hs_token into %s (matrix.as_token, matrix.hs_token)\n", *out, *path)
	return 0
}
