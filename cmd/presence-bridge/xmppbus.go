package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// xmppBus carries the XMPP side's ports over the bus, as the events the
// core consumes today. Temporary: bridge/transport replaces it.
type xmppBus struct {
	bus *bridge.Bus
	log *slog.Logger
}

var _ bridge.XMPPObserver = xmppBus{}

// xmppCommandsConsumer is the durable consumer of subscription commands;
// the name the component used before the ports, so that a deployment
// resumes where it stopped.
const xmppCommandsConsumer = "xmppside-subscriptions"

func (x xmppBus) XMPPPresence(ctx context.Context, r bridge.XMPPPresence) error {
	p := r.Presence
	return x.bus.Publish(ctx, bridge.In, &bridge.Event{Kind: bridge.KindPresence, Origin: mapping.NetworkXMPP, User: string(r.User), Presence: &p})
}

func (x xmppBus) XMPPSubscription(ctx context.Context, r bridge.XMPPSubscription) error {
	return x.bus.Publish(ctx, bridge.In, &bridge.Event{Kind: bridge.KindSubscription, Origin: mapping.NetworkXMPP, User: string(r.Contact), Peer: string(r.Puppet),
		Subscription: &bridge.SubscriptionPayload{Type: r.Type, Status: r.Status}})
}

func (x xmppBus) XMPPOptOut(ctx context.Context, r bridge.OptOut[mapping.BareJID]) error {
	return x.bus.Publish(ctx, bridge.In, &bridge.Event{Kind: bridge.KindOptOut, Origin: mapping.NetworkXMPP, User: string(r.User), OptOut: &bridge.OptOutPayload{Enabled: r.Enabled}})
}

// serve delivers the core's commands for the XMPP side to a until ctx ends.
func (x xmppBus) serve(ctx context.Context, a bridge.XMPPActor) error {
	sub, err := x.bus.Subscribe(ctx, bridge.SubjectFilter(bridge.Out, mapping.NetworkXMPP, bridge.KindPresence), func(ctx context.Context, ev *bridge.Event) {
		if ev.Origin != mapping.NetworkMatrix || ev.Presence == nil || ev.Peer != "" {
			return
		}
		cmd := bridge.PuppetPresence{Stamp: bridge.Stamp{ID: ev.ID, Seq: ev.Seq, ObservedAt: ev.ObservedAt}, User: mapping.UserID(ev.User), Presence: *ev.Presence}
		if err := a.ShowPuppet(ctx, cmd); err != nil {
			x.log.Warn("puppet presence not handed over", "err", err)
		}
	})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	for {
		err := x.bus.Consume(ctx, xmppCommandsConsumer, bridge.SubjectFilter(bridge.Out, mapping.NetworkXMPP, bridge.KindSubscription), func(ctx context.Context, ev *bridge.Event) error {
			if ev.Origin != mapping.NetworkMatrix || ev.Subscription == nil {
				return nil
			}
			return a.SendSubscription(ctx, bridge.PuppetSubscription{Stamp: bridge.Stamp{ID: ev.ID, Seq: ev.Seq, ObservedAt: ev.ObservedAt},
				Puppet: mapping.UserID(ev.User), Contact: mapping.BareJID(ev.Peer), Type: ev.Subscription.Type})
		})
		if ctx.Err() != nil {
			return nil
		}
		x.log.Error("subscription command consumer stopped; restarting", "err", err)
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}
