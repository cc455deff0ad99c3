// Package emulator is AWS on this machine: a moto server behind a small reverse proxy
// that makes it behave enough like AWS for slotkeeper's functions. It is an ordinary
// package (no dependency on package testing), used by the demo (`slotctl demo`) and,
// through test/harness, which wraps it for tests, by the integration tests.
//
// Start launches a fresh moto server on a free loopback port and puts the proxy in
// front of it. Code under test talks to the proxy (e.URL, via AWSConfig or the
// AWS_ENDPOINT_URL in Env); set-up and assertions talk to moto directly (e.MotoURL,
// via DirectConfig) so they are neither counted nor faulted. The proxy:
//
//   - counts every AWS call by action name (Calls, CallCounts, MutatingCalls,
//     Sequence);
//   - injects faults into chosen calls: throttling, 5xx, latency, or a "crash"
//     after a call took effect (Inject);
//   - answers the two Auto Scaling calls moto lacks, CompleteLifecycleAction
//     and RecordLifecycleActionHeartbeat, and records them (Completions,
//     Heartbeats), and DescribeInstanceRefreshes (refresh.go);
//   - emulates EC2's ClientToken idempotency (idempotency.go);
//   - checks Route 53 change batches against the records as they are, as Route 53
//     does, which moto does not (route53.go);
//   - models, where asked, the windows moto skips: an instance shutting down, a
//     plain volume detach the OS has not released yet, an instance of a group in
//     Terminating:Wait, an expired lifecycle action (windows.go);
//   - rewrites moto's answers to chosen actions (Override);
//   - delays calls and state changes as AWS does, where asked (SetLatency, latency.go).
//
// Close stops the proxy, then moto's whole process group. An Emulator is safe for
// concurrent use.
//
// moto 5.2.5 does not speak RPC v2 CBOR, the default protocol of the SDK's
// CloudWatch client (it answers 404). A CloudWatch client that must reach moto needs
// the awsquery protocol:
//
//	cloudwatch.NewFromConfig(cfg, func(o *cloudwatch.Options) {
//		o.Protocol = awsquery.New(schemas.GraniteServiceVersion20100801)
//	})
//
// with awsquery from github.com/aws/smithy-go/transport/http/protocol/awsquery and
// schemas from github.com/aws/aws-sdk-go-v2/service/cloudwatch/schemas. The proxy
// still recognises CBOR calls, so faults that it answers itself (Throttle,
// ServerError) work with the default client.
package emulator

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

const (
	// region is the only region the emulator uses.
	region = "us-east-1"
	// motoEnvVar names the environment variable that overrides where moto_server is.
	motoEnvVar = "SLOTKEEPER_MOTO_SERVER"
	// startTimeout bounds how long Start waits for moto to answer.
	startTimeout = 30 * time.Second
	// stopTimeout bounds how long cleanup waits for moto to exit after SIGKILL.
	stopTimeout = 10 * time.Second
	// outputLimit is how much of moto's most recent output is kept for failure reports.
	outputLimit = 64 << 10
)

// Emulator is one moto server plus the counting, fault-injecting proxy in front of it.
// Create it with Start; stop it with Close.
type Emulator struct {
	// URL is the proxy's base URL (http://127.0.0.1:PORT). Code under test uses it.
	URL string
	// MotoURL is moto's own base URL, for setup and assertion calls that must not be
	// counted or faulted.
	MotoURL string
	// Region is the AWS region used throughout ("us-east-1").
	Region string

	moto      *motoProcess
	srv       *http.Server
	transport *http.Transport
	closeOnce sync.Once
	closeErr  error
	forward   http.Handler // reverse proxy to moto, behind the answers to what moto lacks (refresh.go)
	requestID atomic.Uint64

	mu        sync.Mutex
	counts    map[string]int
	sequence  []string                    // every action since ResetCounts, in order
	tokens    map[string]*idempotentEntry // EC2 ClientToken emulation (idempotency.go)
	forbidden []string                    // forbidden calls received (never reset)
	bodies    map[string][][]byte         // request bodies of mutating calls, by action

	dynamoWrites sync.Mutex // serialises DynamoDB writes (see serveHTTP)
	route53Mu    sync.Mutex // serialises Route 53 change batches (route53.go)
	mutating     []string
	faults       []*faultState
	faultCounts  map[FaultKind]int     // faults applied, by kind (FaultCounts)
	lifecycle    map[lifecycleKey]bool // true once the lifecycle action was completed
	completion   []LifecycleCall
	heartbeats   []LifecycleCall

	win windows // the state windows modelled on top of moto (windows.go)
	lat latency // the latency model, off unless SetLatency turned it on (latency.go)
}

