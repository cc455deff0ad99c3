package lambdart

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

// The functions under test are this test binary itself, re-executed: with
// LAMBDART_TEST_CHILD set, TestMain runs a Lambda function (aws-lambda-go's runtime
// loop, the same one the slotkeeper functions use) instead of the tests.
const childVar = "LAMBDART_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childVar); mode != "" {
		child(mode)
		return
	}
	os.Exit(m.Run())
}

// request tells the child function what to do.
type request struct {
	Do  string `json:"do"` // echo, fail, panic, exit, sleep, big
	Arg string `json:"arg,omitempty"`
}

// echo is what the child reports about the invocation it received.
type echo struct {
	RequestID, ARN, TraceID string
	Deadline                time.Time
	PID                     int
	Env                     map[string]string
}

// echoedVars are the variables the child reports.
var echoedVars = []string{
	"AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
	"AWS_LAMBDA_LOG_GROUP_NAME", "AWS_REGION", "LAMBDA_TASK_ROOT", "TZ", "FUNCTION_VAR", "ENVIRONMENT_VAR",
	"LAMBDART_PARENT_ONLY",
}

func child(mode string) {
	switch mode {
	case "init-exit":
		fmt.Fprintln(os.Stderr, "invalid slotkeeper configuration: SLOTKEEPER_CLUSTER: required")
		os.Exit(1)
	case "init-error":
		body := `{"errorMessage":"cannot load configuration","errorType":"Config.Invalid"}`
		url := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime/init/error"
		resp, err := http.Post(url, "application/json", strings.NewReader(body))
		if err == nil {
			fmt.Println("init/error answered", resp.StatusCode)
			_ = resp.Body.Close()
		}
		os.Exit(2)
	}
	lambda.Start(func(ctx context.Context, in request) (any, error) {
		fmt.Printf("handling %q\n", in.Do)
		switch in.Do {
		case "echo":
			lc, _ := lambdacontext.FromContext(ctx)
			dl, _ := ctx.Deadline()
			e := echo{RequestID: lc.AwsRequestID, ARN: lc.InvokedFunctionArn, Deadline: dl, PID: os.Getpid(), Env: map[string]string{}}
			e.TraceID, _ = ctx.Value("x-amzn-trace-id").(string)
			for _, k := range echoedVars {
				e.Env[k] = os.Getenv(k)
			}
			return e, nil
		case "fail":
			return nil, errors.New(in.Arg)
		case "panic":
			panic(in.Arg)
		case "exit":
			fmt.Fprintln(os.Stderr, "fatal: disk on fire")
			os.Exit(3)
		case "sleep":
			d, _ := time.ParseDuration(in.Arg)
			time.Sleep(d)
			return os.Getpid(), nil
		case "big":
			return strings.Repeat("x", MaxResponseBytes+10), nil
		}
		return nil, fmt.Errorf("unknown request %q", in.Do)
	})
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newFunction returns a Function running this test binary in child mode, closed with
// the test.
func newFunction(t *testing.T, mode string, edit func(*Function)) (*Function, *syncBuffer) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	f := &Function{
		Name: "demo-" + mode, Path: self, Timeout: 10 * time.Second, MemoryMB: 256, Log: logs,
		Env: []string{childVar + "=" + mode, "FUNCTION_VAR=from-function"},
		EnvironmentEnv: func(id int) ([]string, error) {
			return []string{fmt.Sprintf("ENVIRONMENT_VAR=env-%d", id)}, nil
		},
	}
	if edit != nil {
		edit(f)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("function log:\n%s", logs.String())
		}
	})
	return f, logs
}

func invoke(t *testing.T, f *Function, r request) Result {
	t.Helper()
	payload, _ := json.Marshal(r)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := f.Invoke(ctx, payload)
	if err != nil {
		t.Fatalf("Invoke(%s): %v", payload, err)
	}
	return res
}

