package lambdart

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// environment is one execution environment: a child process and the Runtime API
// server it talks to. Busy is guarded by the Function's mutex; the rest by mu or by
// being set before the process starts.
type environment struct {
	f    *Function
	id   int
	busy bool

	srv     *http.Server
	addr    string
	cmd     *exec.Cmd
	started time.Time
	output  *lineWriter // the process's stdout and stderr

	next     chan *invocation // handed to the runtime by GET /next
	initFail chan struct{}    // closed by POST /runtime/init/error
	exited   chan struct{}    // closed once the process has exited
	stopping chan struct{}    // closed by stop

	mu        sync.Mutex
	current   *invocation // handed out, not answered yet
	readyAt   time.Time   // the first GET /next: initialisation done
	initErr   *FunctionError
	exitErr   error
	readyOnce sync.Once
	failOnce  sync.Once
	stopOnce  sync.Once
}

// invocation is one event on its way through an environment.
type invocation struct {
	id      string
	payload []byte
	traceID string

	handed   chan struct{} // closed when GET /next has handed it out
	answered chan struct{} // closed when the runtime has posted its result
	deadline time.Time     // set when handed out
	handedAt time.Time
	result   []byte
	err      *FunctionError
}

// newEnvironment returns environment id of f, not started.
func newEnvironment(f *Function, id int) *environment {
	return &environment{
		f: f, id: id,
		next:     make(chan *invocation),
		initFail: make(chan struct{}),
		exited:   make(chan struct{}),
		stopping: make(chan struct{}),
	}
}

// start starts the environment's Runtime API server and process.
func (e *environment) start() error {
	if err := executable(e.f.Path); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening for the Runtime API of %s: %w", e.f.Name, err)
	}
	e.addr = ln.Addr().String()
	e.srv = &http.Server{Handler: e.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = e.srv.Serve(ln) }() // returns http.ErrServerClosed on Close

	env, err := e.f.environ(e.addr, e.id)
	if err != nil {
		_ = e.srv.Close()
		return err
	}
	e.output = &lineWriter{f: e.f}
	e.cmd = exec.Command(e.f.Path)
	e.cmd.Env = env
	e.cmd.Dir = filepath.Dir(e.f.Path)
	e.cmd.Stdout = e.output
	e.cmd.Stderr = e.output
	e.cmd.SysProcAttr = sysProcAttr()
	e.cmd.WaitDelay = 2 * time.Second
	e.started = time.Now()
	if err := e.cmd.Start(); err != nil {
		_ = e.srv.Close()
		return fmt.Errorf("starting %s: %w", e.f.Path, err)
	}
	go func() {
		err := e.cmd.Wait()
		e.output.flush()
		e.mu.Lock()
		e.exitErr = err
		e.mu.Unlock()
		close(e.exited)
	}()
	return nil
}

// dead reports whether the environment can take no more invocations.
func (e *environment) dead() bool {
	select {
	case <-e.exited:
		return true
	case <-e.stopping:
		return true
	case <-e.initFail:
		return true
	default:
		return false
	}
}

// stop kills the process, waits for it to exit and closes the server.
func (e *environment) stop() error {
	var err error
	e.stopOnce.Do(func() {
		close(e.stopping)
		if e.cmd != nil && e.cmd.Process != nil {
			select {
			case <-e.exited:
			default:
				_ = e.cmd.Process.Kill()
			}
			select {
			case <-e.exited:
			case <-time.After(5 * time.Second):
				err = fmt.Errorf("environment %d of %s: process %d did not exit after SIGKILL", e.id, e.f.Name, e.cmd.Process.Pid)
			}
		}
		if e.srv != nil {
			_ = e.srv.Close()
		}
	})
	return err
}

