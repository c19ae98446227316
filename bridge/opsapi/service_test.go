package opsapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/bridge/core"
	"github.com/presence-bridge/presence-bridge/bridge/opsapi"
	"github.com/presence-bridge/presence-bridge/bridge/transport"
	"github.com/presence-bridge/presence-bridge/mapping"
)

var ns = mapping.Namespace{GhostPrefix: "_xmpp_", HomeserverDomain: "example.org", ComponentDomain: "matrix.example.org"}

// env is the real embedded bus with the service running on it.
type env struct {
	bus    *bridge.Bus
	client *opsapi.Client
	ctx    context.Context
}

func openBus(t *testing.T) *bridge.Bus {
	t.Helper()
	cfg := bridge.Default()
	cfg.Embedded.DataDir = t.TempDir()
	bus, err := bridge.Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	return bus
}

func start(t *testing.T, bus *bridge.Bus, opt opsapi.Options) *env {
	t.Helper()
	opt.Store, opt.Namespace = bus.Store(), ns
	if opt.Table == (mapping.Table{}) {
		opt.Table = mapping.DefaultTable()
	}
	svc, err := opsapi.New(bus.Conn(), opt)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case <-svc.Ready():
	case err := <-done:
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(rcancel)
	return &env{bus: bus, client: opsapi.NewClient(bus.Conn()), ctx: rctx}
}

