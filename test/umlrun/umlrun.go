// Package umlrun runs a shell script as root inside a User-Mode Linux guest: a Linux
// kernel (Debian's user-mode-linux, /usr/bin/linux.uml) that runs as an ordinary
// process of this machine and boots in a couple of seconds with this machine's own
// root directory as its root filesystem (hostfs), so the script sees the same files,
// tools and test binaries. Only tests import it.
//
// It exists for what a container's root may not do: the guest is a kernel of its own,
// so its root holds every capability (a container commonly drops CAP_SYS_RESOURCE,
// without which the kernel refuses ext4's online resize even to root), and the guest
// has loop devices (loop.ko from user-mode-linux, loaded with insmod before the script
// runs) that are its own, not the host's.
//
// The script runs as root under /bin/sh in the guest, in this process's working
// directory, with PATH set to the system directories, TMPDIR a fresh directory in the
// test's temporary directory (reached through hostfs, removed with it) and the
// variables of Options.Env. Images for the guest's loop devices go there: a loop
// device over a hostfs file works without the kernel's complaints about
// WRITE_ZEROES that one over the guest's tmpfs prints, and takes no guest memory.
// Its standard output, standard error and exit status come back through files in the
// test's temporary directory, which the guest writes through hostfs. The kernel's own
// messages are kept apart (Result.Console).
//
// The guest's memory is a file UML creates in TMPDIR (by default /dev/shm) and maps
// executable: it is put in the test's temporary directory, which must therefore be on
// a filesystem that is writable and not mounted noexec (the usual /tmp is; override
// with TMPDIR otherwise).
//
// Whatever happens (the script ends, the guest panics, the timeout passes, the test
// fails), the UML process group is killed and waited for: UML runs a process per
// guest address space plus helpers, all in the group Run starts, and none outlives
// Run. Should the test binary itself be killed before that, the guest still ends by
// itself: its init kills the script at the timeout (timeout(1)) and powers off.
//
// Require reports exactly what is missing (linux.uml, insmod, loop.ko) and the Debian
// package that brings it; the test is skipped, except under CI=true, where it fails.
// `make test` installs the packages when it runs as root (scripts/test-tools.sh).
package umlrun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Kernel is the User-Mode Linux kernel Debian's user-mode-linux package installs.
const Kernel = "/usr/bin/linux.uml"

// kernel, moduleGlob and insmod are what Problems looks for (variables so that its
// own test can make them missing). moduleGlob finds the guest's loop driver (the
// directory is the guest kernel's release, which the guest's uname -r prints).
var (
	kernel     = Kernel
	moduleGlob = "/usr/lib/uml/modules/*/kernel/drivers/block/loop.ko"
	insmod     = "insmod"
)

// SystemPath is the PATH the script gets.
const SystemPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Problems lists what this machine lacks to run a guest; empty when nothing is
// missing.
func Problems() []string {
	if runtime.GOOS != "linux" {
		return []string{"User-Mode Linux needs a Linux host, this is " + runtime.GOOS}
	}
	var out []string
	if st, err := os.Stat(kernel); err != nil || st.Mode()&0o111 == 0 {
		out = append(out, kernel+" missing (package user-mode-linux)")
	} else if m, _ := filepath.Glob(moduleGlob); len(m) == 0 {
		out = append(out, "no loop.ko for the guest kernel ("+moduleGlob+", package user-mode-linux)")
	}
	if tool(insmod) == "" {
		out = append(out, "insmod missing (package kmod)")
	}
	if len(out) > 0 {
		out = append(out, "`make test` installs them when run as root (scripts/test-tools.sh), or: apt-get install user-mode-linux kmod")
	}
	return out
}

// Require ends the test unless this machine can run a guest: it skips, or under
// CI=true fails, naming each missing piece.
func Require(t testing.TB) {
	t.Helper()
	problems := Problems()
	if len(problems) == 0 {
		return
	}
	msg := "User-Mode Linux unavailable: " + strings.Join(problems, "; ")
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s", msg)
	}
	t.Skipf("skipping (CI=true would fail): %s", msg)
}

// GuestEnv is set to 1 in the script's environment: code that may run on the host or
// in a guest tells which with InGuest.
const GuestEnv = "SLOTKEEPER_UML_GUEST"

// InGuest reports whether this process runs inside a guest that Run started.
func InGuest() bool { return os.Getenv(GuestEnv) == "1" }

// Options adjust a run.
type Options struct {
	// Env adds KEY=VALUE variables to the script's environment.
	Env []string
	// Timeout bounds the whole run, boot included (default 2 min); the guest is
	// killed then and the test fails.
	Timeout time.Duration
	// MemMiB is the guest's memory (default 512).
	MemMiB int
}

// Result is how the script ended.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
	// Console is what the guest kernel and its init printed (boot messages, panics).
	Console string
	Took    time.Duration
	// PID is the UML kernel's host process id, also its process group's id: no
	// process of that group runs once Run has returned.
	PID int
}

// Success reports whether the script exited 0.
func (r Result) Success() bool { return r.ExitCode == 0 }