// invoke hands payload to the runtime and waits for its answer.
func (e *environment) invoke(ctx context.Context, payload []byte, cold bool) (Result, error) {
	inv := &invocation{
		id: newRequestID(), payload: payload, traceID: newTraceID(),
		handed: make(chan struct{}), answered: make(chan struct{}),
	}
	res := Result{RequestID: inv.id, Environment: e.id, ColdStart: cold}

	// 1. Hand the event to the runtime's GET /next.
	initLimit := time.NewTimer(InitTimeout)
	defer initLimit.Stop()
	select {
	case e.next <- inv:
	case <-ctx.Done():
		if cold {
			_ = e.stop() // a half-initialised environment is of no use to anyone
		}
		return res, ctx.Err()
	case <-e.exited:
		res.Error = e.exitError(inv.id, cold)
		return res, nil
	case <-e.initFail:
		res.Error = e.initError()
		_ = e.stop()
		return res, nil
	case <-initLimit.C:
		_ = e.stop()
		res.Error = &FunctionError{Type: ErrorTypeInit, Message: fmt.Sprintf("RequestId: %s Error: the runtime did not ask for an invocation within %s%s", inv.id, InitTimeout, e.output.tailNote())}
		return res, nil
	}
	<-inv.handed
	if cold {
		e.mu.Lock()
		res.InitDuration = e.readyAt.Sub(e.started)
		e.mu.Unlock()
	}
	e.f.logf("START RequestId: %s Version: $LATEST", inv.id)

	// 2. Wait for its answer, its end or its deadline.
	timeout := time.NewTimer(time.Until(inv.deadline))
	defer timeout.Stop()
	select {
	case <-inv.answered:
		res.Payload, res.Error = inv.result, inv.err
	case <-e.exited:
		res.Error = e.exitError(inv.id, false)
	case <-timeout.C:
		_ = e.stop()
		res.Error = &FunctionError{Type: ErrorTypeTimeout, Message: fmt.Sprintf("RequestId: %s Error: Task timed out after %.2f seconds", inv.id, e.f.timeout().Seconds())}
	case <-ctx.Done():
		_ = e.stop() // the caller gave up: do not leave the work running unobserved
		return res, ctx.Err()
	}
	res.Duration = time.Since(inv.handedAt)
	e.f.logf("END RequestId: %s", inv.id)
	report := fmt.Sprintf("REPORT RequestId: %s\tDuration: %.2f ms\tBilled Duration: %d ms\tMemory Size: %d MB",
		inv.id, ms(res.Duration), res.Duration.Milliseconds()+1, e.memory())
	if cold {
		report += fmt.Sprintf("\tInit Duration: %.2f ms", ms(res.InitDuration))
	}
	if res.Error != nil && (res.Error.Type == ErrorTypeTimeout || res.Error.Type == ErrorTypeExit) {
		report += "\tStatus: " + strings.TrimPrefix(strings.TrimPrefix(res.Error.Type, "Runtime."), "Sandbox.")
	}
	e.f.logf("%s", report)
	return res, nil
}

func (e *environment) memory() int {
	if e.f.MemoryMB > 0 {
		return e.f.MemoryMB
	}
	return DefaultMemoryMB
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// exitError describes the process's exit, as Lambda reports a runtime that exits.
func (e *environment) exitError(requestID string, init bool) *FunctionError {
	e.mu.Lock()
	err := e.exitErr
	e.mu.Unlock()
	what := "exit status 0"
	if err != nil {
		what = err.Error()
	}
	typ := ErrorTypeExit
	if init {
		typ = ErrorTypeInit
	}
	return &FunctionError{Type: typ, Message: fmt.Sprintf("RequestId: %s Error: Runtime exited with error: %s%s", requestID, what, e.output.tailNote())}
}

// initError is the error the runtime posted to /runtime/init/error.
func (e *environment) initError() *FunctionError {
	e.mu.Lock()
	defer e.mu.Unlock()
	ie := *e.initErr
	return &ie
}

// newRequestID returns a random UUID-shaped request id.
func newRequestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// newTraceID returns an X-Ray trace header for an unsampled invocation.
func newTraceID() string {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return fmt.Sprintf("Root=1-%08x-%s;Parent=%s;Sampled=0", time.Now().Unix(), h[:24], h[24:40])
}

// lineWriter passes a process's output to the function's log in whole lines and keeps
// the last few lines for error messages.
type lineWriter struct {
	f    *Function
	mu   sync.Mutex
	buf  []byte
	tail []string
}

// tailLines is how many output lines an init or exit error quotes.
const tailLines = 5

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if i := bytes.LastIndexByte(w.buf, '\n'); i >= 0 {
		lines := w.buf[:i+1]
		w.f.writeLog(lines)
		w.remember(lines)
		w.buf = append([]byte(nil), w.buf[i+1:]...)
	}
	return len(p), nil
}

func (w *lineWriter) remember(lines []byte) {
	for _, l := range strings.Split(strings.TrimRight(string(lines), "\n"), "\n") {
		if strings.TrimSpace(l) != "" {
			w.tail = append(w.tail, l)
		}
	}
	if len(w.tail) > tailLines {
		w.tail = w.tail[len(w.tail)-tailLines:]
	}
}

// flush writes out a last line without a newline.
func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		line := append(w.buf, '\n')
		w.f.writeLog(line)
		w.remember(line)
		w.buf = nil
	}
}

// tailNote is the process's last output lines, for an error message ("" if none).
func (w *lineWriter) tailNote() string {
	if w == nil {
		return ""
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.tail) == 0 {
		return ""
	}
	return "; last output: " + strings.Join(w.tail, " | ")
}
