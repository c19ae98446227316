package xmppside

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"testing"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// repeatReader is an endless component stream that repeats its stanzas.
type repeatReader struct {
	head  []byte
	body  [][]byte
	i, at int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if len(r.head) > 0 {
		n := copy(p, r.head)
		r.head = r.head[n:]
		return n, nil
	}
	cur := r.body[r.i]
	n := copy(p, cur[r.at:])
	r.at += n
	if r.at == len(cur) {
		r.i, r.at = (r.i+1)%len(r.body), 0
	}
	return n, nil
}

// BenchmarkInboundPresence: raw presence XML from the stream to a report
// to the core: decode, sender checks, per-resource aggregation, report (to
// an in-memory observer). The show alternates so that every stanza changes
// the aggregate and is reported (none is suppressed as a repeat).
func BenchmarkInboundPresence(b *testing.B) {
	c, obs := newTestComponent(b)
	ctx := context.Background()
	puppet := puppetOf(b, c, bob)
	c.subs.set(bob, "alice@example.com", bridge.Subscription{To: true, From: true}) // only contacts are heard
	var body [][]byte
	for _, show := range []string{"away", "dnd"} {
		body = append(body, fmt.Appendf(nil, `<presence from='alice@example.com/phone' to='%s' id='p1'><show>%s</show>`+
			`<status>out for lunch</status><priority>5</priority><idle xmlns='urn:xmpp:idle:1' since='2024-01-02T03:04:05Z'/></presence>`, puppet, show))
	}
	d := xml.NewDecoder(&repeatReader{head: []byte(`<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>`), body: body})
	if _, err := d.Token(); err != nil {
		b.Fatal(err)
	}
	w := xml.NewEncoder(io.Discard)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok, err := d.Token()
		if err != nil {
			b.Fatal(err)
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			b.Fatalf("token %T", tok)
		}
		c.handle(ctx, d, w, start)
	}
	b.StopTimer()
	if n := obs.reports(); n < b.N {
		b.Fatalf("%d reports for %d stanzas", n, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "stanzas/s")
}

// BenchmarkFanOut10k: one presence change of a puppet with 10,000 From
// contacts, encoded as 10,000 stanzas to a discarding writer.
func BenchmarkFanOut10k(b *testing.B) {
	const contacts = 10000
	c, _ := newTestComponent(b)
	for i := 0; i < contacts; i++ {
		c.subs.set(bob, mapping.BareJID(fmt.Sprintf("user%d@example.com", i)), bridge.Subscription{From: true, To: i%2 == 0})
	}
	puppet, err := c.ns.PuppetJID(bob)
	if err != nil {
		b.Fatal(err)
	}
	presence := mapping.Presence{State: mapping.StateAway, Status: "in a meeting until 3"}
	w := xml.NewEncoder(io.Discard)
	var to []mapping.BareJID
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := c.outPresence(puppet, presence)
		to = c.subs.from(to[:0], bob)
		n, err := c.fanOut(w, &p, to)
		if err != nil || n != contacts {
			b.Fatalf("fan-out: %d, %v", n, err)
		}
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)*contacts/b.Elapsed().Seconds(), "stanzas/s")
}
