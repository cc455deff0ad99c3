//go:build !linux

package lambdart

import "syscall"

// sysProcAttr: outside Linux there is no parent-death signal; Close stops the processes.
func sysProcAttr() *syscall.SysProcAttr { return nil }
