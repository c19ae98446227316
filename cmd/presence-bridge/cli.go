package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/opsapi"
)

// The operator's commands: they talk to the running bridge's presence
// service (package bridge/opsapi) over its NATS.

const cliUsage = `  presence-bridge presence [-config FILE] [-json] USER…
        The presence of XMPP users (JIDs) and Matrix users (MXIDs), mixed.
  presence-bridge request [-config FILE] [-json] USER…
        Ask the networks for fresh presence (it shows in watch).
  presence-bridge statuses [-config FILE] [-json]
        The statuses the bridge knows, as the homeserver and config allow.
  presence-bridge subscriptions [-config FILE] [-json] USER
        A user's XMPP subscriptions and Matrix links.
  presence-bridge watch [-config FILE] [-json] [USER…]
        One line per presence change (of USERs, or of everybody) until Ctrl-C.
`

// callTimeout bounds one request to the bridge.
const callTimeout = 10 * time.Second

func runOps(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.yaml", "config file of the running bridge")
	asJSON := fs.Bool("json", false, "print JSON (one object per line for watch)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	users := fs.Args()
	switch {
	case (cmd == "presence" || cmd == "request") && len(users) == 0,
		cmd == "subscriptions" && len(users) != 1,
		cmd == "statuses" && len(users) != 0:
		fmt.Fprintf(stderr, "presence-bridge %s: wrong arguments\n\n%s", cmd, cliUsage)
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil && cfg == nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// Problems elsewhere in the file (tokens not filled in yet) do not
	// stop a client; the nats section must be sound.
	if err := cfg.NATS.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s: nats: %v\n", *path, err)
		return 1
	}
	nc, err := connectBridge(cfg.NATS)
	if err != nil {
		fmt.Fprintln(stderr, "presence-bridge:", err)
		return 1
	}
	defer nc.Close()
	c := opsapi.NewClient(nc)
	if cmd == "watch" {
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		return cliErr(stderr, watch(ctx, c, users, *asJSON, stdout, stderr))
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var out any
	switch cmd {
	case "presence":
		out, err = c.Get(ctx, users...)
	case "request":
		out, err = c.Request(ctx, users...)
	case "statuses":
		out, err = c.Statuses(ctx)
	case "subscriptions":
		out, err = c.Subscriptions(ctx, users[0])
	}
	if err != nil {
		return cliErr(stderr, err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
		return 0
	}
	printHuman(stdout, out)
	return 0
}

func cliErr(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "presence-bridge:", err)
	return 1
}

// connectBridge connects to the running bridge's NATS: the embedded
// server's listener with the token from its data dir, or the cluster.
func connectBridge(cfg bridge.Config) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("presence-bridge-cli"), nats.Timeout(3 * time.Second), nats.NoReconnect()}
	url := ""
	if cfg.IsEmbedded() {
		if cfg.Embedded.Listen == "" {
			return nil, errors.New("nats.embedded.listen is empty: the bridge's NATS is in-process only. Set it (the default is 127.0.0.1:4222) and restart the bridge")
		}
		host, port, _ := net.SplitHostPort(cfg.Embedded.Listen)
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		url = "nats://" + net.JoinHostPort(host, port)
		tokPath := filepath.Join(cfg.Embedded.DataDir, bridge.TokenFile)
		tok, err := os.ReadFile(tokPath)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("no bridge has run with this config (no %s); start it first", tokPath)
			}
			return nil, fmt.Errorf("reading the bridge's NATS token: %w (run as the bridge's user)", err)
		}
		opts = append(opts, nats.Token(strings.TrimSpace(string(tok))))
	} else {
		url = strings.Join(cfg.URLs, ",")
		opts = append(opts, cfg.ClusterAuth()...)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		if errors.Is(err, nats.ErrNoServers) {
			return nil, fmt.Errorf("no bridge is running at %s (%v)", url, err)
		}
		return nil, fmt.Errorf("connecting to the bridge's NATS at %s: %w", url, err)
	}
	return nc, nil
}

