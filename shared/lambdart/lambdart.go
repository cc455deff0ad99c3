// Package lambdart runs Lambda functions on this machine the way AWS Lambda runs a
// custom runtime (provided.al2023): every execution environment is a child process of
// the function's bootstrap executable, configured only by environment variables, which
// fetches its invocations from and posts its results to the Lambda Runtime API, the
// public HTTP protocol documented at
// https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html. Each environment gets
// its own Runtime API server on a loopback port, named by AWS_LAMBDA_RUNTIME_API.
//
// Modelled, as Lambda does it:
//
//   - GET  /2018-06-01/runtime/invocation/next blocks until there is an invocation and
//     answers with the event as body and the headers Lambda-Runtime-Aws-Request-Id,
//     Lambda-Runtime-Deadline-Ms, Lambda-Runtime-Invoked-Function-Arn and
//     Lambda-Runtime-Trace-Id;
//   - POST /2018-06-01/runtime/invocation/{id}/response and .../{id}/error end the
//     invocation (202); an id that is not the environment's current invocation is
//     answered 400, a response over 6 MiB 413;
//   - POST /2018-06-01/runtime/init/error reports a failed initialisation (202); the
//     environment is then discarded;
//   - one invocation at a time per environment; an invocation that finds every
//     environment busy starts a new one (a cold start), up to MaxEnvironments;
//   - an environment whose process exits, or whose invocation runs past its timeout,
//     is discarded, and the invocation fails with Runtime.ExitError or
//     Sandbox.Timedout, as Lambda reports them;
//   - the reserved environment variables (AWS_LAMBDA_FUNCTION_NAME, ..._MEMORY_SIZE,
//     ..._LOG_GROUP_NAME, AWS_REGION, LAMBDA_TASK_ROOT, TZ, ...), and nothing of the
//     calling process's environment;
//   - the START, END and REPORT lines Lambda adds to the function's log.
//
// Not modelled: the Extensions and Telemetry APIs, response streaming, the memory
// limit, SnapStart, and freezing an idle environment.
package lambdart

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Defaults of a Function's zero fields.
const (
	DefaultTimeout         = 60 * time.Second
	DefaultMemoryMB        = 128
	DefaultRegion          = "us-east-1"
	DefaultAccount         = "123456789012"
	DefaultMaxEnvironments = 10
	// InitTimeout bounds an environment's initialisation, as Lambda's 10 s init phase.
	InitTimeout = 10 * time.Second
	// MaxResponseBytes is the largest response payload Lambda accepts (6 MiB).
	MaxResponseBytes = 6 << 20
)

// Error types Lambda reports for failures outside the handler.
const (
	ErrorTypeExit     = "Runtime.ExitError"
	ErrorTypeInit     = "Runtime.InitError"
	ErrorTypeTimeout  = "Sandbox.Timedout"
	ErrorTypeTooLarge = "Function.ResponseSizeTooLarge"
)

// ErrThrottled is returned by Invoke when MaxEnvironments environments are all busy;
// Lambda answers such an invocation with TooManyRequestsException.
var ErrThrottled = errors.New("too many concurrent invocations")

// ErrClosed is returned by Invoke after Close.
var ErrClosed = errors.New("function closed")

// Function is one Lambda function and its execution environments. Set the fields
// before the first Invoke and do not change them afterwards. Its methods are safe for
// concurrent use.
type Function struct {
	// Name is the function name (AWS_LAMBDA_FUNCTION_NAME, the ARN's last part).
	Name string
	// Path is the executable every environment runs: the function's bootstrap.
	Path string
	// Env is the function's configured environment, "KEY=value" entries. It is all an
	// environment gets besides the reserved variables: nothing is inherited.
	Env []string
	// Timeout bounds each invocation (DefaultTimeout when zero).
	Timeout time.Duration
	// MemoryMB is reported to the function (DefaultMemoryMB when zero); not enforced.
	MemoryMB int
	// Region and Account make up the function ARN (DefaultRegion, DefaultAccount).
	Region, Account string
	// MaxEnvironments caps the concurrent environments (DefaultMaxEnvironments).
	MaxEnvironments int
	// Log receives the environments' stdout and stderr, whole lines at a time, and the
	// START, END and REPORT lines. Nil discards them.
	Log io.Writer
	// EnvironmentEnv, when set, is called before environment id (1, 2, ...) starts and
	// returns variables added to that environment only (a caller uses it to tell
	// environments apart, e.g. a per-environment AWS endpoint).
	EnvironmentEnv func(id int) ([]string, error)

	mu     sync.Mutex
	envs   []*environment
	nextID int
	closed bool
	logMu  sync.Mutex
}

// FunctionError is an invocation's error, as the Invoke API reports it.
type FunctionError struct {
	Type       string          `json:"errorType"`
	Message    string          `json:"errorMessage"`
	StackTrace json.RawMessage `json:"stackTrace,omitempty"`
}

// Error implements error.
func (e *FunctionError) Error() string { return e.Type + ": " + e.Message }

// Result is what one invocation returned.
type Result struct {
	// RequestID is the invocation's request id.
	RequestID string
	// Payload is the function's response; nil when Error is set.
	Payload []byte
	// Error is the function's error, or the platform's (Runtime.ExitError,
	// Sandbox.Timedout, an init error); nil on success.
	Error *FunctionError
	// Environment is the id of the environment that ran the invocation.
	Environment int
	// ColdStart is true when the environment was started for this invocation.
	ColdStart bool
	// InitDuration is the cold start's initialisation: process start to its first
	// /next. Zero for a warm invocation.
	InitDuration time.Duration
	// Duration is from handing the event to the function to its answer.
	Duration time.Duration
}

