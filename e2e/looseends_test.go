package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	dendritetest "github.com/presence-bridge/presence-bridge/internal/testenv/dendrite"
)

// Stories of issue 8's loose ends: what users saw when the bridge was
// tried as they would try it.

// graceTimeout bounds how long after the grace period the other side must
// see the change.
const (
	storyGrace   = 2 * time.Second
	graceTimeout = storyGrace + 15*time.Second
)

// TestStoryXMPPServerGoneSilently: the XMPP server dies without a goodbye
// (SIGKILL). After the grace period bob sees alice's ghost offline, with
// her status kept; when the server and alice are back, bob sees her real
// state again.
func TestStoryXMPPServerGoneSilently(t *testing.T) {
	e := newEnv(t, options{offlineGrace: storyGrace})
	l := e.linkedPair()
	l.bob.skipPresence()

	e.xmpp.Kill()
	l.bob.waitPresence(graceTimeout, l.ghost, "alice offline after the XMPP server died", is("offline", "alice-here"))

	e.xmpp.Restart(t)
	l.alice = e.xmppLogin("alice")
	sendPresence(t, l.alice, "", "", "", "alice-back")
	l.bob.waitPresence(recoverTimeout, l.ghost, "alice back after the XMPP server returned", is("online", "alice-back"))
	e.flowsBothWays(l, "after-xmpp-server-killed")
}

// TestStoryHomeserverGone: the homeserver stops. After the grace period
// alice sees bob's puppet go unavailable; when it is back, the puppet
// shows bob's presence again without anyone acting.
func TestStoryHomeserverGone(t *testing.T) {
	e := newEnv(t, options{offlineGrace: storyGrace})
	l := e.linkedPair()

	am := markX(l.alice)
	e.hs.Stop()
	am.wait(t, graceTimeout, "bob's puppet unavailable while the homeserver is gone", presenceFrom(l.puppet, unavailable))

	am = markX(l.alice)
	e.hs.Restart(t) // Dendrite is stopped already: this starts it
	am.wait(t, recoverTimeout, "bob's puppet back after the homeserver returned", presenceFrom(l.puppet, withStatus("bob-here")))
	e.flowsBothWays(l, "after-homeserver-gone")
}

// TestStoryWrongSecret: a wrong component secret is a configuration
// error: the bridge says at ERROR what to fix and exits non-zero after a
// few attempts instead of retrying forever.
func TestStoryWrongSecret(t *testing.T) {
	e := newEnv(t, options{})
	e.bridge.stop(stopTimeout)
	e.writeConfigSecret("ask", e.hs.URL, e.hsToken, "not-the-secret")
	if err := e.bridge.start(); err != nil {
		t.Fatal(err)
	}
	poll(t, time.Minute, "the bridge exits", func() error {
		if !e.bridge.exited() {
			return fmt.Errorf("still running")
		}
		return nil
	})
	if e.bridge.exitErr() == nil {
		t.Error("the bridge exited with status 0 after failing to authenticate")
	}
	log := e.bridge.logTail(200)
	if !strings.Contains(log, "ERROR") || !strings.Contains(log, "xmpp.secret") {
		t.Errorf("the log does not say at ERROR to check xmpp.secret:\n%s", log)
	}
}

// TestStoryRevokeOnXMPPSeenOnMatrix: alice ends the subscription in her
// XMPP client; bob, in his own /sync, sees her ghost go offline before it
// leaves the room (not frozen at her last presence).
func TestStoryRevokeOnXMPPSeenOnMatrix(t *testing.T) {
	e := newEnv(t, options{})
	l := e.linkedPair()
	l.bob.skipPresence()
	sendPresence(t, l.alice, "unsubscribed", l.puppet, "", "")
	l.bob.waitPresence(flowTimeout, l.ghost, "alice's ghost offline after she revoked", func(p dendritetest.Presence) bool { return p.Presence == "offline" })
}

