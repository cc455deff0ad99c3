// Package loopdev gives tests real block devices: a sparse image file attached as a
// loop device, then formatted, mounted, grown and unmounted with the system's own
// tools (losetup, mkfs, mount), through the same kernel paths a broker's EBS volume
// goes through. Only tests import it.
//
// Every device is cleaned up whatever happens to its test (pass, failure, t.Fatal,
// panic): each mount of it is unmounted, it is detached, its image removed. A test
// binary killed before its cleanups ran (a timeout, a SIGKILL) leaves its devices
// attached; the next New on the machine sweeps those of dead processes, and only
// those: images are named slotkeeper-loop-<pid>-*.img, and a device whose pid still
// runs belongs to another test run.
//
// Loop devices need Linux, root and util-linux; the filesystems need xfsprogs and
// e2fsprogs. Require reports exactly what is missing and the Debian package that
// brings it; the test is skipped, except under CI=true, where it fails (a CI that
// silently skipped these tests would not test the disk scripts at all). `make test`
// installs the packages when it runs as root (scripts/test-tools.sh).
package loopdev

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// MiB is a mebibyte, for image sizes.
const MiB = 1 << 20

// MinXFSBytes is the smallest device mkfs.xfs formats (xfsprogs 5.19 and later
// refuse anything under 300 MiB).
const MinXFSBytes = 300 * MiB

// packages names the Debian package that brings each tool the tests use.
var packages = map[string]string{
	"losetup": "mount", "mount": "mount", "umount": "mount",
	"blockdev": "util-linux", "findmnt": "util-linux", "blkid": "util-linux", "mountpoint": "util-linux",
	"mkfs.xfs": "xfsprogs", "xfs_growfs": "xfsprogs", "xfs_repair": "xfsprogs",
	"mkfs.ext4": "e2fsprogs", "resize2fs": "e2fsprogs", "e2fsck": "e2fsprogs",
	"fuser": "psmisc", "curl": "curl",
	"df": "coreutils", "sync": "coreutils", "awk": "mawk",
}

// baseTools are the tools every device needs.
var baseTools = []string{"losetup", "blockdev", "mount", "umount", "findmnt", "blkid", "sync"}

// FSTools returns the tools that make, grow and check a filesystem of type fstype
// (xfs or ext4).
func FSTools(fstype string) []string {
	switch fstype {
	case "xfs":
		return []string{"mkfs.xfs", "xfs_growfs", "xfs_repair"}
	case "ext4":
		return []string{"mkfs.ext4", "resize2fs", "e2fsck"}
	}
	return []string{"mkfs." + fstype}
}

// sbinDirs are searched after PATH: root's tools live there, and a test's PATH may
// lack them.
var sbinDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// Tool returns the path of a command: on PATH, else in an sbin directory; "" when
// it is nowhere.
func Tool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range sbinDirs {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// Problems lists what this machine lacks for loop devices and the given tools; empty
// when nothing is missing.
func Problems(tools ...string) []string {
	var out []string
	if runtime.GOOS != "linux" {
		return []string{"loop devices need Linux, this is " + runtime.GOOS}
	}
	if uid := os.Geteuid(); uid != 0 {
		out = append(out, fmt.Sprintf("loop devices, mkfs and mount need root; the tests run as uid %d", uid))
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		out = append(out, "no /dev/loop-control: the kernel has no loop device support (modprobe loop), or /dev is not the host's")
	}
	byPackage := map[string][]string{}
	for _, tool := range slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(baseTools), tools...)))) {
		if Tool(tool) == "" {
			pkg := packages[tool]
			if pkg == "" {
				pkg = "?"
			}
			byPackage[pkg] = append(byPackage[pkg], tool)
		}
	}
	if len(byPackage) > 0 {
		var missing, pkgs []string
		for _, pkg := range slices.Sorted(maps.Keys(byPackage)) {
			missing = append(missing, fmt.Sprintf("%s (package %s)", strings.Join(byPackage[pkg], ", "), pkg))
			if pkg != "?" {
				pkgs = append(pkgs, pkg)
			}
		}
		out = append(out, fmt.Sprintf("missing tools: %s; `make test` installs them when run as root (scripts/test-tools.sh), or: apt-get install %s",
			strings.Join(missing, "; "), strings.Join(pkgs, " ")))
	}
	return out
}

