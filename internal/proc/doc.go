// Package proc runs the external programs of the local servers (Prosody,
// Dendrite, the bridge binary) as children that cannot outlive their
// parent and that stop in order.
//
// A child started with Start gets its own process group, so the Ctrl-C a
// terminal sends to the foreground group reaches only the parent, which
// then stops its children in the order it chooses (Process.Stop). On Linux
// the kernel also kills the child if the parent dies without stopping it
// (SIGKILL, a test timeout panic): no orphan is left either way.
package proc
