// Package metrics serves the bridge's Prometheus metrics and health
// checks on one HTTP listener (the "metrics" section of config.yaml):
//
//	/metrics   Prometheus text format (client_golang)
//	/healthz   200 while the process serves HTTP
//	/readyz    200 when NATS, the XMPP stream and the homeserver are all
//	           reachable; else 503, and the body names each one that is not
//
// Where the numbers come from, without reaching into the sides: events
// are counted by a passive subscription to the bus (every report and
// command crosses it, so "in" per side and kind and "out" per side and
// kind are exact); the end-to-end histogram is the time from a side's
// observation (the report's ObservedAt, which the core passes on in its
// command) to the delivery on the other network, which the other side
// reports through [bridge.DeliveryReporter] ([Metrics.Delivered]); drops
// and opt-outs come from the core's watcher hooks, coalescing from the
// core's counter, subscriptions and links from the state buckets (read
// at most every 15 s), the XMPP stream and homeserver from the sides' small
// [bridge.Health] methods, homeserver requests from a timing
// RoundTripper the Matrix side installs ([Metrics.ObserveHomeserverRequest]). No metric has a user identifier as a label.
//
// Every metric and what to do about it: docs/operations.md.
package metrics
