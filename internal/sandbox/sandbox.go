package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/dendrite"
	"github.com/presence-bridge/presence-bridge/internal/proc"
	"github.com/presence-bridge/presence-bridge/internal/prosody"
)

// Options configures Run.
type Options struct {
	// Dir holds everything of the sandbox (state.json, the three programs'
	// configs, data and logs); it is created if needed. Required.
	Dir string
	// BridgeBin is the presence-bridge binary. Required.
	BridgeBin string
	// DendriteBinDir holds the Dendrite binaries (dendrite.Binaries).
	// Required.
	DendriteBinDir string
	// Out receives the login instructions and one line per presence change
	// crossing the bridge. Default os.Stdout.
	Out io.Writer
	// Log receives progress and problems. Default slog.Default().
	Log *slog.Logger
}

// ErrMissing is returned (wrapped) by Run when a program it needs is not
// installed or built.
var ErrMissing = errors.New("sandbox: missing program")

// sandbox is one run.
type sandbox struct {
	paths     paths
	st        *state
	bridgeBin string
	log       *slog.Logger
	w         io.Writer
	out       *printer

	prosody  *prosody.Server
	dendrite *dendrite.Server
	bridge   *proc.Process
	alice    *prosody.Client // alice's session of the sandbox (resource "sandbox")
	bob      *dendrite.Client
}

// Run starts the sandbox, prints how to log in, then prints the presence
// changes crossing the bridge until ctx ends (Ctrl-C), and stops the
// bridge, Dendrite and Prosody before it returns. It returns nil when
// stopped by ctx, and an error if anything fails to start or stops by
// itself (everything started is stopped first).
func Run(ctx context.Context, opts Options) (err error) {
	if opts.Dir == "" || opts.BridgeBin == "" || opts.DendriteBinDir == "" {
		return errors.New("sandbox: Options needs Dir, BridgeBin and DendriteBinDir")
	}
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if err := checkPrograms(opts); err != nil {
		return err
	}
	root, err := filepath.Abs(opts.Dir)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	s := &sandbox{paths: newPaths(root), bridgeBin: opts.BridgeBin, log: opts.Log, w: opts.Out, out: newPrinter(opts.Out)}
	release, err := lock(s.paths.lock)
	if err != nil {
		return err
	}
	defer release()

	defer s.stop()
	if err := s.start(ctx, opts); err != nil {
		if ctx.Err() != nil {
			return nil // Ctrl-C during the start
		}
		return err
	}
	s.printBanner()
	return s.watch(ctx)
}

// checkPrograms reports every missing program at once, with how to get it.
func checkPrograms(opts Options) error {
	var missing []string
	if _, _, err := prosody.LookPath(); err != nil {
		missing = append(missing, fmt.Sprintf("Prosody (install: %s)", prosody.InstallHint))
	}
	if err := dendrite.CheckBinaries(opts.DendriteBinDir); err != nil {
		missing = append(missing, fmt.Sprintf("the Dendrite binaries in %s (build: %s)", opts.DendriteBinDir, dendrite.BuildHint))
	}
	if _, err := os.Stat(opts.BridgeBin); err != nil {
		missing = append(missing, fmt.Sprintf("%s (build: make build)", opts.BridgeBin))
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s; make run gets all of them", ErrMissing, strings.Join(missing, "; "))
	}
	return nil
}