// ErrNoMoto means moto_server was not found; the error that wraps it says where Start
// looked and how to get it.
var ErrNoMoto = errors.New("moto_server not found")

// MotoEnvVar names the environment variable that overrides where moto_server is.
const MotoEnvVar = motoEnvVar

// Start starts moto and the proxy. Close stops both.
//
// moto_server is taken from $SLOTKEEPER_MOTO_SERVER when set (and only from there),
// else <repo root>/.venv/bin/moto_server (the repo root is the nearest directory at
// or above the working directory that contains go.mod), else moto_server on PATH.
// When it cannot be found, the error wraps ErrNoMoto.
func Start() (*Emulator, error) {
	bin, tried := findMotoServer()
	if bin == "" {
		return nil, fmt.Errorf("%w (looked at: %s); run `make test`, which creates .venv with moto, "+
			"or set %s to a moto_server executable", ErrNoMoto, strings.Join(tried, ", "), motoEnvVar)
	}

	moto, err := startMoto(bin)
	if err != nil {
		return nil, fmt.Errorf("starting moto: %w", err)
	}
	motoURL, err := url.Parse(moto.url)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("parsing moto URL %s: %w", moto.url, err), moto.stop())
	}
	transport := &http.Transport{} // no Proxy field: never route loopback traffic via $HTTP_PROXY
	e := &Emulator{
		MotoURL:   moto.url,
		Region:    region,
		moto:      moto,
		transport: transport,
		counts:    map[string]int{},
		lifecycle: map[lifecycleKey]bool{},
		win:       windows{states: map[string]string{}, held: map[string]bool{}, group: map[string]GroupInstance{}},
	}
	e.forward = unimplemented{e: e, next: &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(motoURL) },
		Transport: transport,
	}}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("listening for the proxy: %w", err), moto.stop())
	}
	e.srv = &http.Server{Handler: http.HandlerFunc(e.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = e.srv.Serve(ln) }() // returns http.ErrServerClosed on Close
	e.URL = "http://" + ln.Addr().String()
	return e, nil
}

// Close stops the proxy, then moto's whole process group, and waits for moto to be
// reaped. It is safe to call more than once.
func (e *Emulator) Close() error {
	e.closeOnce.Do(func() {
		_ = e.srv.Close()
		e.transport.CloseIdleConnections()
		e.closeErr = e.moto.stop()
	})
	return e.closeErr
}

// MotoOutput returns moto's most recent output (at most 64 KiB), for failure reports.
func (e *Emulator) MotoOutput() string { return e.moto.output.String() }

// MotoPID returns the process id of moto_server (the leader of its process group).
func (e *Emulator) MotoPID() int { return e.moto.cmd.Process.Pid }

// forbiddenActions are the calls code under test must never make: slotkeeper never
// deletes a broker's data volume or its network interface. The proxy remembers them
// (Forbidden); test/harness fails every test whose code made one, so the whole suite
// proves it. Set-up and assertions that go to moto directly (DirectConfig) are not
// counted.
var forbiddenActions = map[string]bool{"DeleteVolume": true, "DeleteNetworkInterface": true}

// Forbidden returns the forbidden calls the proxy has received, in order; unlike the
// counts, ResetCounts does not clear them.
func (e *Emulator) Forbidden() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.forbidden...)
}

// AWSConfig returns a config for code under test: static credentials
// ("testing"/"testing"), the emulator region, BaseEndpoint = e.URL (the proxy), and a
// fast retryer (standard, 6 attempts, backoff capped at 50ms, no client-side retry
// quota) so that throttling tests finish quickly and deterministically.
func (e *Emulator) AWSConfig() aws.Config { return e.config(e.URL) }

// DirectConfig is AWSConfig with BaseEndpoint = e.MotoURL: calls bypass the proxy, so
// they are not counted and no fault applies. Use it for setup and assertions.
func (e *Emulator) DirectConfig() aws.Config { return e.config(e.MotoURL) }

func (e *Emulator) config(endpoint string) aws.Config {
	return aws.Config{
		Region:       e.Region,
		Credentials:  credentials.NewStaticCredentialsProvider("testing", "testing", ""),
		BaseEndpoint: aws.String(endpoint),
		Retryer: func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = 6
				o.MaxBackoff = 50 * time.Millisecond
				// The default token bucket would start failing calls with "retry quota
				// exceeded" after ~100 retries per client, which fault tests reach.
				o.RateLimiter = ratelimit.None
			})
		},
	}
}

