package e2e

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal makes the kernel kill the bridge if the test binary
// dies without running its cleanups (e.g. on a test timeout panic).
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
