package xmppside

import (
	"testing"

	"github.com/presence-bridge/presence-bridge/bridge"
)

// The nine legal states of RFC 6121 Appendix A.1, by their names there.
var (
	sNone      = bridge.Subscription{}
	sNonePO    = bridge.Subscription{PendingOut: true}
	sNonePI    = bridge.Subscription{PendingIn: true}
	sNonePOPI  = bridge.Subscription{PendingOut: true, PendingIn: true}
	sTo        = bridge.Subscription{To: true}
	sToPI      = bridge.Subscription{To: true, PendingIn: true}
	sFrom      = bridge.Subscription{From: true}
	sFromPO    = bridge.Subscription{From: true, PendingOut: true}
	sBoth      = bridge.Subscription{To: true, From: true}
	nineStates = []bridge.Subscription{sNone, sNonePO, sNonePI, sNonePOPI, sTo, sToPI, sFrom, sFromPO, sBoth}
)

type transition struct {
	from bridge.Subscription
	typ  bridge.SubscriptionType
	to   bridge.Subscription
	flag bool // deliver (inbound) or send (outbound)
}

// inboundTable is RFC 6121 A.2.1-A.2.4, row by row: (state, stanza) →
// (delivered?, new state). "no state change" rows repeat the state.
var inboundTable = []transition{
	// A.2.1 subscribe
	{sNone, bridge.Subscribe, sNonePI, true},
	{sNonePO, bridge.Subscribe, sNonePOPI, true},
	{sNonePI, bridge.Subscribe, sNonePI, false},
	{sNonePOPI, bridge.Subscribe, sNonePOPI, false},
	{sTo, bridge.Subscribe, sToPI, true},
	{sToPI, bridge.Subscribe, sToPI, false},
	{sFrom, bridge.Subscribe, sFrom, false},
	{sFromPO, bridge.Subscribe, sFromPO, false},
	{sBoth, bridge.Subscribe, sBoth, false},
	// A.2.2 unsubscribe
	{sNone, bridge.Unsubscribe, sNone, false},
	{sNonePO, bridge.Unsubscribe, sNonePO, false},
	{sNonePI, bridge.Unsubscribe, sNone, true},
	{sNonePOPI, bridge.Unsubscribe, sNonePO, true},
	{sTo, bridge.Unsubscribe, sTo, false},
	{sToPI, bridge.Unsubscribe, sTo, true},
	{sFrom, bridge.Unsubscribe, sNone, true},
	{sFromPO, bridge.Unsubscribe, sNonePO, true},
	{sBoth, bridge.Unsubscribe, sTo, true},
	// A.2.3 subscribed
	{sNone, bridge.Subscribed, sNone, false},
	{sNonePO, bridge.Subscribed, sTo, true},
	{sNonePI, bridge.Subscribed, sNonePI, false},
	{sNonePOPI, bridge.Subscribed, sToPI, true},
	{sTo, bridge.Subscribed, sTo, false},
	{sToPI, bridge.Subscribed, sToPI, false},
	{sFrom, bridge.Subscribed, sFrom, false},
	{sFromPO, bridge.Subscribed, sBoth, true},
	{sBoth, bridge.Subscribed, sBoth, false},
	// A.2.4 unsubscribed
	{sNone, bridge.Unsubscribed, sNone, false},
	{sNonePO, bridge.Unsubscribed, sNone, true},
	{sNonePI, bridge.Unsubscribed, sNonePI, false},
	{sNonePOPI, bridge.Unsubscribed, sNonePI, true},
	{sTo, bridge.Unsubscribed, sNone, true},
	{sToPI, bridge.Unsubscribed, sNonePI, true},
	{sFrom, bridge.Unsubscribed, sFrom, false},
	{sFromPO, bridge.Unsubscribed, sFrom, true},
	{sBoth, bridge.Unsubscribed, sFrom, true},
}

