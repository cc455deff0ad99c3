package deploy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/test/loopdev"
)

// The bootstrap's disk logic on real block devices: the instance metadata is
// emulated and the EC2 look-up stubbed (aws), as in bootstrap_test.go, but the device
// is a loop device, and blkid, mkfs, mount and the filesystem are the system's own.

// volumeID is the slot's volume as the stubbed EC2 look-up names it.
const volumeID = "vol-0abc123def4567890"

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

// newBootHost makes a loop device of diskDeviceBytes, attached to an emulated
// instance of slot 1 (node 1) of the cluster kafka-prod as the slot's volume.
func newBootHost(t *testing.T) *bootHost {
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
	h.stubs = stubs(t, map[string]string{
		// EC2: the slot's volume attached to this instance.
		"aws": fmt.Sprintf(`case "$*" in *describe-volumes*) echo %s ;; *) echo "unexpected aws $*" >&2; exit 1 ;; esac`, volumeID),
	})
	h.env = withIMDS(t, settings(3, 3, 0), &imds{items: instance("kafka-prod", 1, 1, "us-east-1b")})
	h.env["SLOTKEEPER_DEVICE_DIR"] = byID
	h.env["SLOTKEEPER_DEVICE_TIMEOUT"] = "2"
	h.env["SLOTKEEPER_DATA_MOUNT"] = h.mount
	h.env["SLOTKEEPER_FSTAB"] = h.fstab
	return h
}

// diskSteps are the disk steps of the bootstrap's main, in its order.
const diskSteps = `check_settings; imds_login; wait_for_slot
volume=$(slot_volume_id)
device=$(volume_device "$volume")
ensure_filesystem "$device"
mount_data "$device"
mkdir -p "$SLOTKEEPER_DATA_MOUNT/data"
check_volume_identity`

// boot runs the disk steps as a boot does: /run is empty, so blkid has no cache.
func (h *bootHost) boot() (stderr string, err error) {
	h.t.Helper()
	h.boots++
	env := make(map[string]string, len(h.env)+1)
	for k, v := range h.env {
		env[k] = v
	}
	env["BLKID_FILE"] = filepath.Join(h.t.TempDir(), "blkid.tab")
	_, stderr, err = run(h.t, env, h.stubs+":"+strings.Join([]string{"/usr/local/sbin", "/usr/sbin", "/sbin"}, ":"), diskSteps)
	return stderr, err
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
}

// wantIntact checks the data under the data mount's data/ against sums.
func (h *bootHost) wantIntact(sums loopdev.Sums, when string) {
	h.t.Helper()
	if diff := sums.Diff(loopdev.Checksums(h.t, filepath.Join(h.mount, "data"))); len(diff) > 0 {
		h.t.Errorf("data changed %s: %s", when, strings.Join(diff, "; "))
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
		run     func(t *testing.T, h *bootHost, fstype string) string // returns the outcome for the table
	}{
		{"blank device: formatted and mounted", []string{"xfs"}, func(t *testing.T, h *bootHost, _ string) string {
			if before := h.dev.Probe("TYPE"); before != "" {
				t.Fatalf("a new loop device holds %q", before)
			}
			stderr, err := h.boot()
			if err != nil {
				t.Fatalf("boot: %v\n%s", err, stderr)
			}
			s := h.state()
			h.wantMounted(s, "xfs", "")
			if !strings.Contains(stderr, "is blank: formatting it (xfs)") {
				t.Errorf("no log line says it formats:\n%s", stderr)
			}
			return fmt.Sprintf("formatted xfs %s, mounted", s.uuid[:8])
		}},
		{"own filesystem: mounted, not formatted, data intact", []string{"xfs", "ext4"}, func(t *testing.T, h *bootHost, fstype string) string {
			uuid, sums := h.formatWithData(fstype, 1)
			stderr, err := h.boot()
			if err != nil {
				t.Fatalf("boot: %v\n%s", err, stderr)
			}
			h.wantMounted(h.state(), fstype, uuid)
			h.wantIntact(sums, "by the boot")
			if !strings.Contains(stderr, "resuming its log") {
				t.Errorf("no log line says it resumes the log:\n%s", stderr)
			}
			return fmt.Sprintf("kept %s %s, mounted; data %s intact", fstype, uuid[:8], sums)
		}},
		{"another node's meta.properties: refused", []string{"xfs", "ext4"}, func(t *testing.T, h *bootHost, fstype string) string {
			uuid, sums := h.formatWithData(fstype, 2)
			stderr, err := h.boot()
			if err == nil || !strings.Contains(stderr, "node.id=2, but slot 1 is node 1") {
				t.Fatalf("boot: err %v, want a refusal naming node 2:\n%s", err, stderr)
			}
			s := h.state()
			if s.fstype != fstype || s.uuid != uuid {
				t.Errorf("the device holds %s %s after the refusal, was %s %s", s.fstype, s.uuid, fstype, uuid)
			}
			// Read from the device through a mount of the test's own.
			if s.mountedAt != "" {
				if _, err := loopdev.Run("umount", h.mount); err != nil {
					t.Fatal(err)
				}
			}
			check := t.TempDir()
			h.dev.Mount(check, "ro")
			if diff := sums.Diff(loopdev.Checksums(t, filepath.Join(check, "data"))); len(diff) > 0 {
				t.Errorf("data changed by the refusal: %s", strings.Join(diff, "; "))
			}
			return fmt.Sprintf("refused (exit %v); %s %s kept; data %s intact", err, fstype, uuid[:8], sums)
		}},
		{"reboot: the script run again, then after an unmount", []string{"xfs", "ext4"}, func(t *testing.T, h *bootHost, fstype string) string {
			var sums loopdev.Sums
			uuid := ""
			if fstype == "ext4" { // the script formats xfs only: an adopted ext4 volume
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
			return fmt.Sprintf("%d boots: %s %s kept, one fstab line, mounted; data %s intact", h.boots, fstype, first.uuid[:8], sums)
		}},
	} {
		for _, fstype := range []string{"xfs", "ext4"} {
			if !strings.Contains(strings.Join(c.fstypes, " "), fstype) {
				table = append(table, result{c.name, fstype, "n/a: the bootstrap formats xfs only (it keeps an existing ext4)"})
				continue
			}
			t.Run(c.name+"/"+fstype, func(t *testing.T) {
				caseStart := time.Now()
				h := newBootHost(t)
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
	for _, r := range table {
		fmt.Fprintf(&b, "  %-55s %-5s %s\n", r.cas, r.fstype, r.outcome)
	}
	t.Log(b.String())
}
