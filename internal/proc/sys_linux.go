package proc

import "syscall"

func sysProcAttr() *syscall.SysProcAttr {
	// Pdeathsig fires when the thread that started the child exits; the Go
	// runtime only ends threads of goroutines that exit while locked to
	// them, which this package never does.
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// signalGroup signals the process group of pid (which leads it).
func signalGroup(pid int, sig syscall.Signal) {
	if err := syscall.Kill(-pid, sig); err != nil {
		_ = syscall.Kill(pid, sig)
	}
}
