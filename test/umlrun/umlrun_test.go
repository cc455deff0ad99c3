package umlrun

import (
	"os"
	"strconv"
	"strings"
	"testing"
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
