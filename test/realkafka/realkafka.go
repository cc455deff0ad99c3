// Package realkafka runs Apache Kafka itself on this machine: KRaft nodes as JVM
// processes on 127.0.0.1, started from the runtime that scripts/kafka-runtime.sh
// fetches from Maven Central (make kafka-runtime). The tests use it for every Kafka
// decision that depends on ISR, registration or timing, and `slotctl demo --kafka
// real` for its story. It does not import package testing: the demo links it.
//
// Server is one Kafka process started from a server.properties file, which can be
// stopped (SIGTERM: a controlled shutdown), killed (SIGKILL), hung (SIGSTOP) and
// resumed (SIGCONT). Start starts a cluster of combined broker+controller nodes on
// free loopback ports with short failure-detection timeouts, so that ISR changes
// happen within seconds:
//
//	c, err := realkafka.Start(ctx, realkafka.Options{Nodes: 3})
//	defer c.Close()
//	c.Nodes[1].Pause()      // broker 1 hangs
//
// Every process is started with a parent-death signal (Linux): a test binary that
// dies without cleaning up (a go test -timeout panic) takes its JVMs with it.
package realkafka

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Version is the Apache Kafka version scripts/kafka-runtime.pom.xml pins.
const Version = "4.4.0"

// Environment variables that locate the runtime.
const (
	// RuntimeEnv names a directory whose lib/ holds the runtime's jars; it wins over
	// the cache.
	RuntimeEnv = "SLOTKEEPER_KAFKA_RUNTIME"
	// CacheEnv names the cache scripts/kafka-runtime.sh fills (default
	// <repository>/.cache/kafka); the runtime is its <Version> directory.
	CacheEnv = "SLOTKEEPER_KAFKA_CACHE"
)

// ErrNoRuntime means Kafka's runtime (or java) is not on this machine.
var ErrNoRuntime = errors.New("apache Kafka's runtime is not available")

// Runtime returns the directory whose lib/ holds Kafka's jars: $SLOTKEEPER_KAFKA_RUNTIME,
// else <cache>/<Version>, with the cache $SLOTKEEPER_KAFKA_CACHE or the .cache/kafka
// directory of the repository around the working directory. The error wraps
// ErrNoRuntime when the runtime or java is missing, and says how to get them.
func Runtime() (string, error) {
	if _, err := exec.LookPath("java"); err != nil {
		return "", fmt.Errorf("%w: java is not on PATH (Kafka %s needs Java 17 or newer)", ErrNoRuntime, Version)
	}
	dir := os.Getenv(RuntimeEnv)
	if dir == "" {
		cache := os.Getenv(CacheEnv)
		if cache == "" {
			root, err := repoRoot()
			if err != nil {
				return "", fmt.Errorf("%w: %w; set %s or %s", ErrNoRuntime, err, RuntimeEnv, CacheEnv)
			}
			cache = filepath.Join(root, ".cache", "kafka")
		}
		dir = filepath.Join(cache, Version)
	}
	jar := filepath.Join(dir, "lib", "kafka_2.13-"+Version+".jar")
	if _, err := os.Stat(jar); err != nil {
		return "", fmt.Errorf("%w: %s is missing; run `make kafka-runtime` (scripts/kafka-runtime.sh fetches it from Maven Central)", ErrNoRuntime, jar)
	}
	return dir, nil
}

// repoRoot is the nearest directory at or above the working directory with a go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
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

// JVM settings of every process: a small heap and the quickest start. Kafka on
// loopback with a few topics needs little; these keep a node near 300 MiB RSS.
var jvmFlags = []string{
	"-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData", "-Xss512k",
	"-Djava.awt.headless=true", "-Dlog4j2.formatMsgNoLookups=true",
}

// DefaultHeap is the maximum heap of a node unless Options or Server say otherwise.
const DefaultHeap = "384m"

// log4jConfig sends Kafka's log to <dir>/server.log; the pattern is what Warnings reads.
const log4jConfig = `status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d{ISO8601}] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.raft.name = org.apache.kafka.raft
logger.raft.level = WARN
`

