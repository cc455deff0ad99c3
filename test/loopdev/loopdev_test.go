package loopdev

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// recordingTB stands in for a testing.TB to observe Fatal and Skip without failing or
// skipping the real test; like the real ones they end the goroutine (use record).
type recordingTB struct {
	testing.TB
	fatal, skip string
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recordingTB) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
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

// A missing tool is named with the package that brings it; under CI=true the test
// fails instead of skipping.
func TestRequireSaysWhatIsMissing(t *testing.T) {
	packages["xfs_nonesuch"] = "xfsprogs-nonesuch"
	t.Cleanup(func() { delete(packages, "xfs_nonesuch") })
	for _, ci := range []string{"true", "", "1"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv("CI", ci)
			rec := record(t, func(tb testing.TB) { Require(tb, "xfs_nonesuch") })
			msg := rec.skip
			if ci == "true" {
				msg = rec.fatal
				if rec.skip != "" {
					t.Errorf("skipped under CI=true: %q", rec.skip)
				}
			} else if rec.fatal != "" {
				t.Errorf("failed outside CI: %q", rec.fatal)
			}
			for _, want := range []string{"xfs_nonesuch (package xfsprogs-nonesuch)", "apt-get install", "make test"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not say %q", msg, want)
				}
			}
		})
	}
	if p := Problems(); len(p) == 0 {
		t.Logf("this machine has loop devices and the base tools")
	} else {
		t.Logf("this machine lacks: %s", strings.Join(p, "; "))
	}
}

const helperEnv = "SLOTKEEPER_LOOPDEV_HELPER"

// TestCleanupHelper is the child process of TestCleanupWhateverHappens: it makes a
// device, mounts it, prints where, and then ends as its mode says.
func TestCleanupHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("the child process of TestCleanupWhateverHappens; runs only there")
	}
	d := New(t, 64*MiB)
	d.Format("ext4")
	mnt := t.TempDir()
	d.Mount(mnt)
	WriteFiles(t, mnt, 2, 4096)
	fmt.Printf("LOOPDEV %s %s %s\n", d.Path(), d.Image(), mnt)
	_ = os.Stdout.Sync()
	switch mode {
	case "pass":
	case "fatal":
		t.Fatal("the test fails half-way")
	case "panic":
		panic("the test panics half-way")
	case "killed":
		time.Sleep(time.Minute) // the parent kills the process meanwhile
	}
}

// Whatever happens to a test, its devices go: after a pass, a t.Fatal or a panic the
// mount, the loop device and the image are gone; a test binary killed outright leaves
// them behind, and the next New sweeps them.
func TestCleanupWhateverHappens(t *testing.T) {
	Require(t, "mkfs.ext4")
	if os.Getenv(helperEnv) != "" {
		t.Skip("in the child process")
	}
	for _, mode := range []string{"pass", "fatal", "panic", "killed"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestCleanupHelper$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), helperEnv+"="+mode)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var dev, image, mnt string
			var out strings.Builder
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				line := sc.Text()
				out.WriteString(line + "\n")
				if f := strings.Fields(line); len(f) == 4 && f[0] == "LOOPDEV" {
					dev, image, mnt = f[1], f[2], f[3]
					if mode == "killed" {
						_ = cmd.Process.Signal(syscall.SIGKILL)
					}
				}
			}
			err = cmd.Wait()
			if dev == "" {
				t.Fatalf("the child printed no device (%v):\n%s%s", err, out.String(), stderr.String())
			}
			if (err == nil) != (mode == "pass") {
				t.Errorf("child ended with %v in mode %s:\n%s", err, mode, out.String())
			}
			t.Logf("mode %s: child used %s (%s), mounted at %s; ended with %v", mode, dev, filepath.Base(image), mnt, err)

			if mode == "killed" {
				// Nothing ran its cleanups: the device is still attached and mounted.
				if !attached(dev, image) || !IsMountPoint(mnt) {
					t.Fatalf("a killed child left nothing behind? attached %v, mounted %v", attached(dev, image), IsMountPoint(mnt))
				}
				sweepOnce = sync.Once{} // as in a fresh test binary
				New(t, 64*MiB)
				t.Cleanup(func() {
					if !IsMountPoint(mnt) { // never remove files from a mounted filesystem
						_ = os.RemoveAll(filepath.Dir(filepath.Dir(image)))
						_ = os.RemoveAll(filepath.Dir(mnt))
					}
				})
			}
			if attached(dev, image) {
				t.Errorf("%s is still attached to %s", dev, image)
			}
			if IsMountPoint(mnt) {
				t.Errorf("%s is still mounted", mnt)
			}
			if _, err := os.Stat(image); !os.IsNotExist(err) {
				t.Errorf("image %s still exists (%v)", image, err)
			}
		})
	}
}

func TestSumsDiff(t *testing.T) {
	before := Sums{"a/1.log": "aaaa", "a/2.log": "bbbb", "b/3.log": "cccc"}
	after := Sums{"a/1.log": "aaaa", "a/2.log": "bbbx", "new": "dddd"}
	got := before.Diff(after)
	want := []string{"a/2.log: sha256 bbbx, was bbbb", "b/3.log: missing"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("Diff = %q, want %q", got, want)
	}
	if d := before.Diff(before); len(d) != 0 {
		t.Errorf("a set differs from itself: %q", d)
	}
	if before.String() == after.String() || before.String() != (Sums{"b/3.log": "cccc", "a/2.log": "bbbb", "a/1.log": "aaaa"}).String() {
		t.Errorf("String does not identify the set: %s / %s", before, after)
	}
}

// Product binaries (the functions, slotctl) never link the block-device test helpers.
func TestNotLinkedByProductBinaries(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../../functions/...", "../../cmd/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list found %d packages: %q", len(deps), deps)
	}
	for _, dep := range deps {
		if strings.HasSuffix(dep, "/test/loopdev") || strings.HasSuffix(dep, "/test/ssmrun") || strings.HasSuffix(dep, "/test/umlrun") {
			t.Errorf("a product binary links %s", dep)
		}
	}
}
