package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/matrixside"
	"github.com/presence-bridge/presence-bridge/xmppside"
)

// Role is the part of the bridge one process runs (-role).
type Role string

// The roles. Every role but all needs an external NATS cluster that the
// instances share; all on one machine with the embedded server is the
// zero-setup default.
const (
	// RoleAll runs everything: core, XMPP side, Matrix side.
	RoleAll Role = "all"
	// RoleXMPP runs the XEP-0114 component and the servers that carry
	// the core's commands to it. One instance is active (the "xmpp"
	// lease); the others stand by.
	RoleXMPP Role = "xmpp"
	// RoleMatrix runs the appservice and the servers that carry the
	// core's commands to it. One instance is active (the "matrix" lease).
	RoleMatrix Role = "matrix"
	// RoleCore runs the core, the transport that serves it, and the
	// operations surface (presence service, metrics, health).
	RoleCore Role = "core"
)

// ParseRole parses the -role flag.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleAll, RoleXMPP, RoleMatrix, RoleCore:
		return r, nil
	}
	return "", fmt.Errorf("-role %q: must be all, xmpp, matrix or core", s)
}

// runs reports whether the role runs part (xmpp, matrix or core).
func (r Role) runs(part Role) bool { return r == RoleAll || r == part }

// checkRole reports a role that cannot run with cfg.
func checkRole(r Role, cfg *File) error {
	if r != RoleAll && cfg.NATS.IsEmbedded() {
		return fmt.Errorf("-role %s needs nats.urls: the instances of a split bridge meet on an external NATS cluster (only -role all runs with the embedded server)", r)
	}
	return nil
}

// The lease names: one active instance per side.
const (
	leaseXMPP   = "xmpp"
	leaseMatrix = "matrix"
)

// holderName names this instance in the lease bucket and the logs.
func holderName(r Role) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%s-%d-%s", r, host, os.Getpid(), bridge.NewID()[:8])
}

// errStandby: this instance's side is standing by (another holds its lease).
var errStandby = errors.New("standing by: another instance is active")

// activeHealth is the health of the side of the current term, for the
// metrics and health checks that outlive terms. A standby instance is
// not ready: the active one is.
type activeHealth struct {
	mu sync.Mutex
	h  bridge.Health
}

func (a *activeHealth) set(h bridge.Health) { a.mu.Lock(); a.h = h; a.mu.Unlock() }

func (a *activeHealth) Healthy() error {
	a.mu.Lock()
	h := a.h
	a.mu.Unlock()
	if h == nil {
		return errStandby
	}
	return h.Healthy()
}

// sideHooks is what the operations surface attaches to each side when it
// is made (a side is made afresh for every term, see runSide).
type sideHooks struct {
	xmppHealth, matrixHealth activeHealth
	xmppConnectsDone         atomic.Int64 // streams of finished terms
	xmppConnects             atomic.Pointer[func() int64]

	mu     sync.Mutex
	xmpp   []func(*xmppside.Component)
	matrix []func(*matrixside.Side)
}

func (h *sideHooks) onXMPP(f func(*xmppside.Component)) {
	h.mu.Lock()
	h.xmpp = append(h.xmpp, f)
	h.mu.Unlock()
}
func (h *sideHooks) onMatrix(f func(*matrixside.Side)) {
	h.mu.Lock()
	h.matrix = append(h.matrix, f)
	h.mu.Unlock()
}

// streamConnects counts the XMPP streams established since start, over
// every term.
func (h *sideHooks) streamConnects() int64 {
	n := h.xmppConnectsDone.Load()
	if f := h.xmppConnects.Load(); f != nil {
		n += (*f)()
	}
	return n
}

func (h *sideHooks) startXMPP(xs *xmppside.Component) {
	h.mu.Lock()
	for _, f := range h.xmpp {
		f(xs)
	}
	h.mu.Unlock()
	f := xs.StreamConnects
	h.xmppConnects.Store(&f)
	h.xmppHealth.set(xs)
}

func (h *sideHooks) endXMPP(xs *xmppside.Component) {
	h.xmppHealth.set(nil)
	h.xmppConnects.Store(nil)
	h.xmppConnectsDone.Add(xs.StreamConnects())
}

// startMatrix runs the onMatrix hooks on an appservice side (the
// federation gateway has no homeserver to instrument).
func (h *sideHooks) startMatrix(ms matrixSide) {
	if as, ok := ms.(*matrixside.Side); ok {
		h.mu.Lock()
		for _, f := range h.matrix {
			f(as)
		}
		h.mu.Unlock()
	}
	h.matrixHealth.set(ms)
}

func (h *sideHooks) endMatrix() { h.matrixHealth.set(nil) }

// leaseRun runs work under the lease name when leases is not nil (an
// external cluster: other instances may run the same side), else at once
// for as long as ctx lasts (the embedded server: this is the only
// instance).
func leaseRun(leases *bridge.Leases, log *slog.Logger, name string, work func(context.Context) error) func(context.Context) error {
	if leases == nil {
		return work
	}
	// A term that fails because NATS could not answer (a node restarting,
	// a leader being elected) ends; the lease goes back to the pool and
	// this instance campaigns again: the process stays.
	term := func(ctx context.Context) error {
		err := work(ctx)
		if err != nil && bridge.IsUnavailable(err) {
			log.Warn("side stopped: NATS did not answer in time; standing by", "lease", name, "err", err)
			return nil
		}
		return err
	}
	return func(ctx context.Context) error { return leases.Run(ctx, name, term, nil) }
}
