package opsapi

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/presence-bridge/presence-bridge/bridge"
	"github.com/presence-bridge/presence-bridge/mapping"
)

// Options configure a [Service].
type Options struct {
	// Store holds the buckets the service reads (never writes).
	Store *bridge.Store
	// Namespace resolves puppets and ghosts to the people they stand for.
	Namespace mapping.Namespace
	// Table and Busy are the live presence mapping (Busy: the homeserver
	// has MSC3026), for statuses.
	Table mapping.Table
	Busy  bool
	// Requester, if set, carries request to the sides (the transport's
	// publisher); without it request answers Disconnected.
	Requester bridge.PresenceRequester
	// Permitted, if set, says whether the bridge carries a user (the
	// core's access lists); a user it refuses is PermissionDenied.
	Permitted func(net mapping.Network, user string) bool
	// Resources, if set, lists the XMPP resources the XMPP side holds
	// (the transport's publisher); without it, or when it fails, get
	// reports the aggregate's priority alone.
	Resources bridge.ResourceLister
	// OptedOut, if set, says whether a person opted out (the core's exact
	// copy of pb_settings); without it the bucket is read per user.
	OptedOut func(net mapping.Network, user string) bool
	// Version is reported by nats micro info.
	Version string
	Log     *slog.Logger
}

// Service is the presence service. Create it with [New], run it with
// [Service.Run].
type Service struct {
	nc    *nats.Conn
	opt   Options
	log   *slog.Logger
	ready chan struct{}
}

// New returns a service that answers on nc once running.
func New(nc *nats.Conn, opt Options) (*Service, error) {
	if nc == nil || opt.Store == nil {
		return nil, errors.New("opsapi: a NATS connection and the store are required")
	}
	if err := opt.Namespace.Validate(); err != nil {
		return nil, fmt.Errorf("opsapi: namespace: %w", err)
	}
	if opt.Version == "" {
		opt.Version = "0.0.0"
	}
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{nc: nc, opt: opt, log: log, ready: make(chan struct{})}, nil
}

// Ready is closed once every endpoint answers.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Run serves until ctx ends, then stops the service (draining the
// endpoints) and returns.
func (s *Service) Run(ctx context.Context) error {
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        ServiceName,
		Version:     semver(s.opt.Version),
		Description: "presence of the users of an XMPP–Matrix bridge (operators only)",
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			s.log.Warn("presence service error", "subject", e.Subject, "err", e.Description)
		},
	})
	if err != nil {
		return fmt.Errorf("opsapi: add service: %w", err)
	}
	defer func() { _ = svc.Stop() }()
	for _, ep := range []struct {
		name, subject string
		h             func(ctx context.Context, data []byte) (any, error)
	}{
		{"get", SubjectGet, s.get},
		{"statuses", SubjectStatuses, s.statuses},
		{"request", SubjectRequest, s.request},
		{"subscriptions", SubjectSubscriptions, s.subscriptions},
	} {
		h := ep.h
		err := svc.AddEndpoint(ep.name, micro.ContextHandler(ctx, func(ctx context.Context, r micro.Request) {
			s.serve(ctx, r, h)
		}), micro.WithEndpointSubject(ep.subject))
		if err != nil {
			return fmt.Errorf("opsapi: endpoint %s: %w", ep.name, err)
		}
	}
	if err := s.nc.Flush(); err != nil {
		return fmt.Errorf("opsapi: %w", err)
	}
	close(s.ready)
	s.log.Info("presence service running", "subjects", "pb.ops.>")
	<-ctx.Done()
	return nil
}

// semver makes a version micro accepts ("dev" is not SemVer).
func semver(v string) string {
	v = strings.TrimPrefix(v, "v")
	if strings.Count(v, ".") >= 2 && v[0] >= '0' && v[0] <= '9' {
		return v
	}
	return "0.0.0-" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, v)
}

