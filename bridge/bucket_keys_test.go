package bridge

import (
	"context"
	"slices"
	"testing"
)

func TestKeysMatching(t *testing.T) {
	for name, b := range map[string]*Bucket[Link]{"memory": NewMemoryStore().Links} {
		ctx := context.Background()
		for _, k := range []string{PairKey("@a:x.org", "j@x.org"), PairKey("@a:x.org", "k@x.org"), PairKey("@b:x.org", "j@x.org")} {
			if _, err := b.Put(ctx, k, Link{}); err != nil {
				t.Fatal(err)
			}
		}
		got, err := b.KeysMatching(ctx, EncodeToken("@a:x.org")+".*")
		slices.Sort(got)
		if err != nil || len(got) != 2 || got[0] != PairKey("@a:x.org", "j@x.org") {
			t.Errorf("%s: by Matrix user: %v %v", name, got, err)
		}
		got, err = b.KeysMatching(ctx, "*."+EncodeToken("j@x.org"))
		if err != nil || len(got) != 2 {
			t.Errorf("%s: by XMPP user: %v %v", name, got, err)
		}
	}
}
