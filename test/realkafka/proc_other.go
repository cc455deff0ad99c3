//go:build unix && !linux

package realkafka

import "syscall"

// sysProcAttr: outside Linux there is no parent-death signal; a program killed
// without stopping its Kafka processes leaves them behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{}
}
