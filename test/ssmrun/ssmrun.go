// Package ssmrun runs the commands parameter of an AWS-RunShellScript command on this
// machine the way the SSM agent runs it on an instance, so that a test runs the exact
// text slotkeeper sends rather than comparing strings: the commands, one per line,
// are written to a script file (_script.sh, no interpreter line of its own) that
// /bin/sh runs as `sh -c <file>`, as the user the test runs as (root on CI, as the
// agent runs), with systemd's default PATH and no other environment but what the test
// adds; the exit status is the command's response code. Only tests import it.
package ssmrun

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SystemPath is the PATH the SSM agent's commands get under systemd.
const SystemPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Options adjust a run.
type Options struct {
	// PathPrefix goes before SystemPath (directories of stand-in commands).
	PathPrefix string
	// Env adds KEY=VALUE variables.
	Env []string
	// Timeout bounds the run (default 60 s); the whole process group is killed then
	// and the test fails.
	Timeout time.Duration
}

// Result is what the agent would report.
type Result struct {
	Stdout, Stderr string
	// ExitCode is the script's exit status (the invocation's ResponseCode).
	ExitCode int
	Took     time.Duration
}

// Success reports whether the agent would report the invocation Success.
func (r Result) Success() bool { return r.ExitCode == 0 }

// Run runs commands as the SSM agent does and returns the result. It fails the test
// only when the script cannot be started or does not end within the timeout.
func Run(t testing.TB, commands []string, opts Options) Result {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "_script.sh")
	if err := os.WriteFile(script, []byte(strings.Join(commands, "\n")+"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", script)
	cmd.Dir = dir
	path := SystemPath
	if opts.PathPrefix != "" {
		path = opts.PathPrefix + ":" + path
	}
	cmd.Env = append([]string{"PATH=" + path, "HOME=/root", "LANG=C.UTF-8"}, opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String(), Took: time.Since(start)}
	if ctx.Err() != nil {
		t.Fatalf("the script did not end within %s\nstdout:\n%s\nstderr:\n%s", timeout, res.Stdout, res.Stderr)
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
	case err != nil:
		t.Fatalf("running the script: %v", err)
	}
	return res
}