func (s *Service) serve(ctx context.Context, r micro.Request, h func(context.Context, []byte) (any, error)) {
	var resp any
	var err error
	if n := len(r.Data()); n > MaxRequestBytes {
		err = errorf(CodeInvalidArgument, "request too large: %d bytes, the limit is %d", n, MaxRequestBytes)
	} else {
		resp, err = h(ctx, r.Data())
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			s.log.Error("presence service request failed", "subject", r.Subject(), "err", err)
			e = errorf(CodeDisconnected, "%v", err)
		}
		body, _ := json.Marshal(e)
		if err := r.Error(string(e.Code), cmp.Or(e.Description, string(e.Code)), body); err != nil {
			s.log.Warn("answering a request failed", "err", err)
		}
		return
	}
	if err := r.RespondJSON(resp); err != nil {
		s.log.Warn("answering a request failed", "err", err)
	}
}

// decode reads a JSON request strictly.
func decode(data []byte, v any) error {
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil
	}
	d := json.NewDecoder(strings.NewReader(string(data)))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return errorf(CodeInvalidArgument, "malformed request: %v", err)
	}
	if d.More() {
		return errorf(CodeInvalidArgument, "malformed request: trailing data")
	}
	return nil
}

func decodeUsers(data []byte) ([]string, error) {
	var req UsersRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	switch {
	case len(req.Users) == 0:
		return nil, errorf(CodeInvalidArgument, "no users given")
	case len(req.Users) > MaxUsers:
		return nil, errorf(CodeInvalidArgument, "too many users: %d, the limit is %d", len(req.Users), MaxUsers)
	}
	return req.Users, nil
}

// handle is one resolved address: the person and their network.
type handle struct {
	asked string
	net   mapping.Network
	user  string
}

// resolve parses an address: an MXID (leading @) or a bare JID; a ghost
// or a puppet stands for its person.
func (s *Service) resolve(addr string) (handle, error) {
	h := handle{asked: addr}
	if strings.HasPrefix(addr, "@") {
		mxid, err := mapping.NewUserID(addr)
		if err != nil {
			return h, errorf(CodeInvalidHandle, "%q: %v", addr, err)
		}
		if jid, err := s.opt.Namespace.ParseGhostMXID(mxid); err == nil {
			h.net, h.user = mapping.NetworkXMPP, string(jid)
			return h, nil
		}
		h.net, h.user = mapping.NetworkMatrix, string(mxid)
		return h, nil
	}
	jid, err := mapping.NewBareJID(addr)
	if err != nil {
		return h, errorf(CodeInvalidHandle, "%q: not a bare JID or an MXID: %v", addr, err)
	}
	if jid.Domain() == s.opt.Namespace.ComponentDomain {
		mxid, err := s.opt.Namespace.ParsePuppetJID(string(jid))
		if err != nil {
			return h, errorf(CodeInvalidHandle, "%q: not a puppet of this bridge: %v", addr, err)
		}
		h.net, h.user = mapping.NetworkMatrix, string(mxid)
		return h, nil
	}
	h.net, h.user = mapping.NetworkXMPP, string(jid)
	return h, nil
}

func (s *Service) resolveAll(addrs []string) ([]handle, error) {
	hs := make([]handle, len(addrs))
	for i, a := range addrs {
		h, err := s.resolve(a)
		if err != nil {
			return nil, err // Telepathy: one invalid handle fails the call
		}
		hs[i] = h
	}
	return hs, nil
}

func (s *Service) permitted(h handle) bool {
	return s.opt.Permitted == nil || s.opt.Permitted(h.net, h.user)
}

func (s *Service) get(ctx context.Context, data []byte) (any, error) {
	addrs, err := decodeUsers(data)
	if err != nil {
		return nil, err
	}
	hs, err := s.resolveAll(addrs)
	if err != nil {
		return nil, err
	}
	resp := GetResponse{Presences: make([]Presence, len(hs))}
	var online []mapping.BareJID
	for i, h := range hs {
		p, err := s.presenceOf(ctx, h)
		if err != nil {
			return nil, err
		}
		resp.Presences[i] = p
		if len(p.Resources) > 0 {
			online = append(online, mapping.BareJID(p.Resolved))
		}
	}
	s.addResources(ctx, resp.Presences, online)
	return resp, nil
}

// requestTimeout bounds the request for one user's fresh presence.
const requestTimeout = 3 * time.Second