// An invocation carries the documented headers, and the environment holds the
// reserved variables, the function's and the environment's own, and nothing inherited.
func TestInvocationContextAndEnvironment(t *testing.T) {
	t.Setenv("LAMBDART_PARENT_ONLY", "leaked")
	f, logs := newFunction(t, "serve", nil)
	before := time.Now()
	res := invoke(t, f, request{Do: "echo"})
	if res.Error != nil {
		t.Fatalf("function error: %v", res.Error)
	}
	var e echo
	if err := json.Unmarshal(res.Payload, &e); err != nil {
		t.Fatalf("decoding %s: %v", res.Payload, err)
	}
	if e.RequestID != res.RequestID || e.RequestID == "" {
		t.Errorf("function saw request id %q, Invoke reported %q", e.RequestID, res.RequestID)
	}
	if e.ARN != "arn:aws:lambda:us-east-1:123456789012:function:demo-serve" {
		t.Errorf("function ARN %q", e.ARN)
	}
	if !strings.HasPrefix(e.TraceID, "Root=1-") || !strings.Contains(e.TraceID, ";Sampled=0") {
		t.Errorf("trace id %q", e.TraceID)
	}
	if e.Deadline.Before(before.Add(9*time.Second)) || e.Deadline.After(time.Now().Add(10*time.Second)) {
		t.Errorf("deadline %s is not about 10s after the invocation (%s)", e.Deadline, before)
	}
	want := map[string]string{
		"AWS_LAMBDA_FUNCTION_NAME": "demo-serve", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/demo-serve",
		"AWS_REGION": "us-east-1", "TZ": ":UTC", "FUNCTION_VAR": "from-function", "ENVIRONMENT_VAR": "env-1",
		"LAMBDART_PARENT_ONLY": "",
	}
	for k, v := range want {
		if e.Env[k] != v {
			t.Errorf("%s = %q, want %q", k, e.Env[k], v)
		}
	}
	if !res.ColdStart || res.InitDuration <= 0 || res.Environment != 1 {
		t.Errorf("first invocation: cold %v, init %s, environment %d; want a cold start in environment 1", res.ColdStart, res.InitDuration, res.Environment)
	}

	// The next invocation reuses the environment (same process), warm.
	res2 := invoke(t, f, request{Do: "echo"})
	var e2 echo
	_ = json.Unmarshal(res2.Payload, &e2)
	if res2.ColdStart || res2.InitDuration != 0 || e2.PID != e.PID || res2.RequestID == res.RequestID {
		t.Errorf("second invocation: cold %v, init %s, pid %d (first %d), id %s; want warm in the same process with a new id",
			res2.ColdStart, res2.InitDuration, e2.PID, e.PID, res2.RequestID)
	}

	log := logs.String()
	for _, line := range []string{"START RequestId: " + res.RequestID + " Version: $LATEST", "handling \"echo\"",
		"END RequestId: " + res.RequestID, "REPORT RequestId: " + res.RequestID, "Init Duration: "} {
		if !strings.Contains(log, line) {
			t.Errorf("function log lacks %q:\n%s", line, log)
		}
	}
}

