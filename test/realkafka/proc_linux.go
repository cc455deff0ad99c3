package realkafka

import "syscall"

// sysProcAttr has the kernel kill a Kafka process when the program that started it
// dies without stopping it (for example on a `go test -timeout` panic).
//
// Pdeathsig fires when the OS thread that started the process exits, not the
// program. The Go runtime only ends a thread when a goroutine exits while locked to
// it (runtime.LockOSThread), which callers must not do around Start.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
