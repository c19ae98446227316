package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// permanentError marks a command that can never succeed: it is logged and
// dropped instead of redelivered.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return permanentError{err} }

// drainTimeout bounds the delivery of presence received before shutdown.
const drainTimeout = 5 * time.Second

// Server is one set of subscriptions and durable consumers that deliver
// the bus's events to port methods. Make one with [ServeCore],
// [ServeXMPP] or [ServeMatrix] and run it with [Server.Run].
type Server struct {
	bus   *bridge.Bus
	log   *slog.Logger
	parts []func(ctx context.Context, ready func()) error
	ready chan struct{}
}

func newServer(bus *bridge.Bus, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{bus: bus, log: log, ready: make(chan struct{})}
}

// Ready is closed once every subscription and consumer is in place: what
// is published after that is delivered.
func (s *Server) Ready() <-chan struct{} { return s.ready }

type handler func(ctx context.Context, ev *bridge.Event) error

// presence delivers presence events of dir on net (all networks for
// NetworkUnknown) in order, from one goroutine. A handler error is logged:
// presence is state, the next value repairs it.
func (s *Server) presence(dir bridge.Direction, net mapping.Network, h handler) {
	s.parts = append(s.parts, func(ctx context.Context, ready func()) error {
		sub, err := s.bus.Subscribe(ctx, bridge.SubjectFilter(dir, net, bridge.KindPresence), func(ctx context.Context, ev *bridge.Event) {
			if err := h(ctx, ev); err != nil {
				s.log.Warn("presence not delivered", "network", ev.Origin, "err", err)
			}
		})
		if err != nil {
			return err
		}
		// A burst must queue, not be dropped as a slow consumer.
		_ = sub.SetPendingLimits(-1, 256<<20)
		closed := sub.StatusChanged(nats.SubscriptionClosed)
		if err := s.bus.Conn().Flush(); err != nil {
			_ = sub.Unsubscribe()
			return fmt.Errorf("transport: subscribe: %w", err)
		}
		ready()
		<-ctx.Done()
		// Drain delivers what was received before shutdown; wait for it so
		// that no handler runs after Run returns.
		if err := sub.Drain(); err != nil {
			_ = sub.Unsubscribe()
			return nil
		}
		select {
		case <-closed:
		case <-time.After(drainTimeout):
			_ = sub.Unsubscribe()
			s.log.Warn("presence subscription did not drain in time", "timeout", drainTimeout)
		}
		return nil
	})
}

// durable delivers events of kind through the durable consumer name.
func (s *Server) durable(name string, dir bridge.Direction, net mapping.Network, kind bridge.Kind, h handler) {
	s.parts = append(s.parts, func(ctx context.Context, ready func()) error {
		return s.bus.Consume(ctx, name, bridge.SubjectFilter(dir, net, kind), ready, func(ctx context.Context, ev *bridge.Event) error {
			err := h(ctx, ev)
			var perm permanentError
			if errors.As(err, &perm) {
				s.log.Error("dropping a command that cannot succeed", "consumer", name, "id", ev.ID, "err", err)
				return bridge.ErrDrop
			}
			return err
		})
	})
}

// Run starts every part and blocks until ctx ends and all of them have
// stopped. If one part cannot start, the others are stopped and its error
// returned.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var pending sync.WaitGroup
	pending.Add(len(s.parts))
	errs := make([]error, len(s.parts))
	for i, part := range s.parts {
		var once sync.Once
		ready := func() { once.Do(pending.Done) }
		wg.Go(func() {
			if errs[i] = part(ctx, ready); errs[i] != nil {
				cancel()
			}
			ready()
		})
	}
	wg.Go(func() {
		pending.Wait()
		if ctx.Err() == nil {
			close(s.ready)
		}
	})
	wg.Wait()
	return errors.Join(errs...)
}
