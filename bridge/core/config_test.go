package core

import (
	"strings"
	"testing"
)

// TestPartitionsValidated: core.partitions is 1 to 1024, 16 by default.
func TestPartitionsValidated(t *testing.T) {
	if err := Default().Validate(); err != nil || Default().Partitions != 16 {
		t.Fatalf("default: %d partitions, %v", Default().Partitions, err)
	}
	for _, n := range []int{0, -1, 1025} {
		cfg := Default()
		cfg.Partitions = n
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "partitions: ") {
			t.Errorf("partitions %d: %v, want an error naming partitions", n, err)
		}
	}
}