// Server is one Kafka process. Its methods are safe for concurrent use.
type Server struct {
	// Dir holds the process's files: server.log (Kafka's log), stdout.log, and the
	// log4j configuration. The data directory is whatever the properties say.
	Dir string
	// Config is the server.properties path.
	Config string
	// Runtime is the directory whose lib/ holds Kafka's jars.
	Runtime string
	// Heap is the maximum heap (-Xmx), DefaultHeap when empty.
	Heap string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	exitErr error
	paused  bool
}

// NewServer returns a Server for the properties file config, keeping its files in dir.
func NewServer(runtime, dir, config string) *Server {
	return &Server{Dir: dir, Config: config, Runtime: runtime}
}

func (s *Server) classpath() string { return filepath.Join(s.Runtime, "lib", "*") }

func (s *Server) java(args ...string) (*exec.Cmd, error) {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, err
	}
	l4j := filepath.Join(s.Dir, "log4j2.properties")
	if err := os.WriteFile(l4j, []byte(log4jConfig), 0o644); err != nil {
		return nil, err
	}
	heap := s.Heap
	if heap == "" {
		heap = DefaultHeap
	}
	all := append(slices.Clone(jvmFlags), "-Xmx"+heap, "-Xms64m",
		"-Dlog4j2.configurationFile="+l4j, "-Dkafka.logs.dir="+s.Dir, "-cp", s.classpath())
	cmd := exec.Command("java", append(all, args...)...)
	cmd.SysProcAttr = sysProcAttr()
	cmd.Dir = s.Dir
	return cmd, nil
}

// Format formats the storage of the server's properties (kafka-storage format) for
// the KRaft cluster clusterID. extra are further arguments, for example
// "--feature", "eligible.leader.replicas.version=0", or "--ignore-formatted". It
// returns the tool's output.
func (s *Server) Format(ctx context.Context, clusterID string, extra ...string) (string, error) {
	cmd, err := s.java(append([]string{"kafka.tools.StorageTool", "format", "--cluster-id", clusterID, "--config", s.Config}, extra...)...)
	if err != nil {
		return "", err
	}
	out, err := runCtx(ctx, cmd)
	if err != nil {
		return out, fmt.Errorf("formatting the storage of %s: %w\n%s", s.Config, err, out)
	}
	return out, nil
}

// runCtx runs cmd, killing it when ctx ends, and returns its combined output.
func runCtx(ctx context.Context, cmd *exec.Cmd) (string, error) {
	var buf strings.Builder
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return buf.String(), err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return buf.String(), errors.Join(ctx.Err(), <-done)
	}
}

// Start starts the Kafka process (kafka.Kafka <config>) and returns at once; see
// Cluster.WaitRegistered for readiness. Starting a running server is an error.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil && !closed(s.done) {
		return fmt.Errorf("kafka %s is already running (pid %d)", s.Config, s.cmd.Process.Pid)
	}
	cmd, err := s.java("kafka.Kafka", s.Config)
	if err != nil {
		return err
	}
	out, err := os.OpenFile(filepath.Join(s.Dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("starting kafka %s: %w", s.Config, err)
	}
	s.cmd, s.done, s.exitErr, s.paused = cmd, make(chan struct{}), nil, false
	done := s.done
	go func() {
		err := cmd.Wait()
		out.Close()
		s.mu.Lock()
		s.exitErr = err
		s.mu.Unlock()
		close(done)
	}()
	return nil
}

func closed(ch chan struct{}) bool {
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// PID is the running process's id, 0 when none runs.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || closed(s.done) {
		return 0
	}
	return s.cmd.Process.Pid
}

// Running reports whether the process runs (a paused process runs).
func (s *Server) Running() bool { return s.PID() != 0 }

// Exited returns a channel closed when the current process exits, and a function
// returning its exit error then (nil for status 0). Without a process, the channel
// is already closed.
func (s *Server) Exited() (<-chan struct{}, func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	done := s.done
	if done == nil {
		done = make(chan struct{})
		close(done)
	}
	return done, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.exitErr
	}
}

// Signal sends sig to the running process.
func (s *Server) Signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || closed(s.done) {
		return fmt.Errorf("kafka %s is not running", s.Config)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signalling kafka %s: %w", s.Config, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		s.paused = true
	case syscall.SIGCONT:
		s.paused = false
	}
	return nil
}

