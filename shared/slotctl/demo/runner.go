package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
)

// The demo reuses the test harness (package test/harness: moto, the recording proxy
// that answers the lifecycle calls moto lacks, the world builders) and kafkatest (kfake
// with scriptable ISR) instead of copying them. Both take a testing.TB, which only
// package testing can create; runner is the smallest stand-in that lets a program
// drive them. It embeds a nil testing.TB solely to satisfy the interface's unexported
// method and implements every exported method itself, so the nil is never called.
//
// What the helpers use it for: Fatalf and Skipf (setup failed: runner panics with
// stop, which run turns into an error; a Skipf means moto was not found), Errorf (a
// check at cleanup failed: recorded and reported), Cleanup (run, in reverse order,
// when the demo ends) and Helper/Logf (no-op / log file).
type runner struct {
	testing.TB

	log io.Writer

	mu       sync.Mutex
	cleanups []func()
	errs     []string
	failed   bool
	ctx      context.Context
	cancel   context.CancelFunc
}

// stop is the panic value of Fatalf and Skipf.
type stop struct {
	msg     string
	skipped bool
}

// ErrNoEmulator means moto_server was not found (the harness would skip a test).
var ErrNoEmulator = errors.New("the AWS emulator (moto_server) was not found")

func newRunner(log io.Writer) *runner {
	if log == nil {
		log = io.Discard
	}
	r := &runner{log: log}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r
}

// guard runs fn and turns a Fatalf or Skipf inside it into an error.
func (r *runner) guard(fn func()) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s, ok := v.(stop)
			if !ok {
				panic(v)
			}
			if s.skipped {
				err = fmt.Errorf("%w: %s", ErrNoEmulator, s.msg)
				return
			}
			err = errors.New(s.msg)
		}
	}()
	fn()
	return nil
}

// finish runs the cleanups, last registered first, and returns the errors reported
// during the run or by the cleanups.
func (r *runner) finish() error {
	r.cancel()
	for {
		r.mu.Lock()
		if len(r.cleanups) == 0 {
			r.mu.Unlock()
			break
		}
		f := r.cleanups[len(r.cleanups)-1]
		r.cleanups = r.cleanups[:len(r.cleanups)-1]
		r.mu.Unlock()
		if err := r.guard(f); err != nil {
			r.Errorf("cleanup: %v", err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) > 0 {
		return errors.New(strings.Join(r.errs, "; "))
	}
	return nil
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

// The testing.TB methods. Fatal* and Skip* stop the demo (see guard); Error* and Fail
// mark it failed and carry on, as in a test.

func (r *runner) Error(args ...any)                 { r.Errorf("%s", fmt.Sprint(args...)) }
func (r *runner) Errorf(format string, args ...any) { r.record(fmt.Sprintf(format, args...)) }
func (r *runner) Fail()                             { r.record("failed") }
func (r *runner) FailNow()                          { r.Fatalf("failed") }
func (r *runner) Fatal(args ...any)                 { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *runner) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
	panic(stop{msg: msg})
}
func (r *runner) Skip(args ...any) { r.Skipf("%s", fmt.Sprint(args...)) }
func (r *runner) SkipNow()         { r.Skipf("skipped") }
func (r *runner) Skipf(format string, args ...any) {
	// The harness skips when moto is missing; its wording is for tests.
	msg := strings.TrimPrefix(fmt.Sprintf(format, args...), "skipping integration test: ")
	panic(stop{msg: msg, skipped: true})
}
func (r *runner) Skipped() bool                   { return false }
func (r *runner) Helper()                         {}
func (r *runner) Log(args ...any)                 { r.Logf("%s", fmt.Sprint(args...)) }
func (r *runner) Logf(format string, args ...any) { fmt.Fprintf(r.log, format+"\n", args...) }
func (r *runner) Name() string                    { return "slotkeeper-demo" }
func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}
func (r *runner) Setenv(key, value string) { r.Fatalf("demo: Setenv(%s) is not supported", key) }
func (r *runner) Chdir(dir string)         { r.Fatalf("demo: Chdir(%s) is not supported", dir) }
func (r *runner) TempDir() string {
	dir, err := os.MkdirTemp("", "slotkeeper-demo-")
	if err != nil {
		r.Fatalf("creating a temporary directory: %v", err)
	}
	r.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
func (r *runner) ArtifactDir() string      { return r.TempDir() }
func (r *runner) Attr(key, value string)   { r.Logf("%s: %s", key, value) }
func (r *runner) Context() context.Context { return r.ctx }
func (r *runner) Output() io.Writer        { return r.log }

func (r *runner) record(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
	r.errs = append(r.errs, msg)
}
