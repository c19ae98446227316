package bridge

import (
	"context"
	"fmt"
	"strings"
)

// KeysMatching returns the keys matching filter, a key with NATS
// wildcards ("*" one token, ">" the rest): the server filters, so one
// user's pairs are found without listing the whole bucket.
func (b *Bucket[T]) KeysMatching(ctx context.Context, filter string) ([]string, error) {
	var keys []string
	switch kv := b.kv.(type) {
	case jsKV:
		lister, err := kv.kv.ListKeysFiltered(ctx, filter)
		if err != nil {
			return nil, fmt.Errorf("bridge: %s list %q: %w", b.name, filter, err)
		}
		for k := range lister.Keys() {
			keys = append(keys, k)
		}
		return keys, nil
	default:
		all, err := b.Keys(ctx)
		if err != nil {
			return nil, err
		}
		for _, k := range all {
			if keyMatches(filter, k) {
				keys = append(keys, k)
			}
		}
		return keys, nil
	}
}

// keyMatches applies NATS subject wildcards to a key.
func keyMatches(filter, key string) bool {
	f, k := strings.Split(filter, "."), strings.Split(key, ".")
	for i, t := range f {
		if t == ">" {
			return len(k) > i
		}
		if i >= len(k) || t != "*" && t != k[i] {
			return false
		}
	}
	return len(f) == len(k)
}