func put(t *testing.T, bus *bridge.Bus, net mapping.Network, user string, p mapping.Presence) {
	t.Helper()
	if _, err := bus.Store().Presence.Put(t.Context(), bridge.PresenceKey(net, user), bridge.PresenceRecord{Presence: p, Seq: 1, UpdatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
}

func wantCode(t *testing.T, err error, sentinel *opsapi.Error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("got %v, want %s", err, sentinel.Code)
	}
}

func TestOpsGet(t *testing.T) {
	bus := openBus(t)
	e := start(t, bus, opsapi.Options{Permitted: func(_ mapping.Network, user string) bool { return !strings.HasSuffix(user, "@denied.example") }})
	put(t, bus, mapping.NetworkXMPP, "alice@xmpp.example", mapping.Presence{State: mapping.StateAway, Status: "lunch", Priority: 5})
	put(t, bus, mapping.NetworkMatrix, "@bob:example.org", mapping.Presence{State: mapping.StateAvailable, CurrentlyActive: true})
	put(t, bus, mapping.NetworkXMPP, "carol@xmpp.example", mapping.Presence{State: mapping.StateBusy, Status: "secret"})
	if _, err := bus.Store().Settings.Put(t.Context(), bridge.PresenceKey(mapping.NetworkXMPP, "carol@xmpp.example"), bridge.UserSettings{OptOut: true}); err != nil {
		t.Fatal(err)
	}
	puppet, _ := ns.PuppetJID("@bob:example.org")
	ghost, _ := ns.GhostMXID("alice@xmpp.example")
	r, err := e.client.Get(e.ctx, "alice@xmpp.example", "@bob:example.org", string(puppet), string(ghost), "carol@xmpp.example", "nobody@xmpp.example", "eve@denied.example")
	if err != nil {
		t.Fatal(err)
	}
	ps := r.Presences
	if len(ps) != 7 {
		t.Fatalf("%d answers, want 7", len(ps))
	}
	a := ps[0]
	if a.Network != mapping.NetworkXMPP || a.State != mapping.StateAway || a.Type != 3 || a.Status != "lunch" || len(a.Resources) != 1 || a.Resources[0].Priority != 5 || a.ObservedAt.IsZero() {
		t.Errorf("alice: %+v", a)
	}
	if b := ps[1]; b.Network != mapping.NetworkMatrix || b.State != mapping.StateAvailable || !b.CurrentlyActive || b.Type != 2 {
		t.Errorf("bob: %+v", b)
	}
	if p := ps[2]; p.Resolved != "@bob:example.org" || p.State != mapping.StateAvailable {
		t.Errorf("bob's puppet: %+v", p)
	}
	if g := ps[3]; g.Resolved != "alice@xmpp.example" || g.State != mapping.StateAway {
		t.Errorf("alice's ghost: %+v", g)
	}
	if c := ps[4]; !c.OptedOut || c.State != mapping.StateUnset || c.Status != "" {
		t.Errorf("opted-out carol leaks: %+v", c)
	}
	if n := ps[5]; n.Error != opsapi.CodeNotAvailable {
		t.Errorf("unknown user: %+v", n)
	}
	if d := ps[6]; d.Error != opsapi.CodePermissionDenied || d.State != mapping.StateUnset {
		t.Errorf("denied user: %+v", d)
	}
}

func TestOpsErrors(t *testing.T) {
	e := start(t, openBus(t), opsapi.Options{})
	nc := e.bus.Conn()
	raw := func(subject, body string) error {
		msg, err := nc.RequestWithContext(e.ctx, subject, []byte(body))
		if err != nil {
			return err
		}
		if c := msg.Header.Get("Nats-Service-Error-Code"); c != "" {
			return &opsapi.Error{Code: opsapi.Code(c), Description: msg.Header.Get("Nats-Service-Error")}
		}
		return nil
	}
	for _, tc := range []struct {
		name, subject, body string
		want                *opsapi.Error
	}{
		{"bad handle", opsapi.SubjectGet, `{"users":["not a jid"]}`, opsapi.ErrInvalidHandle},
		{"bad mxid", opsapi.SubjectGet, `{"users":["alice@xmpp.example","@nocolon"]}`, opsapi.ErrInvalidHandle},
		{"malformed json", opsapi.SubjectGet, `{"users":`, opsapi.ErrInvalidArgument},
		{"unknown field", opsapi.SubjectGet, `{"user":["a@b.c"]}`, opsapi.ErrInvalidArgument},
		{"no users", opsapi.SubjectGet, `{"users":[]}`, opsapi.ErrInvalidArgument},
		{"too many users", opsapi.SubjectGet, `{"users":[` + strings.Repeat(`"a@b.c",`, opsapi.MaxUsers) + `"a@b.c"]}`, opsapi.ErrInvalidArgument},
		{"oversized", opsapi.SubjectGet, `{"users":["` + strings.Repeat("a", opsapi.MaxRequestBytes) + `@b.c"]}`, opsapi.ErrInvalidArgument},
		{"subscriptions: no user", opsapi.SubjectSubscriptions, `{}`, opsapi.ErrInvalidArgument},
		{"subscriptions: unknown", opsapi.SubjectSubscriptions, `{"user":"nobody@xmpp.example"}`, opsapi.ErrNotAvailable},
		{"subscriptions: bad handle", opsapi.SubjectSubscriptions, `{"user":"@x"}`, opsapi.ErrInvalidHandle},
		{"request: no requester", opsapi.SubjectRequest, `{"users":["a@b.example"]}`, opsapi.ErrDisconnected},
		{"request: too many users", opsapi.SubjectRequest, `{"users":[` + strings.Repeat(`"a@b.c",`, opsapi.MaxRequestUsers) + `"a@b.c"]}`, opsapi.ErrInvalidArgument},
		{"request: bad handle", opsapi.SubjectRequest, `{"users":["@bad"]}`, opsapi.ErrInvalidHandle},
		{"statuses: malformed", opsapi.SubjectStatuses, `[1,2`, opsapi.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, raw(tc.subject, tc.body), tc.want) })
	}
	// The service still serves after all that.
	if _, err := e.client.Statuses(e.ctx); err != nil {
		t.Fatal(err)
	}
}

