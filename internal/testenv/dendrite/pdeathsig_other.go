//go:build !linux

package dendritetest

import "os/exec"

func setParentDeathSignal(*exec.Cmd) {}
