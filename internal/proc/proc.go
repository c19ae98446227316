package proc

import (
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// ErrKilled is returned (wrapped) by Process.Stop when the process did not
// exit within the grace period and was killed.
var ErrKilled = errors.New("proc: killed after the grace period")

// Process is a started child process.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's result, valid once done is closed
}

// Start starts cmd in its own process group, bound to the lifetime of the
// calling process where the platform allows it (see the package doc), and
// reaps it in the background. cmd.SysProcAttr must be nil.
func Start(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr != nil {
		return nil, fmt.Errorf("proc: start %s: SysProcAttr already set", cmd.Path)
	}
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("proc: start %s: %w", cmd.Path, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns how the process ended (nil for exit status 0). It is only
// meaningful once Done is closed.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends sig to the process group and waits up to grace for the
// process to exit, then kills the whole group. It returns nil if the
// process exited by itself in time (whatever its exit status), and an
// error wrapping ErrKilled otherwise. Stopping an exited process is a
// no-op.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	signalGroup(p.cmd.Process.Pid, sig)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		p.Kill()
		return fmt.Errorf("%s (pid %d): %w", p.cmd.Path, p.cmd.Process.Pid, ErrKilled)
	}
}

// Kill kills the process group at once and waits for the process to exit.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	signalGroup(p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}