// init is the guest's first process: it mounts /proc, /sys and /dev (unless the
// kernel did), loads the loop driver, runs the script with its output in files on the host, records the script's
// status last, flushes hostfs and powers the guest off.
const initScript = `#!/bin/sh
export PATH=` + SystemPath + `
{ mountpoint -q /proc || mount -t proc proc /proc; } &&
	{ mountpoint -q /sys || mount -t sysfs sys /sys; } &&
	{ mountpoint -q /dev || mount -t devtmpfs dev /dev; } &&
	insmod /usr/lib/uml/modules/$(uname -r)/kernel/drivers/block/loop.ko || {
	echo "umlrun: guest setup failed" >"$UMLRUN_DIR/setup-failed"
	sync
	poweroff -f
}
(
	cd "$UMLRUN_CWD" || exit 125
	export TMPDIR="$UMLRUN_TMP" HOME=/root LANG=C.UTF-8
	. "$UMLRUN_DIR/env"
	exec timeout -k 2 "$UMLRUN_TIMEOUT" /bin/sh "$UMLRUN_DIR/script.sh" <` + "/dev/null" + ` >"$UMLRUN_DIR/stdout" 2>"$UMLRUN_DIR/stderr"
)
echo $? >"$UMLRUN_DIR/status.tmp" && mv "$UMLRUN_DIR/status.tmp" "$UMLRUN_DIR/status"
sync
poweroff -f
`

// Run boots a guest, runs script in it as root and returns how it ended. It fails the
// test when the guest cannot be started, its setup fails or it does not end within
// the timeout; a script that fails is a Result, not a test failure.
func Run(t testing.TB, script string, opts Options) Result {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	scratch := filepath.Join(dir, "guest-tmp") // the script's TMPDIR
	if err := os.Mkdir(scratch, 0o700); err != nil {
		t.Fatal(err)
	}
	memDir := memoryDir(t, dir)
	var env strings.Builder
	for _, kv := range append([]string{GuestEnv + "=1"}, opts.Env...) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\n=$'\"") {
			t.Fatalf("umlrun: bad environment entry %q", kv)
		}
		fmt.Fprintf(&env, "export %s=%s\n", k, shellQuote(v))
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	// The guest's init learns the paths from its own text (the kernel command line
	// splits at spaces).
	vars := fmt.Sprintf("UMLRUN_DIR=%s UMLRUN_CWD=%s UMLRUN_TMP=%s UMLRUN_TIMEOUT=%d\n",
		shellQuote(dir), shellQuote(cwd), shellQuote(scratch), int(timeout.Seconds())+5) // after the host's kill
	init := strings.Replace(initScript, "\n", "\n"+vars, 1)
	for name, content := range map[string]string{"init.sh": init, "script.sh": script, "env": env.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	mem := opts.MemMiB
	if mem == 0 {
		mem = 512
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, kernel,
		"mem="+strconv.Itoa(mem)+"M", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw",
		"init="+filepath.Join(dir, "init.sh"), "con=null", "con0=null,fd:1", "quiet")
	// UML keeps its pid file and control socket under $HOME/.uml (and panics without
	// HOME): here, in the test's directory.
	cmd.Env = []string{"PATH=" + SystemPath, "TMPDIR=" + memDir, "HOME=" + dir}
	cmd.Stdin = nil
	var console bytes.Buffer
	cmd.Stdout, cmd.Stderr = &console, &console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	runErr := cmd.Run()
	took := time.Since(start)
	pid := 0
	if cmd.Process != nil {
		pid = cmd.Process.Pid
		reap(t, pid)
	}
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return string(b)
	}
	res := Result{Stdout: read("stdout"), Stderr: read("stderr"), Console: console.String(), Took: took, PID: pid}
	switch status := strings.TrimSpace(read("status")); {
	case ctx.Err() != nil:
		t.Fatalf("umlrun: the guest did not end within %s\nscript stdout:\n%s\nscript stderr:\n%s\nconsole:\n%s", timeout, res.Stdout, res.Stderr, tail(res.Console))
	case read("setup-failed") != "":
		t.Fatalf("umlrun: the guest could not mount its filesystems or load loop.ko\nconsole:\n%s", tail(res.Console))
	case status == "":
		t.Fatalf("umlrun: the guest ended (%v) without the script's exit status\nscript stdout:\n%s\nscript stderr:\n%s\nconsole:\n%s", runErr, res.Stdout, res.Stderr, tail(res.Console))
	default:
		if res.ExitCode, err = strconv.Atoi(status); err != nil {
			t.Fatalf("umlrun: exit status %q", status)
		}
	}
	return res
}

// memoryDir returns a new directory for the guest's memory file: on /dev/shm when it
// is a writable tmpfs that allows executable mappings (memory in memory), else in
// dir (UML then warns that its tempdir is not on tmpfs, and works). It is removed
// when the test ends.
func memoryDir(t testing.TB, dir string) string {
	t.Helper()
	const tmpfsMagic, stNoexec = 0x01021994, 0x8
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err == nil && st.Type == tmpfsMagic && st.Flags&stNoexec == 0 {
		if d, err := os.MkdirTemp("/dev/shm", "slotkeeper-uml-"); err == nil {
			t.Cleanup(func() { _ = os.RemoveAll(d) })
			return d
		}
	}
	d := filepath.Join(dir, "mem")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// reap kills whatever is left of the UML process group pgid and waits until it is
// gone: UML's helper processes may outlive the kernel's main process.
func reap(t testing.TB, pgid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := syscall.Kill(-pgid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("umlrun: processes of group %d still run 10 s after SIGKILL: %v", pgid, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tool returns the path of a command on PATH or in an sbin directory; "" when it is
// nowhere.
func tool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// tail keeps the end of the console: a panic or the last failure is there.
func tail(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-40):], "\n")
}
