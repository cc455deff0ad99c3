package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/lambdart"
)

// FunctionNames are the functions the demo runs: every directory of functions/.
var FunctionNames = []string{"launch", "terminate", "reconcile", "grow", "dns"}

// functionTimeouts are the functions' Lambda timeouts, as template.yaml sets them: the
// launch path's handover wait, for one, is bounded by what is left of its invocation.
var functionTimeouts = map[string]time.Duration{
	"launch": 900 * time.Second, "terminate": 900 * time.Second, "grow": 400 * time.Second,
	"reconcile": 600 * time.Second, "dns": 120 * time.Second,
}

// findRoot returns the repository root: the nearest directory at or above dir whose
// go.mod declares the slotkeeper module.
func findRoot(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/slotkeeper/slotkeeper\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no slotkeeper checkout (go.mod of github.com/slotkeeper/slotkeeper) at or above %s", dir)
		}
	}
}

// build compiles every function's bootstrap for this machine (not Lambda's arm64) into
// dir/<name>/bootstrap, with the flags of `make build` except the cross-compilation
// and -trimpath, which would keep the build from reusing the compiled packages that
// `go build`, `go vet` and the tests leave in the build cache.
func build(ctx context.Context, root, dir string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("building the functions needs the go command on PATH: %w", err)
	}
	bin := filepath.Join(dir, "bin")
	args := []string{"build", "-tags", "lambda.norpc", "-buildvcs=false", "-ldflags=-s -w", "-o", bin + string(filepath.Separator)}
	for _, f := range FunctionNames {
		args = append(args, "./functions/"+f)
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS="+runtime.GOOS, "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	for _, f := range FunctionNames {
		if err := os.MkdirAll(filepath.Join(dir, f), 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", filepath.Join(dir, f), err)
		}
		if err := os.Rename(filepath.Join(bin, f), filepath.Join(dir, f, "bootstrap")); err != nil {
			return fmt.Errorf("placing the %s bootstrap: %w", f, err)
		}
	}
	return nil
}

// counter is the AWS endpoint of one execution environment: a reverse proxy to the
// harness proxy that counts the calls passing through, so that each invocation's AWS
// calls are known (an environment runs one invocation at a time).
type counter struct {
	srv *http.Server
	url string

	mu    sync.Mutex
	calls map[string]int
}

func newCounter(target string) (*counter, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for an AWS endpoint: %w", err)
	}
	c := &counter{url: "http://" + ln.Addr().String(), calls: map[string]int{}}
	fwd := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) }, Transport: &http.Transport{}}
	c.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		c.mu.Lock()
		c.calls[action(r, body)]++
		c.mu.Unlock()
		fwd.ServeHTTP(w, r)
	})}
	go func() { _ = c.srv.Serve(ln) }()
	return c, nil
}

// take returns the calls counted since the last take.
func (c *counter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = map[string]int{}
	return out
}

func (c *counter) close() { _ = c.srv.Close() }

// action names an AWS SDK request's operation: the JSON protocols' X-Amz-Target, the
// query protocols' Action, Route 53's REST path, the RPC v2 CBOR operation path.
func action(r *http.Request, body []byte) string {
	if t := r.Header.Get("X-Amz-Target"); t != "" {
		return t[strings.LastIndex(t, ".")+1:]
	}
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/2013-04-01/hostedzone/") && strings.HasSuffix(p, "/rrset"):
		if r.Method == http.MethodPost {
			return "ChangeResourceRecordSets"
		}
		return "ListResourceRecordSets"
	case strings.HasPrefix(p, "/2013-04-01/"):
		return "Route53:" + r.Method + ":" + path.Base(p)
	case strings.HasPrefix(p, "/service/") && strings.Contains(p, "/operation/"):
		return path.Base(p)
	}
	if form, err := url.ParseQuery(string(body)); err == nil && form.Get("Action") != "" {
		return form.Get("Action")
	}
	return r.Method + " " + p
}