func TestOpsNoBridge(t *testing.T) {
	bus := openBus(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := opsapi.NewClient(bus.Conn()).Get(ctx, "a@b.example"); !errors.Is(err, opsapi.ErrNoBridge) {
		t.Fatalf("got %v, want ErrNoBridge", err)
	}
}

func TestOpsStatuses(t *testing.T) {
	for _, busy := range []bool{false, true} {
		bus := openBus(t)
		tab := mapping.DefaultTable()
		if err := tab.Override(map[string]string{"xa": "offline"}, nil); err != nil {
			t.Fatal(err)
		}
		e := start(t, bus, opsapi.Options{Table: tab, Busy: busy})
		r, err := e.client.Statuses(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, ok := r.Statuses["busy"]
		if ok != busy || busy && (b.Type != 6 || b.Matrix != mapping.MatrixBusy.String() || b.XMPP != "dnd") {
			t.Errorf("busy=%v: busy status %+v present=%v", busy, b, ok)
		}
		if xa := r.Statuses["xa"]; xa.Matrix != "offline" || xa.Type != 4 || xa.Parameters["message"] != "s" || !xa.MaySetOnSelf {
			t.Errorf("xa with the table override: %+v", xa)
		}
		if av := r.Statuses["available"]; av.Matrix != "online" || av.TypeName != "available" {
			t.Errorf("available: %+v", av)
		}
	}
}

// requester is a side's PresenceRequester.
type requester struct {
	mu  sync.Mutex
	got []bridge.PresenceRequest
	err error
}

func (r *requester) RequestPresence(_ context.Context, q bridge.PresenceRequest) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, q)
	return r.err
}

func TestOpsRequest(t *testing.T) {
	bus := openBus(t)
	pub := transport.NewPublisher(bus)
	e := start(t, bus, opsapi.Options{Requester: pub})
	// No side serving: Disconnected.
	_, err := e.client.Request(e.ctx, "alice@xmpp.example")
	wantCode(t, err, opsapi.ErrDisconnected)

	xr, mr := &requester{}, &requester{err: bridge.ErrNoRoute}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for net, rq := range map[mapping.Network]*requester{mapping.NetworkXMPP: xr, mapping.NetworkMatrix: mr} {
		srv := transport.ServeRequests(bus, net, rq, slog.New(slog.DiscardHandler))
		wg.Go(func() { _ = srv.Run(ctx) })
		<-srv.Ready()
	}
	defer func() { cancel(); wg.Wait() }()
	ghost, _ := ns.GhostMXID("alice@xmpp.example")
	r, err := e.client.Request(e.ctx, "alice@xmpp.example", string(ghost), "@bob:example.org")
	if err != nil {
		t.Fatal(err)
	}
	if r.Results[0].Error != "" || r.Results[1].Error != "" || r.Results[2].Error != opsapi.CodeNotAvailable {
		t.Errorf("results: %+v", r.Results)
	}
	xr.mu.Lock()
	defer xr.mu.Unlock()
	if len(xr.got) != 2 || xr.got[1].User != "alice@xmpp.example" || xr.got[1].Network != mapping.NetworkXMPP {
		t.Errorf("the XMPP side was asked %+v", xr.got)
	}
}

func TestOpsSubscriptions(t *testing.T) {
	bus := openBus(t)
	e := start(t, bus, opsapi.Options{})
	st := bus.Store()
	ctx := t.Context()
	mustPut := func(_ uint64, err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	mustPut(st.Subscriptions.Put(ctx, bridge.PairKey("@bob:example.org", "alice@xmpp.example"), bridge.Subscription{To: true, From: true}))
	mustPut(st.Subscriptions.Put(ctx, bridge.PairKey("@bob:example.org", "dave@xmpp.example"), bridge.Subscription{PendingIn: true}))
	mustPut(st.Subscriptions.Put(ctx, bridge.PairKey("@zed:example.org", "alice@xmpp.example"), bridge.Subscription{From: true}))
	mustPut(st.Links.Put(ctx, bridge.PairKey("@bob:example.org", "alice@xmpp.example"), bridge.Link{MatrixUser: "@bob:example.org", XMPPUser: "alice@xmpp.example", State: bridge.LinkApproved, RoomID: "!r:example.org"}))

	r, err := e.client.Subscriptions(e.ctx, "@bob:example.org")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Subscriptions) != 2 || r.Subscriptions[0].State != "both" || r.Subscriptions[1].State != "none" || !r.Subscriptions[1].PendingIn || len(r.Links) != 1 || r.Links[0].State != bridge.LinkApproved {
		t.Errorf("bob: %+v", r)
	}
	r, err = e.client.Subscriptions(e.ctx, "alice@xmpp.example")
	if err != nil {
		t.Fatal(err)
	}
	if r.Network != mapping.NetworkXMPP || len(r.Subscriptions) != 2 || r.Subscriptions[1].State != "from" || len(r.Links) != 1 {
		t.Errorf("alice: %+v", r)
	}
}

