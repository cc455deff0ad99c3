package demo

import (
	"errors"
	"fmt"
	"strings"
	"sync"
)

// ErrNoEmulator means moto_server was not found.
var ErrNoEmulator = errors.New("the AWS emulator (moto_server) was not found")

// teardown collects what the demo must stop when it ends (the emulator, Kafka, the
// functions), and the problems seen on the way that do not stop the story (a check at
// cleanup that failed, a function that failed on a state change).
type teardown struct {
	mu    sync.Mutex
	steps []func()
	errs  []string
}

// Cleanup registers f to run when the demo ends, after everything registered later.
func (t *teardown) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.steps = append(t.steps, f)
}

// Errorf records a problem; finish reports it.
func (t *teardown) Errorf(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errs = append(t.errs, fmt.Sprintf(format, args...))
}

// finish runs the cleanups, last registered first, and returns the problems recorded
// during the run or by the cleanups.
func (t *teardown) finish() error {
	for {
		t.mu.Lock()
		if len(t.steps) == 0 {
			t.mu.Unlock()
			break
		}
		f := t.steps[len(t.steps)-1]
		t.steps = t.steps[:len(t.steps)-1]
		t.mu.Unlock()
		f()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.errs) > 0 {
		return errors.New(strings.Join(t.errs, "; "))
	}
	return nil
}