// Env returns the environment variables a child process (for example a function
// binary) needs to talk to the proxy. Use it as append(os.Environ(), e.Env()...):
// later entries win.
func (e *Emulator) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL=" + e.URL,
		"AWS_REGION=" + e.Region,
		"AWS_ACCESS_KEY_ID=testing",
		"AWS_SECRET_ACCESS_KEY=testing",
		"AWS_XRAY_SDK_DISABLED=true",
	}
}

// findMotoServer returns the moto_server executable to run, or "" and the places it
// looked.
func findMotoServer() (string, []string) {
	if p := os.Getenv(motoEnvVar); p != "" {
		// An explicit setting is authoritative: falling back would hide a typo.
		if isExecutableFile(p) {
			return p, nil
		}
		return "", []string{"$" + motoEnvVar + "=" + p}
	}
	var tried []string
	if root, err := repoRoot(); err == nil {
		p := filepath.Join(root, ".venv", "bin", "moto_server")
		if isExecutableFile(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath("moto_server"); err == nil {
		return p, nil
	}
	return "", append(tried, "moto_server on PATH")
}

func isExecutableFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// repoRoot walks up from the working directory to the directory containing go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("getting working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// motoProcess is a running moto_server, in its own process group.
type motoProcess struct {
	url    string
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait returned
	output *tailBuffer   // moto's stdout and stderr (werkzeug logs each request there)
}

// startMoto starts moto_server on a free port and waits until it answers. The port
// is picked by binding :0 and releasing it, so another process can grab it in
// between; a start that fails because the address is in use is retried.
func startMoto(bin string) (*motoProcess, error) {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var m *motoProcess
		m, err = launchMoto(bin)
		if err == nil {
			return m, nil
		}
		if !strings.Contains(err.Error(), "Address already in use") {
			break
		}
	}
	return nil, err
}

func launchMoto(bin string) (*motoProcess, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	m := &motoProcess{
		url:    "http://127.0.0.1:" + strconv.Itoa(port),
		exited: make(chan struct{}),
		output: &tailBuffer{limit: outputLimit},
	}
	m.cmd = exec.Command(bin, "-H", "127.0.0.1", "-p", strconv.Itoa(port))
	m.cmd.Stdout = m.output
	m.cmd.Stderr = m.output
	m.cmd.SysProcAttr = sysProcAttr()
	m.cmd.WaitDelay = 2 * time.Second // do not hang on output pipes after the kill
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("running %s: %w", bin, err)
	}
	go func() {
		_ = m.cmd.Wait() // the exit status after our SIGKILL carries no information
		close(m.exited)
	}()
	if err := m.waitReady(); err != nil {
		stopErr := m.stop()
		return nil, errors.Join(err, stopErr)
	}
	return m, nil
}

// waitReady polls moto until it answers HTTP, it exits, or startTimeout passes.
func (m *motoProcess) waitReady() error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-m.exited:
			return fmt.Errorf("moto_server exited before answering (%v); output:\n%s", m.cmd.ProcessState, m.output.String())
		default:
		}
		resp, err := client.Get(m.url + "/moto-api/")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("moto_server at %s did not answer within %s (last error: %w); output:\n%s",
				m.url, startTimeout, err, m.output.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop kills moto's whole process group and waits for it to be reaped.
func (m *motoProcess) stop() error {
	select {
	case <-m.exited:
		return nil
	default:
	}
	pid := m.cmd.Process.Pid
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing moto process group %d: %w", pid, err)
	}
	select {
	case <-m.exited:
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("moto process %d did not exit within %s of SIGKILL", pid, stopTimeout)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		return 0, fmt.Errorf("releasing port %d: %w", port, err)
	}
	return port, nil
}

// tailBuffer is an io.Writer that keeps only the last limit bytes written to it.
type tailBuffer struct {
	mu    sync.Mutex
	limit int
	buf   []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 2*b.limit { // trim in batches, not on every write
		b.buf = append([]byte(nil), b.buf[len(b.buf)-b.limit:]...)
	}
	return len(p), nil
}

// ansiEscape matches the terminal colour codes werkzeug writes even to a pipe.
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// String returns the kept output, without terminal colour codes.
func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.buf
	if len(out) > b.limit {
		out = out[len(out)-b.limit:]
	}
	return ansiEscape.ReplaceAllString(string(out), "")
}
