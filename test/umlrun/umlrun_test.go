package umlrun

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A script runs as root with every capability, with loop devices, its output and
// status come back, and nothing of the guest is left running.
func TestRun(t *testing.T) {
	res := Run(t, `
set -eu
echo "uid=$(id -u) guest=$`+GuestEnv+` extra=$EXTRA"
grep CapEff /proc/self/status
losetup -f
echo to-stderr >&2
exit 3
`, Options{Env: []string{"EXTRA=a b'c"}})
	t.Logf("took %s, stdout %q, stderr %q", res.Took, res.Stdout, res.Stderr)
	if res.ExitCode != 3 {
		t.Errorf("exit %d, want 3; console:\n%s", res.ExitCode, res.Console)
	}
	for _, want := range []string{"uid=0 guest=1 extra=a b'c\n", "CapEff:\t000001ffffffffff", "/dev/loop0"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("stdout %q lacks %q", res.Stdout, want)
		}
	}
	if res.Stderr != "to-stderr\n" {
		t.Errorf("stderr %q", res.Stderr)
	}
	if res.PID == 0 {
		t.Fatal("no process id")
	}
	if left := group(t, res.PID); len(left) > 0 {
		t.Errorf("processes of the UML group %d left running: %v", res.PID, left)
	}
}

// group lists the processes of process group pgid.
func group(t *testing.T, pgid int) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so count after ')'.
		_, rest, _ := strings.Cut(string(stat), ") ")
		if f := strings.Fields(rest); len(f) > 2 && f[2] == strconv.Itoa(pgid) {
			out = append(out, e.Name()+" "+string(stat[:strings.Index(string(stat), ")")+1]))
		}
	}
	return out
}

// recordingTB stands in for a testing.TB to observe Fatal and Skip without failing or
// skipping the real test, and the temporary directories made; like the real ones
// Fatal and Skip end the goroutine (use record).
type recordingTB struct {
	testing.TB
	fatal, skip string
	dirs        []string
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recordingTB) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *recordingTB) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recordingTB) TempDir() string {
	d := r.TB.TempDir()
	r.dirs = append(r.dirs, d)
	return d
}

func record(t *testing.T, fn func(testing.TB)) *recordingTB {
	r := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	return r
}

// Each missing piece is named with the package that brings it; under CI=true the
// test fails instead of skipping.
func TestRequireSaysWhatIsMissing(t *testing.T) {
	oldKernel, oldInsmod := kernel, insmod
	kernel, insmod = "/nonexistent/linux.uml", "insmod-nonesuch"
	t.Cleanup(func() { kernel, insmod = oldKernel, oldInsmod })
	for _, ci := range []string{"true", "", "1"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv("CI", ci)
			rec := record(t, func(tb testing.TB) { Require(tb) })
			msg := rec.skip
			if ci == "true" {
				msg = rec.fatal
				if rec.skip != "" {
					t.Errorf("skipped under CI=true: %q", rec.skip)
				}
			} else if rec.fatal != "" {
				t.Errorf("failed outside CI: %q", rec.fatal)
			}
			for _, want := range []string{"/nonexistent/linux.uml missing (package user-mode-linux)", "insmod missing (package kmod)", "apt-get install user-mode-linux kmod", "make test"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not say %q", msg, want)
				}
			}
		})
	}
}

// A guest that does not end within the timeout fails the test, and is killed with
// every process of its group.
func TestTimeoutKillsTheGuest(t *testing.T) {
	Require(t)
	rec := record(t, func(tb testing.TB) { Run(tb, "sleep 600\n", Options{Timeout: 5 * time.Second}) })
	if !strings.Contains(rec.fatal, "did not end within 5s") {
		t.Fatalf("fatal %q, want a timeout", rec.fatal)
	}
	if len(rec.dirs) == 0 {
		t.Fatal("Run made no temporary directory")
	}
	// UML's processes run with HOME set to the run's directory.
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && slices.Contains(strings.Split(string(env), "\x00"), "HOME="+rec.dirs[0]) {
			t.Errorf("process %s of the timed-out guest still runs", e.Name())
		}
	}
}