// Err returns Error as an error, or nil.
func (r Result) Err() error {
	if r.Error == nil {
		return nil
	}
	return r.Error
}

// ARN is the function's ARN.
func (f *Function) ARN() string {
	return fmt.Sprintf("arn:aws:lambda:%s:%s:function:%s", f.region(), f.account(), f.Name)
}

func (f *Function) region() string  { return or(f.Region, DefaultRegion) }
func (f *Function) account() string { return or(f.Account, DefaultAccount) }
func (f *Function) timeout() time.Duration {
	if f.Timeout > 0 {
		return f.Timeout
	}
	return DefaultTimeout
}

func or(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

// Invoke runs one invocation of payload, synchronously (Lambda's RequestResponse), in
// an idle environment or, if none is idle, a new one. The returned error is for
// failures of the invocation itself (ctx done, ErrThrottled, ErrClosed, an executable
// that cannot be started); what the function or its runtime did wrong is in
// Result.Error.
func (f *Function) Invoke(ctx context.Context, payload []byte) (Result, error) {
	e, cold, err := f.acquire()
	if err != nil {
		return Result{}, fmt.Errorf("invoking %s: %w", f.Name, err)
	}
	res, err := e.invoke(ctx, payload, cold)
	f.release(e)
	if err != nil {
		return res, fmt.Errorf("invoking %s: %w", f.Name, err)
	}
	return res, nil
}

// acquire returns an idle environment marked busy, starting one if needed.
func (f *Function) acquire() (*environment, bool, error) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, false, ErrClosed
	}
	for _, e := range f.envs {
		if !e.busy && !e.dead() {
			e.busy = true
			f.mu.Unlock()
			return e, false, nil
		}
	}
	f.envs = slices.DeleteFunc(f.envs, (*environment).dead)
	limit := f.MaxEnvironments
	if limit <= 0 {
		limit = DefaultMaxEnvironments
	}
	if len(f.envs) >= limit {
		f.mu.Unlock()
		return nil, false, fmt.Errorf("%w: %d environments busy", ErrThrottled, limit)
	}
	f.nextID++
	e := newEnvironment(f, f.nextID)
	e.busy = true
	f.envs = append(f.envs, e)
	f.mu.Unlock()

	if err := e.start(); err != nil {
		f.mu.Lock()
		f.envs = slices.DeleteFunc(f.envs, func(x *environment) bool { return x == e })
		f.mu.Unlock()
		return nil, false, err
	}
	return e, true, nil
}

// release makes e available again, or forgets it if its process is gone.
func (f *Function) release(e *environment) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e.busy = false
	if e.dead() {
		f.envs = slices.DeleteFunc(f.envs, func(x *environment) bool { return x == e })
	}
}

// Environments returns how many environments are alive.
func (f *Function) Environments() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, e := range f.envs {
		if !e.dead() {
			n++
		}
	}
	return n
}

// Close stops every environment (their processes are killed, as Lambda does when it
// shuts an environment down) and makes later invocations fail with ErrClosed.
func (f *Function) Close() error {
	f.mu.Lock()
	f.closed = true
	envs := f.envs
	f.envs = nil
	f.mu.Unlock()
	var errs []error
	for _, e := range envs {
		errs = append(errs, e.stop())
	}
	return errors.Join(errs...)
}

// reservedEnv returns the variables Lambda sets in every environment of f.
func (f *Function) reservedEnv(api string, id int) []string {
	memory := f.MemoryMB
	if memory <= 0 {
		memory = DefaultMemoryMB
	}
	dir := filepath.Dir(f.Path)
	return []string{
		"AWS_LAMBDA_FUNCTION_NAME=" + f.Name,
		"AWS_LAMBDA_FUNCTION_VERSION=$LATEST",
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE=" + strconv.Itoa(memory),
		"AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/" + f.Name,
		fmt.Sprintf("AWS_LAMBDA_LOG_STREAM_NAME=%s/[$LATEST]%032x", time.Now().UTC().Format("2006/01/02"), id),
		"AWS_LAMBDA_INITIALIZATION_TYPE=on-demand",
		"AWS_REGION=" + f.region(),
		"AWS_DEFAULT_REGION=" + f.region(),
		"LAMBDA_TASK_ROOT=" + dir,
		"LAMBDA_RUNTIME_DIR=" + dir,
		"_HANDLER=" + filepath.Base(f.Path),
		"TZ=:UTC",
		"LANG=en_US.UTF-8",
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"AWS_LAMBDA_RUNTIME_API=" + api,
	}
}

// environ is the complete environment of environment id: the reserved variables, the
// function's, the environment's own, and AWS_LAMBDA_RUNTIME_API last so nothing
// overrides it (for duplicate keys, exec uses the last).
func (f *Function) environ(api string, id int) ([]string, error) {
	env := f.reservedEnv(api, id)
	env = append(env, f.Env...)
	if f.EnvironmentEnv != nil {
		extra, err := f.EnvironmentEnv(id)
		if err != nil {
			return nil, fmt.Errorf("environment %d of %s: %w", id, f.Name, err)
		}
		env = append(env, extra...)
	}
	return append(env, "AWS_LAMBDA_RUNTIME_API="+api), nil
}

// logf writes one platform line (START, END, REPORT) to the function's log.
func (f *Function) logf(format string, args ...any) {
	f.writeLog([]byte(fmt.Sprintf(format, args...) + "\n"))
}

// writeLog writes whole lines to Log, one writer at a time.
func (f *Function) writeLog(p []byte) {
	if f.Log == nil {
		return
	}
	f.logMu.Lock()
	defer f.logMu.Unlock()
	_, _ = f.Log.Write(p)
}

// executable checks that path can be run, for a clear error before any fork.
func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("function executable: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("function executable %s is not an executable file", path)
	}
	return nil
}
