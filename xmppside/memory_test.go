package xmppside

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// rss returns the process's resident set size in bytes (Linux), or 0.
func rss() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// BenchmarkMemoryPerPair: memory per tracked (puppet, contact) pair with
// 100k pairs (1000 puppets × 100 contacts), counting both the component's
// in-memory copy and the embedded JetStream KV bucket that persists them,
// since both live in the bridge process (target ≤ 1 KiB per pair).
func BenchmarkMemoryPerPair(b *testing.B) {
	const puppets, perPuppet = 1000, 100
	const pairs = puppets * perPuppet
	for b.Loop() {
		store := openTestStore(b)
		ctx := context.Background()
		heap0, rss0 := heapInUse(), rss()
		now := time.Now().UTC()
		for p := range puppets {
			for c := range perPuppet {
				key := bridge.PairKey(fmt.Sprintf("@user%d:example.org", p), fmt.Sprintf("contact%d@xmpp%d.example", c, p%50))
				if _, err := store.Subscriptions.Put(ctx, key, bridge.Subscription{To: true, From: true, UpdatedAt: now}); err != nil {
					b.Fatal(err)
				}
			}
		}
		cs := newContacts()
		if _, err := cs.load(ctx, store.Subscriptions, func(string, error) {}); err != nil {
			b.Fatal(err)
		}
		heap1, rss1 := heapInUse(), rss()
		runtime.KeepAlive(cs)
		b.ReportMetric(float64(heap1-heap0)/pairs, "heap-B/pair")
		b.ReportMetric(float64(rss1-rss0)/pairs, "rss-B/pair")
	}
}
