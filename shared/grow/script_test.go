package grow

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestFilesystemScriptText(t *testing.T) {
	lines := FilesystemScript("/data/it's kafka", 142)
	for _, want := range []string{
		`mount='/data/it'\''s kafka'`,
		"want_bytes=152471339008", // 142 GiB
		`xfs) xfs_growfs "$mount" >&2 ;;`,
		`ext4) resize2fs "$dev" >&2 ;;`,
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("script lacks the line %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	if lines[0] != "set -eu" {
		t.Errorf("first line %q, want set -eu", lines[0])
	}
	if sh, err := exec.LookPath("sh"); err == nil {
		out, err := exec.Command(sh, "-n", "-c", strings.Join(lines, "\n")).CombinedOutput()
		if err != nil {
			t.Errorf("sh -n: %v: %s", err, out)
		}
	}
}

// stubTools writes stand-ins for the system tools the script calls (findmnt, blockdev,
// df, xfs_growfs, resize2fs) into a directory, driven by environment variables, and
// logging the growth commands they receive.
func stubTools(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tools := map[string]string{
		"findmnt": `
case "$*" in
*-o\ SOURCE*) echo "$FAKE_DEV" ;;
*-o\ FSTYPE*) echo "$FAKE_FSTYPE" ;;
*) [ "$FAKE_MOUNTED" = 1 ] ;;
esac`,
		"blockdev":   `echo "$FAKE_DEV_BYTES"`,
		"df":         `echo "Filesystem 1024-blocks Used Available Capacity Mounted on"; echo "$FAKE_DEV $(cat "$FAKE_STATE") 1 1 1% $3"`,
		"xfs_growfs": `echo "xfs_growfs $*" >>"$FAKE_LOG"; echo "$FAKE_GROWN_KIB" >"$FAKE_STATE"`,
		"resize2fs":  `echo "resize2fs $*" >>"$FAKE_LOG"; echo "$FAKE_GROWN_KIB" >"$FAKE_STATE"`,
	}
	for name, body := range tools {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// The script's decisions, run by a real shell against stand-in tools.
func TestFilesystemScriptRuns(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	if _, err := exec.LookPath("awk"); err != nil {
		t.Skip("no awk")
	}
	const gib142 = "152471339008"
	tests := []struct {
		name             string
		fstype, devBytes string
		before, grown    string // filesystem size in KiB before and after the growth command
		mounted          string
		wantOK           bool
		wantCmd          string // the growth command run, "" for none
		wantErr          string // in standard error
		wantGrew         bool
	}{
		{"xfs grows on the mount point", "xfs", gib142, "104800000", "148700000", "1", true, "xfs_growfs /var/lib/kafka", "", true},
		{"ext4 grows on the device", "ext4", gib142, "104800000", "146500000", "1", true, "resize2fs /dev/nvme1n1", "", true},
		{"already grown: a harmless repeat", "xfs", gib142, "148700000", "148700000", "1", true, "xfs_growfs /var/lib/kafka", "", false},
		{"device not grown yet", "xfs", "107374182400", "104800000", "148700000", "1", false, "", "not yet 152471339008", false},
		{"not a mount point", "xfs", gib142, "104800000", "148700000", "0", false, "", "is not a mount point", false},
		{"other filesystem", "btrfs", gib142, "104800000", "148700000", "1", false, "", "only xfs and ext4", false},
		{"filesystem short of its device (a partition)", "ext4", gib142, "104800000", "110000000", "1", false, "resize2fs /dev/nvme1n1", "under 90%", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := stubTools(t)
			state, log := filepath.Join(dir, "state"), filepath.Join(dir, "log")
			if err := os.WriteFile(state, []byte(tt.before+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(sh, "-c", strings.Join(FilesystemScript("/var/lib/kafka", 142), "\n"))
			cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"),
				"FAKE_DEV=/dev/nvme1n1", "FAKE_FSTYPE="+tt.fstype, "FAKE_DEV_BYTES="+tt.devBytes,
				"FAKE_GROWN_KIB="+tt.grown, "FAKE_MOUNTED="+tt.mounted, "FAKE_STATE="+state, "FAKE_LOG="+log)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if ok := err == nil; ok != tt.wantOK {
				t.Fatalf("script succeeded = %v (%v), want %v; stderr: %s", ok, err, tt.wantOK, stderr.String())
			}
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) {
				t.Fatalf("running the script: %v", err)
			}
			ran, _ := os.ReadFile(log)
			if got := strings.TrimSpace(string(ran)); got != tt.wantCmd {
				t.Errorf("growth commands %q, want %q", got, tt.wantCmd)
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.wantErr)
			}
			r, ok := ParseReport(stdout.String())
			if ok != tt.wantOK {
				t.Fatalf("report %+v found = %v in %q, want %v", r, ok, stdout.String(), tt.wantOK)
			}
			if ok && (r.FSType != tt.fstype || r.Device != "/dev/nvme1n1" || strconv.FormatInt(r.BeforeKiB, 10) != tt.before || r.Grew() != tt.wantGrew || r.DeviceBytes != 152471339008) {
				t.Errorf("report %+v, want %s on /dev/nvme1n1 from %s KiB, grew %v", r, tt.fstype, tt.before, tt.wantGrew)
			}
		})
	}
}

func TestParseReport(t *testing.T) {
	tests := []struct {
		name   string
		stdout string
		want   Report
		wantOK bool
	}{
		{"report", "meta-data=...\nslotkeeper-grow fstype=xfs device=/dev/nvme1n1 before_kib=10 after_kib=20 device_bytes=30\n",
			Report{FSType: "xfs", Device: "/dev/nvme1n1", BeforeKiB: 10, AfterKiB: 20, DeviceBytes: 30}, true},
		{"empty (moto returns no output)", "", Report{}, false},
		{"garbled number", "slotkeeper-grow fstype=xfs after_kib=2x0", Report{}, false},
		{"no size", "slotkeeper-grow fstype=xfs", Report{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseReport(tt.stdout)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("ParseReport = %+v, %v, want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}
