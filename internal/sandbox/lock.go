package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ErrRunning is returned (wrapped) by Run when another sandbox runs on the
// same directory.
var ErrRunning = errors.New("sandbox: another sandbox is running on this directory")

// lock takes an exclusive lock on path for as long as the process lives
// (the kernel drops it when the process ends, however it ends), and
// writes our pid into it for the error message of the next one.
func lock(path string) (release func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		data, _ := os.ReadFile(path)
		f.Close()
		if pid := strings.TrimSpace(string(data)); pid != "" {
			return nil, fmt.Errorf("%w (pid %s)", ErrRunning, pid)
		}
		return nil, ErrRunning
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() {
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
