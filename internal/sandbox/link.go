package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/presence-bridge/presence-bridge/internal/dendrite"
	"github.com/presence-bridge/presence-bridge/internal/prosody"
)

const (
	readyTimeout = 60 * time.Second // the bridge, from start to answering
	linkTimeout  = 60 * time.Second // the consent flow
	pollInterval = 100 * time.Millisecond
)

// waitBridgeReady polls until the appservice port accepts connections and
// the component answers disco#info through alice's session (Prosody
// bounces stanzas for the component while it is not connected).
func (s *sandbox) waitBridgeReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last error
	for i := 0; ; i++ {
		if last = s.bridgeAnswers(ctx, i); last == nil {
			return nil
		}
		select {
		case <-s.bridge.Done():
			return fmt.Errorf("sandbox: the bridge exited during start (%v); see %s", s.bridge.Err(), s.paths.bridgeLog)
		case <-ctx.Done():
			return fmt.Errorf("sandbox: the bridge is not ready after %v: %v; see %s", readyTimeout, last, s.paths.bridgeLog)
		case <-tick.C:
		}
	}
}

func (s *sandbox) bridgeAnswers(ctx context.Context, i int) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(s.st.Ports.AppService))
	if err != nil {
		return fmt.Errorf("appservice port: %w", err)
	}
	conn.Close()
	id := "ready-" + strconv.Itoa(i) + "-" + randomID()
	err = s.alice.Send(ctx, `<iq type='get' id='`+id+`' to='`+componentDomain+`'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`)
	if err != nil {
		return err
	}
	ans, err := s.alice.Wait(ctx, func(st prosody.Stanza) bool { return st.Name == "iq" && st.ID == id })
	if err != nil {
		return err
	}
	if ans.Type != "result" {
		return errors.New("the component is not connected to Prosody yet")
	}
	return nil
}

// link makes alice and bob see each other's presence, through the
// bridge's consent flow (policy "ask") driven from both clients: alice
// subscribes to bob's puppet; the bridge has alice's ghost invite bob to
// a direct chat; bob joins; the puppet approves alice and asks alice in
// turn; alice approves. It is done when alice's roster shows the puppet
// with subscription "both" (at once on later runs: all of it is stored).
func (s *sandbox) link(ctx context.Context) error {
	puppet, ghost := puppetJID(matrixUser), ghostMXID(xmppUser)
	roster, err := s.alice.Roster(ctx)
	if err != nil {
		return err
	}
	if roster[puppet] == "both" {
		return nil
	}
	s.log.Info("linking alice and bob: subscription and invite, approved on both sides")
	if sub := roster[puppet]; sub != "to" {
		if err := s.alice.SendPresence(ctx, "subscribe", puppet, "", "", 0); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithTimeout(ctx, linkTimeout)
	defer cancel()
	since, joined := "", map[string]bool{}
	for {
		// Matrix: bob accepts the ghost's invite. The long-poll is also
		// this loop's wait.
		resp, err := s.bob.Sync(ctx, dendrite.SyncOptions{Since: since, Timeout: 500 * time.Millisecond, SetPresence: "offline"})
		if err != nil {
			return s.linkFailed(ctx, err)
		}
		since = resp.NextBatch
		for _, in := range resp.Invites {
			if in.Inviter != ghost || joined[in.RoomID] {
				continue
			}
			if err := s.bob.Join(ctx, in.RoomID); err != nil {
				return fmt.Errorf("sandbox: bob joining the direct chat with alice: %w", err)
			}
			joined[in.RoomID] = true
		}
		// XMPP: alice approves the puppet's request (Prosody repeats a
		// pending one at every login).
		for {
			_, ok := s.alice.Take(func(st prosody.Stanza) bool {
				return st.Name == "presence" && st.Type == "subscribe" && bareJID(st.From) == puppet
			})
			if !ok {
				break
			}
			if err := s.alice.SendPresence(ctx, "subscribed", puppet, "", "", 0); err != nil {
				return err
			}
		}
		roster, err := s.alice.Roster(ctx)
		if err != nil {
			return s.linkFailed(ctx, err)
		}
		if roster[puppet] == "both" {
			return nil
		}
	}
}

func (s *sandbox) linkFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("sandbox: alice and bob not linked after %v (see %s): %w", linkTimeout, s.paths.bridgeLog, err)
	}
	return fmt.Errorf("sandbox: linking alice and bob: %w", err)
}

func bareJID(j string) string {
	b, _, _ := strings.Cut(j, "/")
	return b
}

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
