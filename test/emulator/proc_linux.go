package emulator

import "syscall"

// sysProcAttr puts moto in its own process group, so that cleanup can kill the group,
// and has the kernel kill moto if the test binary dies without running cleanup (for
// example on a `go test -timeout` panic).
//
// Pdeathsig fires when the OS thread that started moto exits, not the process. The Go
// runtime only ends a thread when a goroutine exits while locked to it
// (runtime.LockOSThread), which test code must not do around Start.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
