package bridge

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/presence-bridge/presence-bridge/mapping"
)

func fuzzedEvent(kind uint8, user, status string, seq uint64, nanos int64, prio int8, flags uint8) *Event {
	e := &Event{V: SchemaVersion, ID: status + "id", Origin: mapping.Network(1 + flags%2), User: user, Seq: seq, ObservedAt: time.Unix(0, nanos).UTC()}
	if flags&2 != 0 {
		e.Peer = status + user
	}
	switch kind % 4 {
	case 0:
		e.Kind = KindPresence
		e.Presence = &mapping.Presence{State: mapping.State(kind % 8), Status: status, Priority: prio, CurrentlyActive: flags&4 != 0}
		if flags&8 != 0 {
			e.Presence.LastActive = time.Unix(0, nanos/3).UTC()
		}
		e.OriginState = mapping.State(flags % 8)
	case 1:
		e.Kind = KindSubscription
		e.Subscription = &SubscriptionPayload{Type: SubscriptionType(status), Status: user}
	case 2:
		e.Kind = KindMembership
		e.Membership = &MembershipPayload{Membership: status, RoomID: user, Member: status, Sender: user, IsDirect: flags&16 != 0}
	case 3:
		e.Kind = KindOptOut
		e.OptOut = &OptOutPayload{Enabled: flags&32 != 0}
	}
	return e
}

// FuzzCodecMatchesEncodingJSON: the hand-written codec writes exactly what
// encoding/json writes for an Event, reads it back to an equal Event, and
// whatever it accepts encoding/json reads the same way.
func FuzzCodecMatchesEncodingJSON(f *testing.F) {
	f.Add(uint8(0), "alice@example.com", "in a meeting", uint64(1), int64(1763700000000000000), int8(5), uint8(0xff))
	f.Add(uint8(2), "@bob:example.org", "<&>\u2028\"\\\x01\xff", uint64(0), int64(-1), int8(-128), uint8(0))
	f.Fuzz(func(t *testing.T, kind uint8, user, status string, seq uint64, nanos int64, prio int8, flags uint8) {
		e := fuzzedEvent(kind, user, status, seq, nanos, prio, flags)
		if e.ObservedAt.Year() < 0 || e.ObservedAt.Year() > 9999 {
			return // outside RFC 3339: encoding/json refuses it too
		}
		want, err := json.Marshal(e)
		if err != nil {
			return
		}
		got := appendEvent(nil, e)
		if !bytes.Equal(got, want) {
			t.Fatalf("codec wrote\n%s\nencoding/json wrote\n%s", got, want)
		}
		var viaJSON, viaCodec Event
		if err := json.Unmarshal(want, &viaJSON); err != nil {
			t.Fatal(err)
		}
		if err := decodeEnvelope(want, &viaCodec); err != nil {
			t.Fatalf("codec cannot read %s: %v", want, err)
		}
		if !reflect.DeepEqual(viaJSON, viaCodec) {
			t.Fatalf("read differently:\njson  %+v\ncodec %+v", viaJSON, viaCodec)
		}
	})
}

// FuzzCodecAcceptsOnlyValidJSON: any bytes the codec accepts, encoding/json
// accepts as an Event and reads the same.
func FuzzCodecAcceptsOnlyValidJSON(f *testing.F) {
	good, _ := EncodeEvent(sampleEvent())
	f.Add(good)
	f.Add([]byte(`{"v":1,"x":[1,{"y":null}],"presence":{"state":"away","priority":-3},"user":"\ud83d\ude00\u00e9"}`))
	f.Add([]byte(`{"v": 1 , "user" : "a\/b" }`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var viaCodec Event
		if err := decodeEnvelope(data, &viaCodec); err != nil {
			return
		}
		var viaJSON Event
		if err := json.Unmarshal(data, &viaJSON); err != nil {
			t.Fatalf("codec accepted what encoding/json refuses (%v): %q", err, data)
		}
		if !reflect.DeepEqual(viaJSON, viaCodec) {
			t.Fatalf("read differently:\njson  %+v\ncodec %+v\ninput %q", viaJSON, viaCodec, data)
		}
	})
}