// outboundTable is RFC 6121 A.3.1-A.3.4. The send column is ours: requests
// (subscribe, unsubscribe) always go out; answers only when they change
// something.
var outboundTable = []transition{
	// A.3.1 subscribe
	{sNone, bridge.Subscribe, sNonePO, true},
	{sNonePO, bridge.Subscribe, sNonePO, true},
	{sNonePI, bridge.Subscribe, sNonePOPI, true},
	{sNonePOPI, bridge.Subscribe, sNonePOPI, true},
	{sTo, bridge.Subscribe, sTo, true},
	{sToPI, bridge.Subscribe, sToPI, true},
	{sFrom, bridge.Subscribe, sFromPO, true},
	{sFromPO, bridge.Subscribe, sFromPO, true},
	{sBoth, bridge.Subscribe, sBoth, true},
	// A.3.2 unsubscribe
	{sNone, bridge.Unsubscribe, sNone, true},
	{sNonePO, bridge.Unsubscribe, sNone, true},
	{sNonePI, bridge.Unsubscribe, sNonePI, true},
	{sNonePOPI, bridge.Unsubscribe, sNonePI, true},
	{sTo, bridge.Unsubscribe, sNone, true},
	{sToPI, bridge.Unsubscribe, sNonePI, true},
	{sFrom, bridge.Unsubscribe, sFrom, true},
	{sFromPO, bridge.Unsubscribe, sFrom, true},
	{sBoth, bridge.Unsubscribe, sFrom, true},
	// A.3.3 subscribed
	{sNone, bridge.Subscribed, sNone, false},
	{sNonePO, bridge.Subscribed, sNonePO, false},
	{sNonePI, bridge.Subscribed, sFrom, true},
	{sNonePOPI, bridge.Subscribed, sFromPO, true},
	{sTo, bridge.Subscribed, sTo, false},
	{sToPI, bridge.Subscribed, sBoth, true},
	{sFrom, bridge.Subscribed, sFrom, false},
	{sFromPO, bridge.Subscribed, sFromPO, false},
	{sBoth, bridge.Subscribed, sBoth, false},
	// A.3.4 unsubscribed
	{sNone, bridge.Unsubscribed, sNone, false},
	{sNonePO, bridge.Unsubscribed, sNonePO, false},
	{sNonePI, bridge.Unsubscribed, sNone, true},
	{sNonePOPI, bridge.Unsubscribed, sNonePO, true},
	{sTo, bridge.Unsubscribed, sTo, false},
	{sToPI, bridge.Unsubscribed, sTo, true},
	{sFrom, bridge.Unsubscribed, sNone, true},
	{sFromPO, bridge.Unsubscribed, sNonePO, true},
	{sBoth, bridge.Unsubscribed, sTo, true},
}

func TestTransitionTablesComplete(t *testing.T) {
	for name, table := range map[string][]transition{"inbound": inboundTable, "outbound": outboundTable} {
		seen := map[string]bool{}
		for _, tr := range table {
			seen[StateName(tr.from)+"/"+string(tr.typ)] = true
		}
		if len(seen) != 36 || len(table) != 36 {
			t.Errorf("%s table covers %d of 36 (state, type) pairs", name, len(seen))
		}
	}
}

func TestInbound(t *testing.T) {
	for _, tr := range inboundTable {
		t.Run(StateName(tr.from)+"/"+string(tr.typ), func(t *testing.T) {
			got, deliver := Inbound(tr.from, tr.typ)
			if !SameState(got, tr.to) || deliver != tr.flag {
				t.Errorf("Inbound(%s, %s) = %s, deliver %v; want %s, %v", StateName(tr.from), tr.typ, StateName(got), deliver, StateName(tr.to), tr.flag)
			}
			if !legal(got) {
				t.Errorf("illegal result %+v", got)
			}
		})
	}
}

func TestOutbound(t *testing.T) {
	for _, tr := range outboundTable {
		t.Run(StateName(tr.from)+"/"+string(tr.typ), func(t *testing.T) {
			got, send := Outbound(tr.from, tr.typ)
			if !SameState(got, tr.to) || send != tr.flag {
				t.Errorf("Outbound(%s, %s) = %s, send %v; want %s, %v", StateName(tr.from), tr.typ, StateName(got), send, StateName(tr.to), tr.flag)
			}
		})
	}
}

// TestInboundIdempotent: the server re-sends subscribe at every login; a
// second identical stanza never changes the state again.
func TestInboundIdempotent(t *testing.T) {
	for _, s := range nineStates {
		for _, typ := range []bridge.SubscriptionType{bridge.Subscribe, bridge.Subscribed, bridge.Unsubscribe, bridge.Unsubscribed} {
			once, _ := Inbound(s, typ)
			twice, deliver := Inbound(once, typ)
			if !SameState(once, twice) || deliver {
				t.Errorf("%s then %s twice: %s → %s (deliver %v)", StateName(s), typ, StateName(once), StateName(twice), deliver)
			}
		}
	}
}

func TestNormalizeIllegal(t *testing.T) {
	for i := 0; i < 16; i++ {
		s := bridge.Subscription{To: i&1 != 0, From: i&2 != 0, PendingOut: i&4 != 0, PendingIn: i&8 != 0}
		if n := Normalize(s); !legal(n) {
			t.Errorf("Normalize(%+v) = %+v, illegal", s, n)
		}
	}
}

func legal(s bridge.Subscription) bool { return !(s.To && s.PendingOut) && !(s.From && s.PendingIn) }