type nopActor struct{}

func (nopActor) ShowPuppet(context.Context, bridge.PuppetPresence) error           { return nil }
func (nopActor) SendSubscription(context.Context, bridge.PuppetSubscription) error { return nil }
func (nopActor) ShowGhost(context.Context, bridge.GhostPresence) error             { return nil }
func (nopActor) GhostMembership(context.Context, bridge.GhostMembership) error     { return nil }

// TestOpsUpdates: the core's changes reach a watcher, opted-out ones
// without presence.
func TestOpsUpdates(t *testing.T) {
	bus := openBus(t)
	// The core carries only people who hold a link.
	for _, jid := range []mapping.BareJID{"alice@xmpp.example", "carol@xmpp.example"} {
		if _, err := bus.Store().Links.Put(context.Background(), bridge.PairKey("@bob:example.org", string(jid)),
			bridge.Link{MatrixUser: "@bob:example.org", XMPPUser: jid, State: bridge.LinkApproved, UpdatedAt: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := core.New(core.Default(), ns, bus.Store(), nopActor{}, nopActor{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetWatcher(opsapi.NewUpdates(bus.Conn(), nil))
	ctx, cancel := context.WithCancel(context.Background())
	coreDone := make(chan error, 1)
	go func() { coreDone <- c.Run(ctx) }()
	defer func() { cancel(); <-coreDone }()
	<-c.Ready()

	got := make(chan opsapi.Update, 10)
	wctx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan error, 1)
	watching := make(chan struct{})
	go func() {
		close(watching)
		watchDone <- opsapi.NewClient(bus.Conn()).Watch(wctx, []string{opsapi.WatchSubject("alice@xmpp.example"), opsapi.WatchSubject("carol@xmpp.example")}, nil, func(u opsapi.Update) { got <- u })
	}()
	defer func() { stopWatch(); <-watchDone }()
	<-watching
	// The watcher's subscription may not be in place yet: repeat until seen.
	deadline := time.After(10 * time.Second)
	var seq uint64 = 1
	for seen := false; !seen; {
		seq++
		_ = c.XMPPPresence(ctx, bridge.XMPPPresence{Stamp: bridge.Stamp{Seq: seq}, User: "alice@xmpp.example", Presence: mapping.Presence{State: mapping.StateAway, Status: "lunch"}})
		select {
		case u := <-got:
			if u.User != "alice@xmpp.example" || u.Presence == nil || u.Presence.State != mapping.StateAway {
				t.Fatalf("update %+v", u)
			}
			if !strings.Contains(u.String(), "xmpp alice@xmpp.example away \"lunch\"") {
				t.Errorf("line %q", u.String())
			}
			seen = true
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatal("no update")
		}
	}
	// Carol opts out: watchers hear it at once, then never her presence.
	if err := c.XMPPOptOut(ctx, bridge.OptOut[mapping.BareJID]{User: "carol@xmpp.example", Enabled: true}); err != nil {
		t.Fatal(err)
	}
	_ = c.XMPPPresence(ctx, bridge.XMPPPresence{Stamp: bridge.Stamp{Seq: 1}, User: "carol@xmpp.example", Presence: mapping.Presence{State: mapping.StateBusy, Status: "secret"}})
	for carol := 0; carol < 2; {
		select {
		case u := <-got:
			if u.User != "carol@xmpp.example" {
				continue
			}
			if !u.OptedOut || u.Presence != nil || strings.Contains(u.String(), "secret") {
				t.Fatalf("opted-out update leaks: %+v", u)
			}
			carol++
		case <-deadline:
			t.Fatal("not both updates for carol")
		}
	}
}

// TestOpsGetOptedOutFromCore: with the core's opt-outs given, they decide.
func TestOpsGetOptedOutFromCore(t *testing.T) {
	bus := openBus(t)
	e := start(t, bus, opsapi.Options{OptedOut: func(_ mapping.Network, user string) bool { return user == "dave@xmpp.example" }})
	put(t, bus, mapping.NetworkXMPP, "dave@xmpp.example", mapping.Presence{State: mapping.StateAway, Status: "private"})
	r, err := e.client.Get(e.ctx, "dave@xmpp.example")
	if err != nil {
		t.Fatal(err)
	}
	if p := r.Presences[0]; !p.OptedOut || p.Status != "" || p.State != mapping.StateUnset {
		t.Fatalf("dave: %+v", p)
	}
}

// TestOpsMicroDiscovery: nats micro ls/info find the service and its four
// endpoints; a request over NATS's own payload limit fails at the client
// and the service keeps serving.
func TestOpsMicroDiscovery(t *testing.T) {
	e := start(t, openBus(t), opsapi.Options{Version: "dev"})
	msg, err := e.bus.Conn().RequestWithContext(e.ctx, "$SRV.INFO."+opsapi.ServiceName, nil)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Name      string `json:"name"`
		Endpoints []struct {
			Name    string `json:"name"`
			Subject string `json:"subject"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	subjects := map[string]string{}
	for _, ep := range info.Endpoints {
		subjects[ep.Name] = ep.Subject
	}
	if info.Name != opsapi.ServiceName || subjects["get"] != opsapi.SubjectGet || subjects["statuses"] != opsapi.SubjectStatuses ||
		subjects["request"] != opsapi.SubjectRequest || subjects["subscriptions"] != opsapi.SubjectSubscriptions {
		t.Errorf("info: %s", msg.Data)
	}
	huge := make([]string, 0, 50_000)
	for range 50_000 {
		huge = append(huge, "someone-with-a-long-name@xmpp.example")
	}
	if _, err := e.client.Get(e.ctx, huge...); err == nil {
		t.Error("a request over the NATS payload limit succeeded")
	}
	if _, err := e.client.Statuses(e.ctx); err != nil {
		t.Fatalf("the service stopped serving: %v", err)
	}
}

type lister map[mapping.BareJID][]mapping.Resource

func (l lister) XMPPResources(_ context.Context, users []mapping.BareJID) (map[mapping.BareJID][]mapping.Resource, error) {
	out := map[mapping.BareJID][]mapping.Resource{}
	for _, u := range users {
		if r, ok := l[u]; ok {
			out[u] = r
		}
	}
	return out, nil
}

// TestOpsGetResources: the XMPP side's resources, through the bus, replace
// the aggregate; without an XMPP side, the aggregate stays.
func TestOpsGetResources(t *testing.T) {
	bus := openBus(t)
	e := start(t, bus, opsapi.Options{Resources: transport.NewPublisher(bus)})
	put(t, bus, mapping.NetworkXMPP, "alice@xmpp.example", mapping.Presence{State: mapping.StateAvailable, Priority: 5})
	r, err := e.client.Get(e.ctx, "alice@xmpp.example")
	if err != nil {
		t.Fatal(err)
	}
	if rs := r.Presences[0].Resources; len(rs) != 1 || !rs[0].Aggregate || rs[0].Priority != 5 {
		t.Fatalf("without an XMPP side: %+v", rs)
	}
	srv := transport.ServeResources(bus, lister{"alice@xmpp.example": {
		{Name: "desk", Presence: mapping.Presence{State: mapping.StateAvailable, Priority: 5}},
		{Name: "phone", Presence: mapping.Presence{State: mapping.StateAway, Priority: -1, Status: "on the go"}},
	}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-srv.Ready()
	r, err = e.client.Get(e.ctx, "alice@xmpp.example")
	if err != nil {
		t.Fatal(err)
	}
	rs := r.Presences[0].Resources
	if len(rs) != 2 || rs[0].Name != "desk" || rs[0].Priority != 5 || rs[1].Name != "phone" || rs[1].Priority != -1 || rs[1].State != mapping.StateAway || rs[1].Status != "on the go" || rs[0].Aggregate {
		t.Fatalf("with the XMPP side: %+v", rs)
	}
}
