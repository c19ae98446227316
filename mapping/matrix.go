package mapping

import (
	"fmt"
	"time"
)

// MatrixPresence is the "presence" field of a Matrix m.presence event.
type MatrixPresence uint8

// The Matrix presence values. MatrixBusy is MSC3026, usable only where the
// homeserver advertises org.matrix.msc3026.busy_presence.
const (
	MatrixUnset MatrixPresence = iota
	MatrixOnline
	MatrixUnavailable
	MatrixOffline
	MatrixBusy

	numMatrix = iota
)

var matrixNames = [numMatrix]string{"", "online", "unavailable", "offline", "org.matrix.msc3026.busy"}

// String returns the wire value.
func (m MatrixPresence) String() string {
	if int(m) < len(matrixNames) {
		return matrixNames[m]
	}
	return fmt.Sprintf("MatrixPresence(%d)", uint8(m))
}

// ParseMatrixPresence parses a wire value. It accepts "busy" as well as the
// unstable MSC3026 name.
func ParseMatrixPresence(v string) (MatrixPresence, error) {
	switch v {
	case "online":
		return MatrixOnline, nil
	case "unavailable":
		return MatrixUnavailable, nil
	case "offline":
		return MatrixOffline, nil
	case "org.matrix.msc3026.busy", "busy":
		return MatrixBusy, nil
	}
	return MatrixUnset, fmt.Errorf("%w: matrix presence %q", ErrUnknownValue, v)
}

// MatrixState is the content of one m.presence event.
type MatrixState struct {
	Presence  MatrixPresence
	StatusMsg string
	// LastActiveAgo is last_active_ago; meaningful only if HasLastActive.
	LastActiveAgo   time.Duration
	HasLastActive   bool
	CurrentlyActive bool
}
