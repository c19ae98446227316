package prosodytest

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the tests if a process waiter or a client's receive loop
// outlives them (Stop, Kill and Client.Close must join them).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
