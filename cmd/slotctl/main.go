// Command slotctl is the operator's tool for a slotkeeper cluster: status, history,
// preflight, evict, adopt, roll, and the local demo. It only wires; the logic lives in
// shared/slotctl and shared/slotctl/demo.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := slotctl.Main(ctx, os.Args[1:], slotctl.IO{
		Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Terminal: isTerminal(os.Stdout),
	}, demo.Command())
	stop()
	os.Exit(code)
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
