package mapping

import (
	"testing"
	"time"
)

// BenchmarkTranslateXMPPToMatrix is the hot path of every XMPP presence.
func BenchmarkTranslateXMPPToMatrix(b *testing.B) {
	tr := NewTranslator(DefaultTable(), false)
	in := XMPPPresence{Show: ShowDND, Status: "in a meeting", Priority: 5, IdleSince: now.Add(-time.Minute)}
	b.ReportAllocs()
	var sink MatrixState
	for b.Loop() {
		sink = tr.ToMatrix(tr.FromXMPP(in), now)
	}
	_ = sink
}

// BenchmarkTranslateMatrixToXMPP is the hot path of every Matrix presence.
func BenchmarkTranslateMatrixToXMPP(b *testing.B) {
	tr := NewTranslator(DefaultTable(), true)
	in := MatrixState{Presence: MatrixUnavailable, StatusMsg: "lunch", HasLastActive: true, LastActiveAgo: time.Minute}
	b.ReportAllocs()
	var sink XMPPPresence
	for b.Loop() {
		sink = tr.ToXMPP(tr.FromMatrix(in, now))
	}
	_ = sink
}

func BenchmarkGhostMXID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := testNS.GhostMXID("alice@example.com"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseGhostMXID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := testNS.ParseGhostMXID("@_xmpp_alice=40example.com:example.org"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPuppetJID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := testNS.PuppetJID("@bob:example.org"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParsePuppetJID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := testNS.ParsePuppetJID(`bob\40example.org@matrix.example.net`); err != nil {
			b.Fatal(err)
		}
	}
}