func watch(ctx context.Context, c *opsapi.Client, users []string, asJSON bool, stdout, stderr io.Writer) error {
	subjects := make([]string, len(users))
	for i, u := range users {
		subjects[i] = opsapi.WatchSubject(u)
	}
	enc := json.NewEncoder(stdout)
	ready := func() { fmt.Fprintln(stderr, "watching presence changes; Ctrl-C to stop") }
	return c.Watch(ctx, subjects, ready, func(u opsapi.Update) {
		if asJSON {
			_ = enc.Encode(u)
			return
		}
		fmt.Fprintln(stdout, u.String())
	})
}

func printHuman(w io.Writer, out any) {
	switch r := out.(type) {
	case opsapi.GetResponse:
		for _, p := range r.Presences {
			fmt.Fprintln(w, presenceLine(p))
		}
	case opsapi.RequestResponse:
		for _, x := range r.Results {
			if x.Error == "" {
				fmt.Fprintf(w, "%s\tasked\n", x.User)
			} else {
				fmt.Fprintf(w, "%s\t%s\t%s\n", x.User, x.Error, x.Description)
			}
		}
	case opsapi.StatusesResponse:
		ids := make([]string, 0, len(r.Statuses))
		for id := range r.Statuses {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, func(a, b string) int { return int(r.Statuses[a].Type) - int(r.Statuses[b].Type) })
		fmt.Fprintf(w, "%-10s %-14s %-12s %s\n", "STATUS", "TYPE", "XMPP", "MATRIX")
		for _, id := range ids {
			s := r.Statuses[id]
			fmt.Fprintf(w, "%-10s %-14s %-12s %s\n", id, s.TypeName, dash(s.XMPP), dash(s.Matrix))
		}
	case opsapi.SubscriptionsResponse:
		fmt.Fprintf(w, "%s (%s)\n", r.User, r.Network)
		for _, s := range r.Subscriptions {
			pend := ""
			if s.PendingIn {
				pend += " +pending-in"
			}
			if s.PendingOut {
				pend += " +pending-out"
			}
			fmt.Fprintf(w, "  subscription  puppet of %s ↔ %s: %s%s\n", s.MatrixUser, s.XMPPUser, s.State, pend)
		}
		for _, l := range r.Links {
			fmt.Fprintf(w, "  link          %s ↔ %s: %s %s\n", l.MatrixUser, l.XMPPUser, l.State, l.RoomID)
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func presenceLine(p opsapi.Presence) string {
	who := p.User
	if p.Resolved != p.User {
		who += " (" + p.Resolved + ")"
	}
	switch {
	case p.Error == opsapi.CodeNotAvailable:
		return fmt.Sprintf("%s\t%s\tnot available: the bridge has no presence for this user", who, p.Network)
	case p.Error == opsapi.CodePermissionDenied:
		return fmt.Sprintf("%s\t%s\tpermission denied: the bridge does not carry this user", who, p.Network)
	case p.OptedOut:
		return fmt.Sprintf("%s\t%s\topted out: presence not reported", who, p.Network)
	}
	line := fmt.Sprintf("%s\t%s\t%s", who, p.Network, p.State)
	if p.Status != "" {
		line += fmt.Sprintf(" %q", p.Status)
	}
	for _, r := range p.Resources {
		if r.Aggregate {
			line += fmt.Sprintf(" priority=%d", r.Priority)
			continue
		}
		line += fmt.Sprintf(" [%s %s priority=%d]", r.Name, r.State, r.Priority)
	}
	if p.CurrentlyActive {
		line += " active"
	}
	if !p.LastActive.IsZero() {
		line += " last-active=" + p.LastActive.UTC().Format(time.RFC3339)
	}
	if !p.ObservedAt.IsZero() {
		line += " observed=" + p.ObservedAt.UTC().Format(time.RFC3339)
	}
	return line
}
