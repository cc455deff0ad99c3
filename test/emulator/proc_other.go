//go:build unix && !linux

package emulator

import "syscall"

// sysProcAttr puts moto in its own process group, so that cleanup can kill the group.
// (Outside Linux there is no parent-death signal: a test binary killed without running
// cleanup leaves moto behind.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