// resourcesTimeout bounds the question to the XMPP side; without an
// answer, get reports the aggregate.
const resourcesTimeout = 2 * time.Second

// addResources replaces the aggregate entry of online XMPP users with
// the resources the XMPP side holds, in one request.
func (s *Service) addResources(ctx context.Context, ps []Presence, online []mapping.BareJID) {
	if s.opt.Resources == nil || len(online) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, resourcesTimeout)
	defer cancel()
	res, err := s.opt.Resources.XMPPResources(ctx, online)
	if err != nil {
		s.log.Debug("no resources from the XMPP side; reporting the aggregate", "err", err)
		return
	}
	for i := range ps {
		p := &ps[i]
		if len(p.Resources) == 0 {
			continue
		}
		list := res[mapping.BareJID(p.Resolved)]
		if len(list) == 0 {
			continue
		}
		p.Resources = p.Resources[:0]
		for _, r := range list {
			p.Resources = append(p.Resources, Resource{Name: r.Name, Priority: r.Presence.Priority, State: r.Presence.State, Status: r.Presence.Status, ObservedAt: r.At})
		}
	}
}

func (s *Service) presenceOf(ctx context.Context, h handle) (Presence, error) {
	p := Presence{User: h.asked, Resolved: h.user, Network: h.net}
	if !s.permitted(h) {
		p.Error = CodePermissionDenied
		return p, nil
	}
	key := bridge.PresenceKey(h.net, h.user)
	var set bridge.UserSettings
	if s.opt.OptedOut != nil {
		set.OptOut = s.opt.OptedOut(h.net, h.user)
	} else {
		var err error
		if set, _, err = s.opt.Store.Settings.Get(ctx, key); err != nil && !errors.Is(err, bridge.ErrNotFound) {
			return p, err
		}
	}
	rec, _, err := s.opt.Store.Presence.Get(ctx, key)
	if errors.Is(err, bridge.ErrNotFound) {
		if set.OptOut {
			p.OptedOut = true
			return p, nil
		}
		p.Error = CodeNotAvailable
		return p, nil
	}
	if err != nil {
		return p, err
	}
	if set.OptOut {
		p.OptedOut = true
		return p, nil
	}
	fill(&p, h.net, rec)
	return p, nil
}

func fill(p *Presence, net mapping.Network, rec bridge.PresenceRecord) {
	p.State, p.Type = rec.Presence.State, TelepathyType(rec.Presence.State)
	p.Status, p.LastActive, p.CurrentlyActive = rec.Presence.Status, rec.Presence.LastActive, rec.Presence.CurrentlyActive
	p.Side, p.ObservedAt = net, rec.UpdatedAt
	if net == mapping.NetworkXMPP && rec.Presence.State.Online() {
		p.Resources = []Resource{{Priority: rec.Presence.Priority, Aggregate: true}}
	}
}

var xmppShow = map[mapping.State]string{
	mapping.StateOffline: "unavailable", mapping.StateAvailable: "available", mapping.StateFreeForChat: "chat",
	mapping.StateAway: "away", mapping.StateExtendedAway: "xa", mapping.StateBusy: "dnd",
}

func (s *Service) statuses(_ context.Context, data []byte) (any, error) {
	var req struct{}
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	resp := StatusesResponse{Statuses: map[string]StatusSpec{}}
	for st := range xmppShow {
		if st == mapping.StateBusy && !s.opt.Busy {
			continue // dnd shows on Matrix as the busy fallback: not a status of its own there
		}
		m := s.opt.Table.ToMatrix[st]
		if m == mapping.MatrixBusy && !s.opt.Busy {
			m = s.opt.Table.BusyFallback
		}
		spec := StatusSpec{Type: TelepathyType(st), TypeName: tpNames[TelepathyType(st)], MaySetOnSelf: true, Exclusive: true,
			XMPP: xmppShow[st], Matrix: m.String()}
		if st != mapping.StateOffline {
			spec.Parameters = map[string]string{"message": "s"}
		}
		resp.Statuses[st.String()] = spec
	}
	resp.Statuses[mapping.StateUnknown.String()] = StatusSpec{Type: tpUnknown, TypeName: tpNames[tpUnknown], Exclusive: true, XMPP: "", Matrix: ""}
	return resp, nil
}