// Require ends the test unless this machine can give it loop devices and has the
// tools (command names) it needs: it skips, or under CI=true fails, naming each
// missing piece.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	problems := Problems(tools...)
	if len(problems) == 0 {
		return
	}
	msg := "real block devices unavailable: " + strings.Join(problems, "; ")
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s", msg)
	}
	t.Skipf("skipping (CI=true would fail): %s", msg)
}

// CapSysResource is the capability number of CAP_SYS_RESOURCE, which ext4's online
// resize needs (the kernel answers EPERM without it, even to root).
const CapSysResource = 24

// Capable reports whether this process holds the capability number c in its
// effective set (/proc/self/status CapEff). Containers often drop some from root.
func Capable(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<c) != 0
		}
	}
	return false
}

// Device is a loop device backed by a sparse image file in the test's temporary
// directory.
type Device struct {
	t     testing.TB
	path  string // /dev/loopN
	image string
}

// imagePattern names images by the pid of the test binary that made them (see sweep).
var imagePattern = regexp.MustCompile(`^slotkeeper-loop-([0-9]+)-[^/]*\.img$`)

var sweepOnce sync.Once

// New creates a sparse image of size bytes and attaches it as a loop device, and
// registers its cleanup. It calls Require first.
func New(t testing.TB, size int64) *Device {
	t.Helper()
	Require(t)
	sweepOnce.Do(func() { sweep(t) })
	f, err := os.CreateTemp(t.TempDir(), fmt.Sprintf("slotkeeper-loop-%d-*.img", os.Getpid()))
	if err != nil {
		t.Fatalf("creating the image: %v", err)
	}
	err = f.Truncate(size) // sparse: no block is written
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("sizing the image: %v", err)
	}
	out, err := run("losetup", "--find", "--show", f.Name())
	if err != nil {
		t.Fatalf("attaching %s: %v", f.Name(), err)
	}
	d := &Device{t: t, path: strings.TrimSpace(out), image: f.Name()}
	t.Cleanup(func() {
		if err := release(d.path, d.image); err != nil {
			t.Errorf("cleaning up loop device %s: %v", d.path, err)
		}
	})
	return d
}

