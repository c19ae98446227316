package bridge

import (
	"context"
	"fmt"
)

// Keys returns every key of the bucket, for readers that pick entries by
// key (the operations service finds one user's pairs this way without
// reading every value).
func (b *Bucket[T]) Keys(ctx context.Context) ([]string, error) {
	keys, err := b.kv.keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("bridge: %s list: %w", b.name, err)
	}
	return keys, nil
}
