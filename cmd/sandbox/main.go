// Command sandbox runs a local presence-bridge sandbox: Prosody, Dendrite
// and the bridge on 127.0.0.1, one XMPP user and one Matrix user who see
// each other's presence, and one line per presence change crossing the
// bridge. It is what "make run" runs; see internal/sandbox.
//
//	sandbox [-dir .build/sandbox] [-bin DIR]
//
// Ctrl-C stops the bridge, Dendrite and Prosody cleanly; a second Ctrl-C
// kills them at once. Running it again reuses the same users, passwords
// and state.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/presence-bridge/presence-bridge/internal/sandbox"
)

func main() {
	os.Exit(run())
}

func run() int {
	self, _ := os.Executable()
	fs := flag.NewFlagSet("sandbox", flag.ContinueOnError)
	dir := fs.String("dir", filepath.Join(".build", "sandbox"), "directory of the sandbox's state, configs, data and logs")
	bin := fs.String("bin", filepath.Dir(self), "directory of the presence-bridge binary and, unless $DENDRITE_BIN_DIR is set, of the Dendrite binaries")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "sandbox: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	dendriteBin := os.Getenv("DENDRITE_BIN_DIR")
	if dendriteBin == "" {
		dendriteBin = *bin
	}

	// Progress on stderr without timestamps (the presence lines on stdout
	// have their own).
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// From now on the default action: a second Ctrl-C ends this
		// process at once, and the kernel kills the children with it.
		stop()
	}()

	err := sandbox.Run(ctx, sandbox.Options{
		Dir:            *dir,
		BridgeBin:      filepath.Join(*bin, "presence-bridge"),
		DendriteBinDir: dendriteBin,
		Out:            os.Stdout,
		Log:            log,
	})
	if err != nil {
		log.Error("sandbox failed", "err", err)
		return 1
	}
	return 0
}