// Pause hangs the process (SIGSTOP): it keeps its sockets but answers nothing.
func (s *Server) Pause() error { return s.Signal(syscall.SIGSTOP) }

// Resume continues a paused process (SIGCONT).
func (s *Server) Resume() error { return s.Signal(syscall.SIGCONT) }

// Stop shuts the server down as systemctl stop does: SIGTERM (a controlled shutdown:
// Kafka hands its leaderships over and deregisters), then waits up to timeout for
// the exit, then SIGKILL. A paused process is resumed first. Stopping a server that
// does not run does nothing.
func (s *Server) Stop(timeout time.Duration) error {
	done, exitErr := s.Exited()
	if closed(s.done) {
		return nil
	}
	s.mu.Lock()
	paused := s.paused
	s.mu.Unlock()
	if paused {
		_ = s.Resume()
	}
	if err := s.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-done:
		var ee *exec.ExitError
		if err := exitErr(); err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 143) {
			return fmt.Errorf("kafka %s exited after SIGTERM: %w", s.Config, err)
		}
		return nil
	case <-time.After(timeout):
		_ = s.Kill()
		return fmt.Errorf("kafka %s did not stop within %s of SIGTERM; killed", s.Config, timeout)
	}
}

// Kill kills the process (SIGKILL) and waits for it to be gone.
func (s *Server) Kill() error {
	done, _ := s.Exited()
	if closed(s.done) {
		return nil
	}
	if err := s.Signal(syscall.SIGKILL); err != nil && !closed(s.done) {
		return err
	}
	select {
	case <-done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("kafka %s did not die within 30s of SIGKILL", s.Config)
	}
}

// LogPath is the path of Kafka's log.
func (s *Server) LogPath() string { return filepath.Join(s.Dir, "server.log") }

// LogTail returns the last n lines of Kafka's log and stdout, for failure reports.
func (s *Server) LogTail(n int) string {
	var b strings.Builder
	for _, f := range []string{s.LogPath(), filepath.Join(s.Dir, "stdout.log")} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		fmt.Fprintf(&b, "--- %s (last %d lines)\n%s\n", f, min(n, len(lines)), strings.Join(lines[max(0, len(lines)-n):], "\n"))
	}
	return b.String()
}

// RSS is the process's resident set size in bytes (Linux; 0 elsewhere or when it
// does not run).
func (s *Server) RSS() int64 {
	pid := s.PID()
	if pid == 0 {
		return 0
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// Warnings returns the WARN and ERROR lines of Kafka's log that contain any of words
// (all of them when words is empty).
func (s *Server) Warnings(words ...string) ([]string, error) {
	f, err := os.Open(s.LogPath())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		_, rest, ok := strings.Cut(line, "] ")
		if !ok || !(strings.HasPrefix(rest, "WARN ") || strings.HasPrefix(rest, "ERROR ")) {
			continue
		}
		if len(words) == 0 || slices.ContainsFunc(words, func(w string) bool { return strings.Contains(line, w) }) {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// WriteProperties writes props as a server.properties file, keys sorted.
func WriteProperties(path string, props map[string]string) error {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(props)) {
		fmt.Fprintf(&b, "%s=%s\n", k, props[k])
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// ReadProperties parses a server.properties file (key=value lines, # comments).
func ReadProperties(r io.Reader) (map[string]string, error) {
	props := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("not a property line: %q", line)
		}
		props[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return props, sc.Err()
}

// RunTool runs one of Kafka's command-line tools (a main class of the runtime, for
// example org.apache.kafka.tools.TopicCommand) and returns its combined output.
func RunTool(ctx context.Context, runtime, class string, args ...string) (string, error) {
	s := &Server{Runtime: runtime, Heap: "256m"}
	dir, err := os.MkdirTemp("", "slotkeeper-kafka-tool-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	s.Dir = dir
	cmd, err := s.java(append([]string{class}, args...)...)
	if err != nil {
		return "", err
	}
	out, err := runCtx(ctx, cmd)
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", class, strings.Join(args, " "), err, out)
	}
	return out, nil
}