// TestStoryServerShutdownTextIsNoStatus: when Prosody shuts down it closes
// alice's session with a text of its own ("Disconnected: Received
// SIGTERM"); that is not alice's status, and bob never sees it.
func TestStoryServerShutdownTextIsNoStatus(t *testing.T) {
	e := newEnv(t, options{offlineGrace: storyGrace})
	l := e.linkedPair()
	l.bob.skipPresence()
	e.xmpp.Restart(t) // SIGTERM, then start again
	l.alice = e.xmppLogin("alice")
	sendPresence(t, l.alice, "", "", "", "alice-back")
	l.bob.waitPresence(recoverTimeout, l.ghost, "alice back", is("online", "alice-back"))
	for _, p := range l.bob.presenceOf(l.ghost) {
		if s := statusOf(p.Presence); strings.Contains(s, "Disconnected") || strings.Contains(s, "SIGTERM") {
			t.Errorf("the server's shutdown text became alice's status on Matrix: %v", p)
		}
	}
}

// synapseTransaction is a transaction shaped as Synapse sends it to an
// appservice whose registration asks for ephemeral events: m.presence in
// both the stable and the MSC2409 key, member events, to-device
// messages, device lists, one-time key counts and fields nobody knows.
func synapseTransaction(bob, status string, now time.Time) string {
	presence := fmt.Sprintf(`{"type":"m.presence","sender":%q,"content":{"presence":"online","status_msg":%q,"last_active_ago":1200,"currently_active":true}}`, bob, status)
	return fmt.Sprintf(`{
  "events": [{"type":"m.room.member","room_id":"!elsewhere:localhost","sender":%[1]q,"state_key":%[1]q,
              "event_id":"$m%[3]d","origin_server_ts":%[3]d,"content":{"membership":"join","displayname":"Bob"},
              "unsigned":{"age":12}}],
  "ephemeral": [%[2]s],
  "de.sorunome.msc2409.ephemeral": [%[2]s],
  "de.sorunome.msc2409.to_device": [{"type":"m.room_key_request","sender":%[1]q,"to_user_id":%[1]q,"to_device_id":"ABC","content":{}}],
  "org.matrix.msc3202.device_lists": {"changed":[%[1]q],"left":[]},
  "org.matrix.msc3202.device_one_time_keys_count": {%[1]q:{"ABC":{"signed_curve25519":50}}},
  "org.matrix.msc3202.device_unused_fallback_key_types": {%[1]q:{"ABC":["signed_curve25519"]}},
  "com.example.future_field": {"anything": [1, 2, 3]}
}`, bob, presence, now.UnixMilli())
}

// TestStorySynapseShapedTransaction: a transaction exactly as Synapse
// pushes it (Dendrite pushes no presence to appservices) carries bob's
// presence to alice, once, through the real binary.
func TestStorySynapseShapedTransaction(t *testing.T) {
	e := newEnv(t, options{})
	l := e.linkedPair()
	am := markX(l.alice)
	body := synapseTransaction(l.bob.UserID, "from-synapse", time.Now())
	for attempt := range 2 { // the homeserver retrying the same transaction
		req, err := http.NewRequestWithContext(context.Background(), http.MethodPut,
			"http://"+e.listen+"/_matrix/app/v1/transactions/synapse-1", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+e.hsToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("attempt %d: the bridge answered %s", attempt, resp.Status)
		}
	}
	fromSynapse := presenceFrom(l.puppet, withStatus("from-synapse"))
	am.wait(t, waitLatency, "bob's presence from the Synapse-shaped transaction", fromSynapse)
	never(t, quiet, "the retried transaction delivered bob's presence again", func() string {
		if got := am.since(fromSynapse); len(got) > 1 {
			return fmt.Sprintf("%d times: %s", len(got), got[1].Raw)
		}
		return ""
	})
}

// TestStoryPresenceFromBeforeTheLink: bob set his presence before alice
// asked to see him; once he approves, alice sees it without bob changing
// anything.
func TestStoryPresenceFromBeforeTheLink(t *testing.T) {
	e := newEnv(t, options{})
	alice, bob := e.xmppUser("alice"), e.matrixUser("bob")
	bob.put("unavailable", "bob-before")
	sendPresence(t, alice, "", "", "", "alice-here")
	e.link(alice, bob)
	puppet := e.puppet(bob.UserID)
	// bob's own client syncing may make Dendrite show him online again
	// (online wins among his devices): his status is what tells.
	alice.Wait(t, flowTimeout, "bob's presence from before the link", presenceFrom(puppet, withStatus("bob-before")))
}
