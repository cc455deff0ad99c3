package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/test/loopdev"
)

// The bootstrap's disk logic on real block devices, run by the script's own main: the
// instance metadata is emulated and the AWS look-ups stubbed (aws: the lease, the group, the volume and its
// never-formatted mark), as in bootstrap_test.go, but the device is a loop device, and
// blkid, mkfs, mount, chown and the filesystem are the system's own.

// volumeID is the slot's volume as the stubbed EC2 look-up names it.
const volumeID = "vol-0abc123def4567890"

// damagedBytes are zeroed at the start of a device to damage its filesystem: the
// superblock (xfs: sector 0; ext4: byte 1024) and what follows it.
const damagedBytes = 64 << 10

// diskDeviceBytes is the size of each test device: the smallest mkfs.xfs accepts,
// sparse.
const diskDeviceBytes = loopdev.MinXFSBytes + 20*loopdev.MiB

// bootHost is the instance a device is attached to: where the data mount, fstab and
// device links live for the script.
type bootHost struct {
	t     *testing.T
	dev   *loopdev.Device
	env   map[string]string
	stubs string
	mount string
	fstab string
	boots int
}

// instanceID is the emulated instance's id (instance()).
const instanceID = "i-0123456789abcdef0"

// newBootHost makes a loop device of diskDeviceBytes, attached to an emulated
// instance that holds slot 1 (node 1) of the cluster kafka-prod at claim 3, in
// service, as the volume its lease records; mark is the value of the volume's
// slotkeeper:never-formatted tag, the claim it was made blank for ("" for none).
func newBootHost(t *testing.T, mark string) *bootHost {
	t.Helper()
	loopdev.Require(t, "mkfs.xfs", "mkfs.ext4", "mountpoint", "curl")
	// Directories first: cleanups run last-first, so the device (and every mount of
	// it) is released before they are removed.
	dir := t.TempDir()
	h := &bootHost{t: t, mount: filepath.Join(dir, "var-lib-kafka"), fstab: filepath.Join(dir, "fstab")}
	byID := filepath.Join(dir, "by-id")
	if err := os.Mkdir(byID, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.fstab, []byte("UUID=root-fs / xfs defaults 0 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.dev = loopdev.New(t, diskDeviceBytes)
	// On Nitro, udev links the volume by id to its NVMe device; here, to the loop device.
	if err := os.Symlink(h.dev.Path(), filepath.Join(byID, "nvme-Amazon_Elastic_Block_Store_"+strings.ReplaceAll(volumeID, "-", ""))); err != nil {
		t.Fatal(err)
	}
	h.stubs = stubs(t, map[string]string{"aws": awsVolumeStub})
	if mark != "" {
		if err := os.WriteFile(filepath.Join(h.stubs, "never-formatted"), []byte(mark), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.env = withIMDS(t, settings(3, 3, 0), &imds{items: instance("kafka-prod", 1, 1, "us-east-1b")})
	h.env["SLOTKEEPER_DEVICE_DIR"] = byID
	h.env["SLOTKEEPER_DEVICE_TIMEOUT"] = "2"
	h.env["SLOTKEEPER_DATA_MOUNT"] = h.mount
	h.env["SLOTKEEPER_FSTAB"] = h.fstab
	return h
}

// awsVolumeStub answers the bootstrap's AWS calls for an instance that holds slot 1's
// lease (bound, version 3, the lease's tag), in service, with the slot's volume
// attached; the value of the volume's slotkeeper:never-formatted mark is the content
// of the file never-formatted beside it, which delete-tags removes. Every call is
// recorded in calls.
const awsVolumeStub = `dir=$(dirname "$0")
printf '%s\n' "$*" >>"$dir/calls"
case "$1 $2" in
"dynamodb get-item") printf 'bound\t` + instanceID + `\t3\t` + volumeID + `\n' ;;
"autoscaling describe-auto-scaling-instances") echo InService ;;
"ec2 describe-volumes")
	mark=None
	[[ -e $dir/never-formatted ]] && mark=$(cat "$dir/never-formatted")
	printf '` + instanceID + `\t1\t%s\n' "$mark" ;;
"ec2 delete-tags") [[ $* != *"--resources ` + volumeID + ` --tags Key=slotkeeper:never-formatted"* ]] || rm -f "$dir/never-formatted" ;;
"ec2 create-tags") ;;
*) echo "aws stub: unexpected $*" >&2; exit 255 ;;
esac`

// mark is the value of the volume's never-formatted mark, "" when it has none.
func (h *bootHost) mark() string {
	b, err := os.ReadFile(filepath.Join(h.stubs, "never-formatted"))
	if err != nil {
		return ""
	}
	return string(b)
}

// refusals are the refusal tags the boots put on the instance.
func (h *bootHost) refusals() []string {
	b, _ := os.ReadFile(filepath.Join(h.stubs, "calls"))
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "ec2 create-tags") && strings.Contains(line, "Key=slotkeeper:refused,") {
			out = append(out, line)
		}
	}
	return out
}

// bootMain runs the bootstrap's main itself, with two functions replaced: the
// software installation (dnf, the Kafka download) and start_kafka (the Kafka
// configuration, kafka-storage format and systemd), which instead records in
// $STARTED_FILE that main got there. Every disk step is main's own, as a boot runs it.
const bootMain = `install_software() { log "test: no software installation"; }
start_kafka() { printf 'kafka-storage format and start on %s/data\n' "$SLOTKEEPER_DATA_MOUNT" >>"$STARTED_FILE"; }
main`

// boot runs main as a boot does: /run is empty, so blkid has no cache.
func (h *bootHost) boot() (stderr string, err error) {
	h.t.Helper()
	h.boots++
	env := make(map[string]string, len(h.env)+1)
	for k, v := range h.env {
		env[k] = v
	}
	env["BLKID_FILE"] = filepath.Join(h.t.TempDir(), "blkid.tab")
	env["STARTED_FILE"] = filepath.Join(h.stubs, "started")
	_, stderr, err = run(h.t, env, h.stubs+":"+strings.Join([]string{"/usr/local/sbin", "/usr/sbin", "/sbin"}, ":"), bootMain)
	return stderr, err
}

// starts is how many boots went on to format the KRaft storage and start Kafka.
func (h *bootHost) starts() int {
	b, _ := os.ReadFile(filepath.Join(h.stubs, "started"))
	return strings.Count(string(b), "\n")
}

// reboot unmounts the data mount, as a reboot leaves it (fstab stays), then boots.
func (h *bootHost) reboot() (string, error) {
	h.t.Helper()
	if loopdev.IsMountPoint(h.mount) {
		if _, err := loopdev.Run("umount", h.mount); err != nil {
			h.t.Fatal(err)
		}
	}
	return h.boot()
}

// clusterID is the KRaft cluster id the script derives for kafka-prod.
func clusterID(t *testing.T) string {
	t.Helper()
	out, stderr, err := run(t, settings(3, 3, 0), "", "cluster_id")
	if err != nil {
		t.Fatalf("%v %s", err, stderr)
	}
	return strings.TrimSpace(out)
}

// writeBrokerData puts a broker's log on a filesystem: meta.properties for node and
// segment files under data/, and returns the sums of everything under data/.
func writeBrokerData(t *testing.T, root string, node int) loopdev.Sums {
	t.Helper()
	data := filepath.Join(root, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	meta := fmt.Sprintf("#\nversion=1\nnode.id=%d\ncluster.id=%s\ndirectory.id=Q0ZQ5WbKSyWpZSFmkkb5dg\n", node, clusterID(t))
	if err := os.WriteFile(filepath.Join(data, "meta.properties"), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
	loopdev.WriteFiles(t, data, 6, 64<<10)
	return loopdev.Checksums(t, data)
}

// formatWithData formats the device with fstype and writes a broker's log for node on
// it, through a mount of the test's own that is gone afterwards.
func (h *bootHost) formatWithData(fstype string, node int) (uuid string, sums loopdev.Sums) {
	h.t.Helper()
	uuid = h.dev.Format(fstype)
	setup := h.t.TempDir()
	h.dev.Mount(setup)
	sums = writeBrokerData(h.t, setup, node)
	h.dev.Unmount(setup)
	return uuid, sums
}

// formatWith formats the device with fstype and runs write on the new filesystem's
// root, through a mount of the test's own that is gone afterwards; it returns the
// sums of every file on it.
func (h *bootHost) formatWith(fstype string, write func(root string)) (uuid string, sums loopdev.Sums) {
	h.t.Helper()
	uuid = h.dev.Format(fstype)
	setup := h.t.TempDir()
	h.dev.Mount(setup)
	write(setup)
	loopdev.SyncFS(h.t, setup)
	sums = loopdev.Checksums(h.t, setup)
	h.dev.Unmount(setup)
	return uuid, sums
}

// brokerLog writes node's log (meta.properties, segment files) under dir.
func brokerLog(t *testing.T, dir string, node int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	meta := fmt.Sprintf("version=1\nnode.id=%d\ncluster.id=%s\ndirectory.id=Q0ZQ5WbKSyWpZSFmkkb5dg\n", node, clusterID(t))
	if err := os.WriteFile(filepath.Join(dir, "meta.properties"), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
	loopdev.WriteFiles(t, dir, 4, 64<<10)
}

// wantUntouched reads the filesystem back through a read-only mount of the test's
// own: the same files as sums, and no data/ directory unless there was one.
func (h *bootHost) wantUntouched(sums loopdev.Sums, hadData bool) {
	h.t.Helper()
	check := h.t.TempDir()
	h.dev.Mount(check, "ro")
	defer h.dev.Unmount(check)
	after := loopdev.Checksums(h.t, check)
	if diff := sums.Diff(after); len(diff) > 0 || len(after) != len(sums) {
		h.t.Errorf("the refusal changed the filesystem: %s (%d files, was %d)", strings.Join(diff, "; "), len(after), len(sums))
	}
	if _, err := os.Stat(filepath.Join(check, "data")); err == nil && !hadData {
		h.t.Errorf("the refusal made a data/ directory on the volume")
	}
}

// state is what a boot left.
type state struct {
	fstype, uuid string
	mountedAt    string   // the device mounted at the data mount: the mount point, else ""
	fstabLines   []string // fstab lines for the data mount
}

func (h *bootHost) state() state {
	h.t.Helper()
	s := state{fstype: h.dev.Probe("TYPE"), uuid: h.dev.Probe("UUID")}
	if loopdev.SourceOf(h.mount) == h.dev.Path() {
		s.mountedAt = h.mount
	}
	b, err := os.ReadFile(h.fstab)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[1] == h.mount {
			s.fstabLines = append(s.fstabLines, line)
		}
	}
	return s
}

// wantMounted checks that the boot left the device mounted at the data mount, with
// one fstab line naming its filesystem by UUID.
func (h *bootHost) wantMounted(s state, fstype, uuid string) {
	h.t.Helper()
	if s.mountedAt == "" {
		h.t.Errorf("the device is not mounted at %s", h.mount)
	}
	if s.fstype != fstype || (uuid != "" && s.uuid != uuid) {
		h.t.Errorf("the device holds %s %s, want %s %s", s.fstype, s.uuid, fstype, uuid)
	}
	want := fmt.Sprintf("UUID=%s %s %s defaults,noatime,nofail 0 2", s.uuid, h.mount, fstype)
	if len(s.fstabLines) != 1 || s.fstabLines[0] != want {
		h.t.Errorf("fstab lines for the data mount: %q, want [%q]", s.fstabLines, want)
	}
	if n := h.starts(); n != h.boots {
		h.t.Errorf("main started Kafka %d time(s) in %d boots", n, h.boots)
	}
}

// wantIntact checks the data under the data mount's data/ against sums.
func (h *bootHost) wantIntact(sums loopdev.Sums, when string) {
	h.t.Helper()
	if diff := sums.Diff(loopdev.Checksums(h.t, filepath.Join(h.mount, "data"))); len(diff) > 0 {
		h.t.Errorf("data changed %s: %s", when, strings.Join(diff, "; "))
	}
}

// wantOwned checks the log directory belongs to the kafka user's fixed uid.
func (h *bootHost) wantOwned() {
	h.t.Helper()
	st, err := os.Stat(filepath.Join(h.mount, "data"))
	if err != nil {
		h.t.Fatal(err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; uid != 9092 {
		h.t.Errorf("data/ belongs to uid %d, want kafka's 9092", uid)
	}
}

// wantRefused checks a boot refused the device and left it as it was: unmounted,
// out of fstab, the refusal tagged on the instance, the mark as it was.
func (h *bootHost) wantRefused(err error, stderr, why string, mark string) {
	h.t.Helper()
	if err == nil || !strings.Contains(stderr, "REFUSED: ") || !strings.Contains(stderr, why) {
		h.t.Errorf("boot: err %v, want a refusal saying %q:\n%s", err, why, stderr)
	}
	s := h.state()
	if s.mountedAt != "" || len(s.fstabLines) > 0 {
		h.t.Errorf("a refused device is mounted at %q, fstab lines %q", s.mountedAt, s.fstabLines)
	}
	if m, _ := loopdev.Mounts(h.dev.Path()); len(m) > 0 {
		h.t.Errorf("a refused device is mounted at %q", m)
	}
	if n := len(h.refusals()); n != 1 {
		h.t.Errorf("%d refusal tags on the instance, want 1", n)
	}
	if h.mark() != mark {
		h.t.Errorf("never-formatted mark %q after a refusal, was %q", h.mark(), mark)
	}
	if n := h.starts(); n != 0 {
		h.t.Errorf("main went on to format the KRaft storage and start Kafka %d time(s) after a refusal", n)
	}
}

// The bootstrap's disk logic, case by case, on xfs and ext4: what it formats, what it
// mounts, what it refuses, and that a reboot changes nothing. Each case's figures are
// logged; the table at the end sums them up.
func TestDiskLogicOnRealDevices(t *testing.T) {
	type result struct{ cas, fstype, outcome string }
	var table []result
	start := time.Now()
	for _, c := range []struct {
		name    string
		fstypes []string
		mark    string                                                // the volume's slotkeeper:never-formatted mark: the claim it was made blank for, or none
		run     func(t *testing.T, h *bootHost, fstype string) string // returns the outcome for the table
	}{
		{"blank, marked never formatted for this claim: formatted", []string{"xfs"}, "3", func(t *testing.T, h *bootHost, _ string) string {
			if before := h.dev.Probe("TYPE"); before != "" {
				t.Fatalf("a new loop device holds %q", before)
			}
			stderr, err := h.boot()
			if err != nil {
				t.Fatalf("boot: %v\n%s", err, stderr)
			}
			s := h.state()
			h.wantMounted(s, "xfs", "")
			h.wantOwned()
			if !strings.Contains(stderr, "formatting it (xfs)") {
				t.Errorf("no log line says it formats:\n%s", stderr)
			}
			if h.mark() != "" {
				t.Errorf("the never-formatted mark is still on the volume after the format")
			}
			return fmt.Sprintf("formatted xfs %s, mounted, mark cleared", s.uuid[:8])
		}},
		{"blank, not marked: refused, never formatted", []string{"xfs"}, "", func(t *testing.T, h *bootHost, _ string) string {
			sum := h.dev.Sum()
			stderr, err := h.boot()
			h.wantRefused(err, stderr, "not marked slotkeeper:never-formatted", "")
			if after := h.dev.Sum(); after != sum {
				t.Errorf("the boot wrote to the device (it now holds %q)", h.dev.Probe("TYPE"))
			}
			return fmt.Sprintf("refused; device sha256 %s before and after", sum[:12])
		}},
		{"blank, marked for an older claim: refused, never formatted", []string{"xfs"}, "2", func(t *testing.T, h *bootHost, _ string) string {
			sum := h.dev.Sum()
			stderr, err := h.boot()
			h.wantRefused(err, stderr, "marked never formatted for claim 2, not 3", "2")
			if after := h.dev.Sum(); after != sum {
				t.Errorf("the boot wrote to the device (it now holds %q)", h.dev.Probe("TYPE"))
			}
			return fmt.Sprintf("refused; device sha256 %s before and after", sum[:12])
		}},
		{"own filesystem: mounted, not formatted, data intact", []string{"xfs", "ext4"}, "", func(t *testing.T, h *bootHost, fstype string) string {
			uuid, sums := h.formatWithData(fstype, 1)
			stderr, err := h.boot()
			if err != nil {
				t.Fatalf("boot: %v\n%s", err, stderr)
			}
			h.wantMounted(h.state(), fstype, uuid)
			h.wantIntact(sums, "by the boot")
			h.wantOwned()
			if !strings.Contains(stderr, "resuming its log") {
				t.Errorf("no log line says it resumes the log:\n%s", stderr)
			}
			return fmt.Sprintf("kept %s %s, mounted; data %s before and after", fstype, uuid[:8], sums)
		}},
		{"own filesystem, mark left by a crash: kept, mark cleared", []string{"xfs", "ext4"}, "3", func(t *testing.T, h *bootHost, fstype string) string {
			uuid, sums := h.formatWithData(fstype, 1)
			stderr, err := h.boot()
			if err != nil {
				t.Fatalf("boot: %v\n%s", err, stderr)
			}
			h.wantMounted(h.state(), fstype, uuid)
			h.wantIntact(sums, "by the boot")
			if h.mark() != "" {
				t.Errorf("the never-formatted mark is still on a volume with a filesystem")
			}
			return fmt.Sprintf("kept %s %s, mark cleared; data %s before and after", fstype, uuid[:8], sums)
		}},
		{"another node's meta.properties: refused, not mounted", []string{"xfs", "ext4"}, "", func(t *testing.T, h *bootHost, fstype string) string {
			uuid, sums := h.formatWithData(fstype, 2)
			stderr, err := h.boot()
			h.wantRefused(err, stderr, "node.id=2, but slot 1 is node 1", "")
			s := h.state()
			if s.fstype != fstype || s.uuid != uuid {
				t.Errorf("the device holds %s %s after the refusal, was %s %s", s.fstype, s.uuid, fstype, uuid)
			}
			// Read back from the device through a mount of the test's own.
			check := t.TempDir()
			h.dev.Mount(check, "ro")
			if diff := sums.Diff(loopdev.Checksums(t, filepath.Join(check, "data"))); len(diff) > 0 {
				t.Errorf("data changed by the refusal: %s", strings.Join(diff, "; "))
			}
			return fmt.Sprintf("refused, unmounted, no fstab line; %s %s kept; data %s before and after", fstype, uuid[:8], sums)
		}},
		{"damaged superblock: refused, never formatted", []string{"xfs", "ext4"}, "", func(t *testing.T, h *bootHost, fstype string) string {
			h.formatWithData(fstype, 1)
			h.dev.Overwrite(0, damagedBytes)
			if got := h.dev.Probe("TYPE"); got != "" {
				t.Fatalf("blkid still finds %s after the first %d KiB were zeroed", got, damagedBytes>>10)
			}
			sum := h.dev.Sum()
			stderr, err := h.boot()
			h.wantRefused(err, stderr, "no filesystem signature", "")
			after := h.dev.Sum()
			if after != sum {
				t.Errorf("the boot wrote to the damaged device (it now holds %q %s)", h.dev.Probe("TYPE"), h.dev.Probe("UUID"))
			}
			return fmt.Sprintf("refused; device sha256 %s before and %s after", sum[:12], after[:12])
		}},
		{"node 1's log at the volume's root (log.dirs was the mount): refused, never storage-formatted", []string{"xfs", "ext4"}, "", func(t *testing.T, h *bootHost, fstype string) string {
			uuid, sums := h.formatWith(fstype, func(root string) { brokerLog(t, root, 1) })
			stderr, err := h.boot()
			h.wantRefused(err, stderr, "holds "+h.mount+"/", "")
			if !strings.Contains(stderr, "but no data/meta.properties") || !strings.Contains(stderr, "must be in data/ at the volume's root") {
				t.Errorf("the refusal does not say where the log must be:\n%s", stderr)
			}
			h.wantUntouched(sums, false)
			return fmt.Sprintf("refused, unmounted, no fstab line, Kafka not started; %s %s kept; %s before and after", fstype, uuid[:8], sums)
		}},
		{"node 1's log in kafka-logs/, not data/: refused, never storage-formatted", []string{"xfs", "ext4"}, "", func(t *testing.T, h *bootHost, fstype string) string {
			uuid, sums := h.formatWith(fstype, func(root string) { brokerLog(t, filepath.Join(root, "kafka-logs"), 1) })
			stderr, err := h.boot()
			h.wantRefused(err, stderr, "holds "+h.mount+"/kafka-logs but no data/meta.properties", "")
			h.wantUntouched(sums, false)
			return fmt.Sprintf("refused, Kafka not started; %s %s kept; %s before and after", fstype, uuid[:8], sums)
		}},
		{"segments in data/ without meta.properties: refused", []string{"xfs", "ext4"}, "", func(t *testing.T, h *bootHost, fstype string) string {
			uuid, sums := h.formatWith(fstype, func(root string) { loopdev.WriteFiles(t, filepath.Join(root, "data"), 3, 64<<10) })
			stderr, err := h.boot()
			h.wantRefused(err, stderr, "holds "+h.mount+"/data/orders-", "")
			h.wantUntouched(sums, true)
			return fmt.Sprintf("refused, Kafka not started; %s %s kept; %s before and after", fstype, uuid[:8], sums)
		}},
		{"files in ext4's lost+found, no log: refused", []string{"ext4"}, "", func(t *testing.T, h *bootHost, fstype string) string {
			uuid, sums := h.formatWith(fstype, func(root string) { loopdev.WriteFiles(t, filepath.Join(root, "lost+found"), 1, 4<<10) })
			stderr, err := h.boot()
			h.wantRefused(err, stderr, "holds "+h.mount+"/lost+found/", "")
			h.wantUntouched(sums, false)
			return fmt.Sprintf("refused, Kafka not started; %s %s kept", fstype, uuid[:8])
		}},
		{"blank filesystem, boots before any log (empty data/, then bootstrap.checkpoint): started each time", []string{"xfs", "ext4"}, "3", func(t *testing.T, h *bootHost, fstype string) string {
			uuid := ""
			if fstype == "ext4" { // the bootstrap formats xfs only: a blank ext4 volume with its lost+found
				uuid, _ = h.formatWith(fstype, func(root string) {
					if st, err := os.Stat(filepath.Join(root, "lost+found")); err != nil || !st.IsDir() {
						t.Fatalf("mkfs.ext4 made no lost+found: %v", err)
					}
				})
			}
			if stderr, err := h.boot(); err != nil { // xfs: formats it
				t.Fatalf("first boot: %v\n%s", err, stderr)
			}
			first := h.state()
			h.wantMounted(first, fstype, uuid)
			// Stopped before kafka-storage format: data/ is empty. A reboot.
			stderr, err := h.reboot()
			if err != nil || !strings.Contains(stderr, "holds no log: node 1 starts a new one") {
				t.Fatalf("reboot with an empty data/: %v\n%s", err, stderr)
			}
			h.wantMounted(h.state(), fstype, first.uuid)
			// Stopped inside kafka-storage format: bootstrap.checkpoint, no meta.properties yet.
			if err := os.WriteFile(filepath.Join(h.mount, "data", "bootstrap.checkpoint"), []byte("checkpoint"), 0o644); err != nil {
				t.Fatal(err)
			}
			if stderr, err := h.reboot(); err != nil {
				t.Fatalf("reboot with only bootstrap.checkpoint in data/: %v\n%s", err, stderr)
			}
			h.wantMounted(h.state(), fstype, first.uuid)
			return fmt.Sprintf("%d boots, Kafka started by each; %s %s kept, mounted", h.boots, fstype, first.uuid[:8])
		}},
		{"reboot: the script run again, then after an unmount", []string{"xfs", "ext4"}, "3", func(t *testing.T, h *bootHost, fstype string) string {
			var sums loopdev.Sums
			uuid := ""
			if fstype == "ext4" { // the bootstrap formats xfs only: an adopted ext4 volume
				uuid, _ = h.formatWithData(fstype, 1)
			}
			if stderr, err := h.boot(); err != nil {
				t.Fatalf("first boot: %v\n%s", err, stderr)
			}
			first := h.state()
			h.wantMounted(first, fstype, uuid)
			if fstype == "xfs" { // formatted by the first boot: Kafka writes its log
				sums = writeBrokerData(t, h.mount, 1)
			} else {
				sums = loopdev.Checksums(t, filepath.Join(h.mount, "data"))
			}
			if stderr, err := h.boot(); err != nil {
				t.Fatalf("second run: %v\n%s", err, stderr)
			}
			h.wantMounted(h.state(), fstype, first.uuid)
			h.wantIntact(sums, "by a second run")
			if stderr, err := h.reboot(); err != nil {
				t.Fatalf("boot after an unmount: %v\n%s", err, stderr)
			}
			h.wantMounted(h.state(), fstype, first.uuid)
			h.wantIntact(sums, "by a reboot (read back from the device)")
			if h.mark() != "" {
				t.Errorf("the never-formatted mark survived %d boots", h.boots)
			}
			return fmt.Sprintf("%d boots: %s %s kept, one fstab line, mounted; data %s before and after", h.boots, fstype, first.uuid[:8], sums)
		}},
	} {
		for _, fstype := range []string{"xfs", "ext4"} {
			if !slices.Contains(c.fstypes, fstype) {
				na := "n/a: a blank device has no filesystem yet; the bootstrap formats xfs only"
				if strings.Contains(c.name, "lost+found") {
					na = "n/a: xfs has no lost+found"
				}
				table = append(table, result{c.name, fstype, na})
				continue
			}
			t.Run(c.name+"/"+fstype, func(t *testing.T) {
				caseStart := time.Now()
				h := newBootHost(t, c.mark)
				outcome := c.run(t, h, fstype)
				if t.Failed() {
					outcome = "FAILED: " + outcome
				}
				outcome = fmt.Sprintf("%s (%.2fs)", outcome, time.Since(caseStart).Seconds())
				table = append(table, result{c.name, fstype, outcome})
				t.Log(outcome)
			})
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "disk logic on real devices (%d MiB sparse images), %.2fs in all:\n", diskDeviceBytes>>20, time.Since(start).Seconds())
	width := 0
	for _, r := range table {
		width = max(width, len(r.cas))
	}
	for _, r := range table {
		fmt.Fprintf(&b, "  %-*s %-5s %s\n", width, r.cas, r.fstype, r.outcome)
	}
	t.Log(b.String())
}

// The Kafka unit's stop, after Kafka exited (ExecStopPost, the line the unit carries,
// run as systemd runs it: by /bin/sh as root), on a real mount: while another process
// holds a file open in it, the unmount fails and the filesystem stays mounted (the
// unit ignores that failure; the terminate function's command catches it); once
// nothing holds it, it is unmounted with the data intact; run again, nothing to do.
func TestKafkaUnitUnmountsWhenKafkaStops(t *testing.T) {
	loopdev.Require(t, "mkfs.xfs", "xfs_repair", "mountpoint")
	mount := filepath.Join(t.TempDir(), "var-lib-kafka")
	if err := os.Mkdir(mount, 0o755); err != nil {
		t.Fatal(err)
	}
	dev := loopdev.New(t, loopdev.MinXFSBytes)
	dev.Format("xfs")
	dev.Mount(mount)
	sums := loopdev.WriteFiles(t, filepath.Join(mount, "data"), 4, 64<<10)

	env := settings(3, 3, 0)
	env["SLOTKEEPER_DATA_MOUNT"] = mount
	unit, stderr, err := run(t, env, "", "check_settings; SLOT=1 NODE_ID=1; kafka_unit")
	if err != nil {
		t.Fatalf("%v %s", err, stderr)
	}
	var stopPost string
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStopPost="); ok {
			stopPost = strings.TrimLeft(v, "-+@!:") // systemd's prefixes: ignore failure, as root, ...
		}
	}
	if stopPost == "" {
		t.Fatalf("the unit has no ExecStopPost:\n%s", unit)
	}
	stop := func() (string, error) {
		out, err := exec.Command("/bin/sh", "-c", stopPost).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	holder := exec.Command("/bin/bash", "-c", `exec 3<"$1"; exec sleep 600`, "holder", filepath.Join(mount, "data", "orders-0", fmt.Sprintf("%020d.log", 0)))
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = holder.Wait(); close(reaped) }()
	t.Cleanup(func() { _ = holder.Process.Kill(); <-reaped })
	for i := 0; ; i++ { // until the file is open
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", holder.Process.Pid)); strings.HasPrefix(target, mount) {
			break
		}
		if i == 200 {
			t.Fatal("the holder never opened its file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	out, err := stop()
	if err == nil || loopdev.SourceOf(mount) != dev.Path() {
		t.Errorf("held: ExecStopPost %v (%s); mounted %v; want a failed unmount and the filesystem still mounted", err, out, loopdev.SourceOf(mount))
	}
	t.Logf("held by pid %d: %v: %s", holder.Process.Pid, err, out)

	_ = holder.Process.Kill()
	<-reaped
	if out, err := stop(); err != nil {
		t.Fatalf("nothing holding it: ExecStopPost %v: %s", err, out)
	}
	if m, err := loopdev.Mounts(dev.Path()); err != nil || len(m) > 0 {
		t.Fatalf("still mounted at %q (%v)", m, err)
	}
	if err := dev.Check("xfs"); err != nil {
		t.Errorf("xfs_repair -n: %v", err)
	}
	if out, err := stop(); err != nil {
		t.Errorf("again, unmounted already: ExecStopPost %v: %s", err, out)
	}
	check := t.TempDir()
	dev.Mount(check, "ro")
	if diff := sums.Diff(loopdev.Checksums(t, filepath.Join(check, "data"))); len(diff) > 0 {
		t.Errorf("data changed: %s", strings.Join(diff, "; "))
	}
	t.Logf("free: unmounted, xfs_repair -n clean, data %s before and after", sums)
}
