package lambdart

import "syscall"

// sysProcAttr has the kernel kill an environment's process if the process running it
// dies without stopping it. Pdeathsig fires when the OS thread that started the child
// exits; the Go runtime only ends a thread when a goroutine locked to it exits, which
// callers of Invoke do not do.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