// release unmounts every mount of dev, detaches it from image and removes image.
func release(dev, image string) error {
	var errs []error
	targets, err := Mounts(dev)
	if err != nil {
		errs = append(errs, err)
	}
	// Deepest first: a mount inside another one goes before it.
	slices.SortFunc(targets, func(a, b string) int { return len(b) - len(a) })
	for _, m := range targets {
		if _, err := run("umount", m); err != nil {
			// Still held: detach it from the tree so that the device can go once its
			// last user does, and report the leak.
			_, _ = run("umount", "--lazy", m)
			errs = append(errs, fmt.Errorf("unmounting %s (it was still in use; unmounted lazily): %w", m, err))
		}
	}
	var err2 error
	for attempt := range 20 { // a probe (blkid, udev) may hold the device for a moment
		if _, err2 = run("losetup", "--detach", dev); err2 == nil || !attached(dev, image) {
			err2 = nil
			break
		}
		time.Sleep(time.Duration(attempt+1) * 25 * time.Millisecond)
	}
	if err2 != nil {
		errs = append(errs, err2)
	}
	if err := os.Remove(image); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// attached reports whether dev is still a loop device of image.
func attached(dev, image string) bool {
	out, err := run("losetup", "--noheadings", "--output", "NAME", "--associated", image)
	return err == nil && slices.Contains(strings.Fields(out), dev)
}

// sweep releases the loop devices whose image a test binary that no longer runs made.
func sweep(t testing.TB) {
	t.Helper()
	out, err := run("losetup", "--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE")
	if err != nil {
		t.Logf("listing loop devices to sweep: %v", err)
		return
	}
	for _, line := range strings.Split(out, "\n") {
		dev, back, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		back = strings.TrimSuffix(unescape(back), " (deleted)")
		m := imagePattern.FindStringSubmatch(filepath.Base(back))
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || processRuns(pid) {
			continue
		}
		if err := release(dev, back); err != nil {
			t.Logf("sweeping %s (%s, left by process %d): %v", dev, back, pid, err)
			continue
		}
		t.Logf("swept %s (%s), left attached by process %d, which no longer runs", dev, back, pid)
	}
}

// unescape undoes losetup --raw's \xNN escapes.
func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func processRuns(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// Path is the device node, /dev/loopN.
func (d *Device) Path() string { return d.path }

// Image is the image file behind the device.
func (d *Device) Image() string { return d.image }

// Size is the device's size in bytes, as the kernel sees it.
func (d *Device) Size() int64 {
	d.t.Helper()
	out, err := run("blockdev", "--getsize64", d.path)
	if err != nil {
		d.t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		d.t.Fatalf("blockdev --getsize64 %s: %q", d.path, out)
	}
	return n
}

// Resize enlarges the image to size bytes and makes the kernel see the new size
// (losetup --set-capacity), as an EBS modification reaches an instance.
func (d *Device) Resize(size int64) {
	d.t.Helper()
	if err := os.Truncate(d.image, size); err != nil {
		d.t.Fatal(err)
	}
	if _, err := run("losetup", "--set-capacity", d.path); err != nil {
		d.t.Fatal(err)
	}
	if got := d.Size(); got != size {
		d.t.Fatalf("%s is %d bytes after resizing its image to %d", d.path, got, size)
	}
}

// Format makes a filesystem of type fstype (xfs or ext4) on the whole device, with
// the tools' defaults, and returns its UUID.
func (d *Device) Format(fstype string) string {
	d.t.Helper()
	args := []string{"-q"}
	switch fstype {
	case "xfs":
		args = append(args, "-f")
	case "ext4":
		args = append(args, "-F")
	}
	if _, err := run("mkfs."+fstype, append(args, d.path)...); err != nil {
		d.t.Fatal(err)
	}
	return d.Probe("UUID")
}

// Probe returns a tag (TYPE, UUID, LABEL) of what is on the device, read by blkid's
// low-level probe (no cache); "" when there is no such tag or no signature at all.
func (d *Device) Probe(tag string) string {
	d.t.Helper()
	out, err := run("blkid", "--probe", "--output", "value", "--match-tag", tag, d.path)
	var ee *exec.ExitError
	if errors.As(errors.Unwrap(err), &ee) && ee.ExitCode() == 2 {
		return "" // nothing found
	}
	if err != nil {
		d.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// Mount mounts the device at dir (which must exist) and registers a cleanup that
// unmounts it if it is still mounted there.
func (d *Device) Mount(dir string, options ...string) {
	d.t.Helper()
	args := []string{d.path, dir}
	if len(options) > 0 {
		args = append(args, "-o", strings.Join(options, ","))
	}
	if _, err := run("mount", args...); err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() {
		if IsMountPoint(dir) {
			if _, err := run("umount", dir); err != nil {
				d.t.Errorf("unmounting %s: %v", dir, err)
			}
		}
	})
}

// Unmount unmounts dir.
func (d *Device) Unmount(dir string) {
	d.t.Helper()
	if _, err := run("umount", dir); err != nil {
		d.t.Fatal(err)
	}
}

// Check runs the filesystem's own checker read-only (xfs_repair -n, e2fsck -fn) on the
// unmounted device and returns its complaint, nil when the filesystem is clean.
func (d *Device) Check(fstype string) error {
	d.t.Helper()
	var err error
	switch fstype {
	case "xfs":
		_, err = run("xfs_repair", "-n", d.path)
	case "ext4":
		_, err = run("e2fsck", "-f", "-n", d.path)
	default:
		d.t.Fatalf("no checker for %s", fstype)
	}
	return err
}

// Overwrite writes n zero bytes at offset through the device and flushes them, as a
// damaged disk would read.
func (d *Device) Overwrite(offset, n int64) {
	d.t.Helper()
	f, err := os.OpenFile(d.path, os.O_WRONLY, 0)
	if err != nil {
		d.t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if _, err := f.WriteAt(make([]byte, n), offset); err != nil {
		d.t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		d.t.Fatal(err)
	}
}

// Sum is a SHA-256 of the device's whole content: equal sums before and after an
// operation mean it wrote nothing. The device's buffers are flushed to the image
// first; then the image's data extents (offset, length, bytes) are hashed and its
// holes skipped, so a sparse image is summed in the time its data takes to read.
func (d *Device) Sum() string {
	d.t.Helper()
	if _, err := run("blockdev", "--flushbufs", d.path); err != nil {
		d.t.Fatal(err)
	}
	f, err := os.Open(d.image)
	if err != nil {
		d.t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		d.t.Fatal(err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "size %d\n", st.Size())
	const seekData, seekHole = 3, 4 // lseek(2) whence values
	for off := int64(0); off < st.Size(); {
		data, err := f.Seek(off, seekData)
		if err != nil { // ENXIO: no data after off
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			d.t.Fatal(err)
		}
		fmt.Fprintf(h, "extent %d %d\n", data, hole-data)
		if _, err := io.Copy(h, io.NewSectionReader(f, data, hole-data)); err != nil {
			d.t.Fatal(err)
		}
		off = hole
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Mounts lists where dev is mounted (every target, bind mounts included).
func Mounts(dev string) ([]string, error) {
	out, err := run("findmnt", "--noheadings", "--raw", "--output", "TARGET", "--source", dev)
	var ee *exec.ExitError
	if errors.As(errors.Unwrap(err), &ee) && ee.ExitCode() == 1 && strings.TrimSpace(out) == "" {
		return nil, nil // mounted nowhere
	}
	if err != nil {
		return nil, err
	}
	var targets []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			targets = append(targets, unescape(l))
		}
	}
	return targets, nil
}

// IsMountPoint reports whether dir is a mount point.
func IsMountPoint(dir string) bool {
	_, err := run("findmnt", "--noheadings", "--mountpoint", dir)
	return err == nil
}

// SourceOf returns the device mounted at dir, "" when dir is no mount point.
func SourceOf(dir string) string {
	out, err := run("findmnt", "--noheadings", "--output", "SOURCE", "--mountpoint", dir)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// FSBytes is the size of the filesystem mounted at dir (statfs: blocks × block size,
// what df reports).
func FSBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize
}

// Sums maps a file's path, relative to the directory summed, to the SHA-256 of its
// content.
type Sums map[string]string

// WriteFiles writes n files of size random bytes under dir, shaped like a Kafka log
// directory (topic-partition directories of segment files), flushes them to the
// device (syncfs), and returns their sums.
func WriteFiles(t testing.TB, dir string, n, size int) Sums {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(n)))
	buf := make([]byte, size)
	for i := range n {
		name := filepath.Join(dir, fmt.Sprintf("orders-%d", i%3), fmt.Sprintf("%020d.log", i*1000))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		if err := os.WriteFile(name, buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	SyncFS(t, dir)
	return Checksums(t, dir)
}

// SyncFS flushes the filesystem holding dir to its device (sync -f: syncfs(2)).
func SyncFS(t testing.TB, dir string) {
	t.Helper()
	if _, err := run("sync", "-f", dir); err != nil {
		t.Fatal(err)
	}
}

// Checksums sums every regular file under dir (lost+found aside).
func Checksums(t testing.TB, dir string) Sums {
	t.Helper()
	out := Sums{}
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && e.Name() == "lost+found" {
			return filepath.SkipDir
		}
		if !e.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatalf("summing %s: %v", dir, err)
	}
	return out
}

// Diff lists how after differs from s: files missing or changed (new files are
// allowed: a mount may gain a directory).
func (s Sums) Diff(after Sums) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(s)) {
		switch got, ok := after[name]; {
		case !ok:
			out = append(out, name+": missing")
		case got != s[name]:
			out = append(out, fmt.Sprintf("%s: sha256 %s, was %s", name, short(got), short(s[name])))
		}
	}
	return out
}

// String renders the sums as "n files, sha256 of the list" for logs: two runs print
// the same figure exactly when every file is the same.
func (s Sums) String() string {
	h := sha256.New()
	for _, name := range slices.Sorted(maps.Keys(s)) {
		fmt.Fprintf(h, "%s %s\n", s[name], name)
	}
	return fmt.Sprintf("%d files, sha256(list) %s", len(s), short(hex.EncodeToString(h.Sum(nil))))
}

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}

// Run runs a system tool (looked up with Tool) and returns its standard output; the
// error includes the command line and its standard error.
func Run(name string, args ...string) (string, error) { return run(name, args...) }

// run runs a tool (looked up with Tool) and returns its standard output; the error
// includes the command line and its standard error.
func run(name string, args ...string) (string, error) {
	path := Tool(name)
	if path == "" {
		return "", fmt.Errorf("%s: not found", name)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %s: %w", name, strings.Join(args, " "), strings.TrimSpace(stderr.String()), err)
	}
	return stdout.String(), nil
}