func (s *Service) request(ctx context.Context, data []byte) (any, error) {
	addrs, err := decodeUsers(data)
	if err != nil {
		return nil, err
	}
	if len(addrs) > MaxRequestUsers {
		return nil, errorf(CodeInvalidArgument, "too many users for request: %d, the limit is %d", len(addrs), MaxRequestUsers)
	}
	hs, err := s.resolveAll(addrs)
	if err != nil {
		return nil, err
	}
	resp := RequestResponse{Results: make([]RequestResult, len(hs))}
	allDown := true
	for i, h := range hs {
		r := RequestResult{User: h.asked}
		switch {
		case !s.permitted(h):
			r.Error = CodePermissionDenied
		case s.opt.Requester == nil:
			r.Error = CodeDisconnected
		default:
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			err := s.opt.Requester.RequestPresence(rctx, bridge.PresenceRequest{Network: h.net, User: h.user})
			cancel()
			switch {
			case err == nil:
			case errors.Is(err, bridge.ErrDisconnected):
				r.Error = CodeDisconnected
			case errors.Is(err, bridge.ErrNoRoute):
				r.Error = CodeNotAvailable
			case errors.Is(err, mapping.ErrUnknownValue):
				r.Error = CodeInvalidHandle
			default:
				r.Error = CodeDisconnected
			}
			if err != nil {
				r.Description = err.Error()
			}
		}
		if r.Error != CodeDisconnected {
			allDown = false
		}
		resp.Results[i] = r
	}
	if allDown {
		return nil, errorf(CodeDisconnected, "no side can ask for presence now: %s", cmp.Or(resp.Results[0].Description, "no requester"))
	}
	return resp, nil
}

func (s *Service) subscriptions(ctx context.Context, data []byte) (any, error) {
	var req UserRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	if req.User == "" {
		return nil, errorf(CodeInvalidArgument, "no user given")
	}
	h, err := s.resolve(req.User)
	if err != nil {
		return nil, err
	}
	if !s.permitted(h) {
		return nil, errorf(CodePermissionDenied, "%s: not carried by this bridge", h.user)
	}
	resp := SubscriptionsResponse{User: h.user, Network: h.net, Subscriptions: []Subscription{}, Links: []bridge.Link{}}
	// Pair keys are <matrix token>.<xmpp token>: the server finds this
	// user's pairs by key.
	filter := bridge.EncodeToken(h.user) + ".*"
	if h.net == mapping.NetworkXMPP {
		filter = "*." + bridge.EncodeToken(h.user)
	}
	subKeys, err := s.opt.Store.Subscriptions.KeysMatching(ctx, filter)
	if err != nil {
		return nil, err
	}
	for _, k := range subKeys {
		v, _, err := s.opt.Store.Subscriptions.Get(ctx, k)
		if err != nil {
			continue
		}
		m, x, err := bridge.ParsePairKey(k)
		if err != nil {
			continue
		}
		resp.Subscriptions = append(resp.Subscriptions, Subscription{MatrixUser: mapping.UserID(m), XMPPUser: mapping.BareJID(x),
			State: SubscriptionState(v), PendingIn: v.PendingIn, PendingOut: v.PendingOut, UpdatedAt: v.UpdatedAt})
	}
	linkKeys, err := s.opt.Store.Links.KeysMatching(ctx, filter)
	if err != nil {
		return nil, err
	}
	for _, k := range linkKeys {
		if v, _, err := s.opt.Store.Links.Get(ctx, k); err == nil {
			resp.Links = append(resp.Links, v)
		}
	}
	if len(resp.Subscriptions) == 0 && len(resp.Links) == 0 {
		return nil, errorf(CodeNotAvailable, "%s: the bridge holds no subscription or link", h.user)
	}
	slices.SortFunc(resp.Subscriptions, func(a, b Subscription) int {
		return strings.Compare(string(a.MatrixUser)+string(a.XMPPUser), string(b.MatrixUser)+string(b.XMPPUser))
	})
	return resp, nil
}