// Every way an invocation can fail is reported as Lambda reports it, and an
// environment whose process died or timed out is replaced by a new one.
func TestInvocationFailures(t *testing.T) {
	tests := []struct {
		name      string
		mode      string
		req       request
		timeout   time.Duration
		wantType  string
		wantMsg   []string
		wantAlive bool // the environment survives
	}{
		{"handler error", "serve", request{Do: "fail", Arg: "volume vol-1 is not available"}, 0, "errorString", []string{"volume vol-1 is not available"}, true},
		{"panic", "serve", request{Do: "panic", Arg: "nil lease"}, 0, "string", []string{"nil lease"}, false},
		{"exit mid-invocation", "serve", request{Do: "exit"}, 0, ErrorTypeExit, []string{"exit status 3", "fatal: disk on fire"}, false},
		{"timeout", "serve", request{Do: "sleep", Arg: "5s"}, 300 * time.Millisecond, ErrorTypeTimeout, []string{"Task timed out after 0.30 seconds"}, false},
		// aws-lambda-go exits when the Runtime API refuses its response (413).
		{"response too large", "serve", request{Do: "big"}, 0, ErrorTypeTooLarge, []string{"exceeded maximum"}, false},
		{"init exits", "init-exit", request{Do: "echo"}, 0, ErrorTypeInit, []string{"exit status 1", "SLOTKEEPER_CLUSTER: required"}, false},
		{"init error posted", "init-error", request{Do: "echo"}, 0, "Config.Invalid", []string{"cannot load configuration"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, _ := newFunction(t, tt.mode, func(f *Function) {
				if tt.timeout > 0 {
					f.Timeout = tt.timeout
				}
			})
			res := invoke(t, f, request{Do: tt.req.Do, Arg: tt.req.Arg})
			if res.Error == nil {
				t.Fatalf("no error; payload %.200s", res.Payload)
			}
			if res.Error.Type != tt.wantType {
				t.Errorf("error type %q (%s), want %q", res.Error.Type, res.Error.Message, tt.wantType)
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(res.Error.Message, m) {
					t.Errorf("error message %q lacks %q", res.Error.Message, m)
				}
			}
			if res.Payload != nil || res.Err() == nil {
				t.Errorf("failed invocation has payload %q / Err %v", res.Payload, res.Err())
			}
			// Processes exit asynchronously after a panic: wait (bounded) for the verdict.
			deadline := time.Now().Add(5 * time.Second)
			for !tt.wantAlive && f.Environments() > 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if alive := f.Environments() == 1; alive != tt.wantAlive {
				t.Errorf("environments alive: %d, want the environment alive = %v", f.Environments(), tt.wantAlive)
			}
			if tt.mode == "serve" {
				// The function still serves, from the old environment or a new one.
				next := invoke(t, f, request{Do: "echo"})
				if next.Error != nil || next.ColdStart == tt.wantAlive {
					t.Errorf("next invocation: error %v, cold %v; want success, cold = %v", next.Error, next.ColdStart, !tt.wantAlive)
				}
			}
		})
	}
}

// Concurrent invocations run in separate environments, up to MaxEnvironments.
func TestConcurrencyAndThrottling(t *testing.T) {
	f, _ := newFunction(t, "serve", func(f *Function) { f.MaxEnvironments = 2 })
	var wg sync.WaitGroup
	results := make([]Result, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = invoke(t, f, request{Do: "sleep", Arg: "1500ms"})
		}()
	}
	// While both environments are busy, a third invocation is throttled.
	deadline := time.Now().Add(5 * time.Second)
	for f.Environments() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	_, err := f.Invoke(context.Background(), []byte(`{"do":"echo"}`))
	if !errors.Is(err, ErrThrottled) {
		t.Errorf("third concurrent invocation: %v, want ErrThrottled", err)
	}
	wg.Wait()
	if results[0].Environment == results[1].Environment || string(results[0].Payload) == string(results[1].Payload) {
		t.Errorf("concurrent invocations ran in environments %d and %d (pids %s, %s); want two",
			results[0].Environment, results[1].Environment, results[0].Payload, results[1].Payload)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Invoke(context.Background(), []byte(`{}`)); !errors.Is(err, ErrClosed) {
		t.Errorf("Invoke after Close: %v, want ErrClosed", err)
	}
}

// A caller that gives up stops the environment rather than leaving work running.
func TestCallerCancels(t *testing.T) {
	f, _ := newFunction(t, "serve", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := f.Invoke(ctx, []byte(`{"do":"sleep","arg":"10s"}`))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Invoke: %v, want the context's error", err)
	}
	if n := f.Environments(); n != 0 {
		t.Errorf("%d environments alive after the caller gave up, want 0", n)
	}
}

// A missing executable is the caller's error, not an invocation result.
func TestMissingExecutable(t *testing.T) {
	f := &Function{Name: "ghost", Path: "/nonexistent/bootstrap"}
	_, err := f.Invoke(context.Background(), []byte(`{}`))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/bootstrap") {
		t.Errorf("Invoke: %v, want an error naming the executable", err)
	}
}