// writePrefixes mark the operations that change something.
var writePrefixes = []string{"Create", "Delete", "Attach", "Detach", "Modify", "Put", "Update", "Run", "Terminate",
	"Complete", "Record", "Send", "Change", "Tag", "Set", "Release", "Publish"}

// isWrite reports whether an AWS operation changes something.
func isWrite(op string) bool {
	for _, p := range writePrefixes {
		if strings.HasPrefix(op, p) {
			return true
		}
	}
	return false
}

// fleet is the demo's five functions, each a lambdart.Function running its real
// bootstrap, with a counting AWS endpoint per execution environment.
type fleet struct {
	fns map[string]*lambdart.Function

	mu       sync.Mutex
	counters map[string]map[int]*counter // function -> environment -> endpoint
}

// newFleet prepares the functions built in dir: environment env (the deployment's
// configuration and AWS credentials), AWS calls through proxyURL, logs to logDir/<name>.log
// and to watch.
func newFleet(dir, logDir, proxyURL string, env []string, watch func(fn string, line []byte)) (*fleet, error) {
	f := &fleet{fns: map[string]*lambdart.Function{}, counters: map[string]map[int]*counter{}}
	for _, name := range FunctionNames {
		logFile, err := os.Create(filepath.Join(logDir, name+".log"))
		if err != nil {
			return nil, fmt.Errorf("creating the %s log: %w", name, err)
		}
		f.counters[name] = map[int]*counter{}
		fn := &lambdart.Function{
			Name: "slotkeeper-demo-" + name, Path: filepath.Join(dir, name, "bootstrap"), Env: env,
			Timeout: functionTimeouts[name], MemoryMB: 256, MaxEnvironments: 5,
			Log: &lineTap{w: logFile, tap: func(line []byte) { watch(name, line) }, closer: logFile},
		}
		fn.EnvironmentEnv = func(id int) ([]string, error) {
			c, err := newCounter(proxyURL)
			if err != nil {
				return nil, err
			}
			f.mu.Lock()
			f.counters[name][id] = c
			f.mu.Unlock()
			return []string{"AWS_ENDPOINT_URL=" + c.url}, nil
		}
		f.fns[name] = fn
	}
	return f, nil
}

// invocation is one function invocation as the demo saw it.
type invocation struct {
	Function  string
	Result    lambdart.Result
	Calls     map[string]int
	Started   time.Time
	Response  json.RawMessage
	RequestID string
}

// invoke runs one invocation of fn and collects its AWS calls. A function error is an
// error here: every invocation of the story is meant to succeed.
func (f *fleet) invoke(ctx context.Context, fn string, payload []byte) (invocation, error) {
	inv := invocation{Function: fn, Started: time.Now()}
	res, err := f.fns[fn].Invoke(ctx, payload)
	inv.Result, inv.RequestID = res, res.RequestID
	f.mu.Lock()
	c := f.counters[fn][res.Environment]
	f.mu.Unlock()
	if c != nil {
		inv.Calls = c.take()
	}
	if err != nil {
		return inv, err
	}
	if res.Error != nil {
		return inv, fmt.Errorf("the %s function failed (request %s): %w", fn, res.RequestID, res.Error)
	}
	inv.Response = res.Payload
	return inv, nil
}

// close stops every environment and endpoint and closes the logs.
func (f *fleet) close() error {
	var errs []error
	for _, fn := range f.fns {
		errs = append(errs, fn.Close())
		if t, ok := fn.Log.(*lineTap); ok {
			errs = append(errs, t.closer.Close())
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, envs := range f.counters {
		for _, c := range envs {
			c.close()
		}
	}
	return errors.Join(errs...)
}

// lineTap writes to w and hands every line (lambdart writes whole lines) to tap.
type lineTap struct {
	w      io.Writer
	tap    func([]byte)
	closer io.Closer
}

func (t *lineTap) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		t.tap(line)
	}
	return t.w.Write(p)
}