// start brings everything up: Prosody and alice, the bridge's config and
// registration, Dendrite and bob, the bridge, then the link between alice
// and bob.
func (s *sandbox) start(ctx context.Context, opts Options) error {
	st, err := loadState(s.paths.state)
	if err != nil {
		return err
	}
	if err := st.choosePorts(); err != nil {
		return err
	}
	s.st = st
	if err := st.save(s.paths.state); err != nil {
		return err
	}

	s.log.Info("starting Prosody", "c2s", st.Ports.XMPP, "component", st.Ports.Component)
	s.prosody, err = prosody.Start(prosody.Config{
		Dir:             s.paths.prosody,
		Domain:          xmppDomain,
		ComponentDomain: componentDomain,
		ComponentSecret: st.ComponentSecret,
		C2SPort:         st.Ports.XMPP,
		ComponentPort:   st.Ports.Component,
	})
	if err != nil {
		return err
	}
	if err := s.prosody.Register(xmppUser, st.XMPPPassword); err != nil {
		return err
	}

	if err := s.writeBridgeConfig(); err != nil {
		return err
	}
	if err := s.writeRegistration(ctx); err != nil {
		return err
	}

	s.log.Info("starting Dendrite", "port", st.Ports.Matrix)
	if err := os.MkdirAll(s.paths.dendrite, 0o700); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	dlog, err := os.OpenFile(s.paths.dendriteLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	defer dlog.Close() // the child has its own copy
	s.dendrite, err = dendrite.Start(ctx, dendrite.Config{
		Dir:                    s.paths.dendrite,
		BinDir:                 opts.DendriteBinDir,
		Addr:                   fmt.Sprintf("127.0.0.1:%d", st.Ports.Matrix),
		ServerName:             homeserver,
		AppServiceRegistration: s.paths.registration,
		Log:                    dlog,
	})
	if err != nil {
		return fmt.Errorf("%w; see %s", err, s.paths.dendriteLog)
	}
	if err := s.matrixLogin(ctx); err != nil {
		return err
	}

	s.log.Info("starting the bridge", "appservice", st.Ports.AppService)
	if err := s.startBridge(); err != nil {
		return err
	}
	s.alice, err = s.prosody.Dial(ctx, xmppUser, st.XMPPPassword, observerRes, prosody.Forget())
	if err != nil {
		return fmt.Errorf("sandbox: alice's XMPP login: %w", err)
	}
	// Like every real client, fetch the roster first: Prosody delivers
	// subscription approvals and roster pushes only to resources that did.
	if _, err := s.alice.Roster(ctx); err != nil {
		return fmt.Errorf("sandbox: alice's roster: %w", err)
	}
	if err := s.waitBridgeReady(ctx); err != nil {
		return err
	}
	// alice's session becomes available, so that it receives subscription
	// requests and bob's presence; at priority -1 any client of the
	// newcomer outranks it.
	if err := s.alice.SendPresence(ctx, "", "", "", "", -1); err != nil {
		return fmt.Errorf("sandbox: alice's presence: %w", err)
	}
	return s.link(ctx)
}

// matrixLogin gets a client for bob: the stored access token if it still
// works, else a password login, creating bob the first time.
func (s *sandbox) matrixLogin(ctx context.Context) error {
	mxid := "@" + matrixUser + ":" + homeserver
	if s.st.MatrixToken != "" {
		c := dendrite.ClientWithToken(s.dendrite.URL, mxid, s.st.MatrixToken)
		if who, err := c.WhoAmI(ctx); err == nil && who == mxid {
			s.bob = c
			return nil
		}
	}
	c, err := s.dendrite.Login(ctx, matrixUser, s.st.MatrixPassword)
	var he *dendrite.HTTPError
	if errors.As(err, &he) && he.Status == 403 {
		s.log.Info("creating the Matrix user", "user", mxid)
		if err := s.dendrite.CreateAccount(ctx, matrixUser, s.st.MatrixPassword); err != nil {
			return err
		}
		c, err = s.dendrite.Login(ctx, matrixUser, s.st.MatrixPassword)
	}
	if err != nil {
		return fmt.Errorf("sandbox: bob's Matrix login: %w", err)
	}
	s.bob = c
	s.st.MatrixToken = c.AccessToken
	return s.st.save(s.paths.state)
}

// watch prints presence crossing the bridge until ctx ends (nil) or one
// of the three programs or sessions ends (an error).
func (s *sandbox) watch(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	watchers := []func(context.Context) error{s.watchXMPP, s.watchMatrix}
	errs := make(chan error, len(watchers))
	for _, w := range watchers {
		wg.Go(func() {
			if err := w(ctx); err != nil {
				errs <- err
			}
		})
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		return err
	case <-s.bridge.Done():
		return fmt.Errorf("sandbox: the bridge exited (%v); see %s", s.bridge.Err(), s.paths.bridgeLog)
	case <-s.prosody.Done():
		return fmt.Errorf("sandbox: Prosody exited; see %s", s.prosody.LogPath())
	case <-s.dendrite.Done():
		return fmt.Errorf("sandbox: Dendrite exited; see %s", s.paths.dendriteLog)
	}
}

// stop stops whatever was started: alice's session (her presence goes
// unavailable), the bridge (its puppets go unavailable), then Dendrite and
// Prosody together.
func (s *sandbox) stop() {
	begin := time.Now()
	s.log.Info("stopping")
	if s.alice != nil {
		s.alice.Close()
	}
	s.stopBridge()
	var wg sync.WaitGroup
	if s.dendrite != nil {
		wg.Go(s.dendrite.Stop)
	}
	if s.prosody != nil {
		wg.Go(s.prosody.Stop)
	}
	wg.Wait()
	s.log.Info("stopped", "took", time.Since(begin).Round(time.Millisecond))
}
