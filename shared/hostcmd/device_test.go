package hostcmd_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/hostcmd"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
	"github.com/slotkeeper/slotkeeper/test/loopdev"
	"github.com/slotkeeper/slotkeeper/test/ssmrun"
)

// The stop-and-unmount command on a real mount: a loop device with xfs, mounted,
// holding a broker's log that a real process (standing in for Kafka) has open; the
// command text exactly as terminate sends it (terminate.StopCommands), run as the SSM
// agent runs it. Only
// systemd is stood in for (this host has none): systemctl stop sends SIGTERM to the
// unit's process and waits for it, is-active reports whether it still runs. fuser,
// sync, umount and findmnt are the system's own.

// brokerConfig is the configuration terminate runs with when the unit and the stop
// command are left at their defaults, for a broker whose data is mounted at mount.
func brokerConfig(t *testing.T, mount string) config.Config {
	t.Helper()
	var cfg config.Config
	for _, v := range config.Vars {
		switch v.Name {
		case "KAFKA_UNIT":
			cfg.KafkaUnit = v.Default
		case "STOP_COMMAND":
			cfg.StopCommand = v.Default
		}
	}
	if cfg.KafkaUnit == "" || cfg.StopCommand == "" {
		t.Fatalf("no defaults for KAFKA_UNIT and STOP_COMMAND: %+v", cfg)
	}
	cfg.Grow.DataMount = mount
	return cfg
}

// systemctlStandIn models one unit, whose main process's pid is in $UNIT_PIDFILE.
const systemctlStandIn = `#!/bin/bash
pid=$(cat "$UNIT_PIDFILE" 2>/dev/null)
runs() { [[ -n $pid && -r /proc/$pid/stat ]] && ! grep -q ') Z ' "/proc/$pid/stat"; }
case $1 in
stop)
	runs || exit 0
	kill -TERM "$pid"
	for _ in $(seq 1 "${UNIT_STOP_TENTHS:-30}"); do runs || exit 0; sleep 0.1; done
	echo "Job for $2.service failed: the process did not stop" >&2
	exit 1 ;;
is-active)
	if runs; then echo active; exit 0; fi
	echo inactive; exit 3 ;;
show)
	[[ $2 == -p && $3 == LoadState ]] || { echo "systemctl stand-in: $* not modelled" >&2; exit 1; }
	echo LoadState=loaded ;;
*) echo "systemctl stand-in: $* not modelled" >&2; exit 1 ;;
esac
`

// host is a broker instance's data disk: the device, its mount, the stand-in's
// directory and the processes using the mount.
type host struct {
	t       *testing.T
	dev     *loopdev.Device
	mount   string
	bin     string
	devDir  string // stands in for /dev: disk/by-id/nvme-Amazon_Elastic_Block_Store_<volume> -> the loop device
	pidfile string
	sums    loopdev.Sums
}

// volumeID is the EBS volume id the host's loop device stands for.
const volumeID = "vol-0123456789abcdef0"

func newHost(t *testing.T) *host {
	t.Helper()
	loopdev.Require(t, "mkfs.xfs", "xfs_repair", "fuser", "mountpoint")
	dir := t.TempDir()
	h := &host{t: t, mount: filepath.Join(dir, "var-lib-kafka"), bin: filepath.Join(dir, "bin"), pidfile: filepath.Join(dir, "kafka.pid")}
	for _, d := range []string{h.mount, h.bin} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(h.bin, "systemctl"), []byte(systemctlStandIn), 0o755); err != nil {
		t.Fatal(err)
	}
	h.dev = loopdev.New(t, loopdev.MinXFSBytes)
	// The command finds the volume's device as on a Nitro instance, by its id.
	h.devDir = filepath.Join(dir, "dev")
	byID := filepath.Join(h.devDir, "disk", "by-id")
	if err := os.MkdirAll(byID, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(h.dev.Path(), filepath.Join(byID, "nvme-Amazon_Elastic_Block_Store_"+strings.ReplaceAll(volumeID, "-", ""))); err != nil {
		t.Fatal(err)
	}
	h.dev.Format("xfs")
	h.dev.Mount(h.mount)
	h.sums = loopdev.WriteFiles(t, filepath.Join(h.mount, "data"), 6, 64<<10)
	return h
}

// start runs a process that opens file (under the mount) and keeps it open: with
// ignoreTerm, SIGTERM does not end it. The test reaps it; it is killed at the end.
func (h *host) start(file string, ignoreTerm bool) *exec.Cmd {
	h.t.Helper()
	trap := ""
	if ignoreTerm {
		trap = "trap '' TERM; "
	}
	cmd := exec.Command("/bin/bash", "-c", trap+`exec 3<"$1"; exec sleep 600`, "holder", file)
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	h.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	// Wait until the file is open, as fuser will see it.
	for i := 0; ; i++ {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", cmd.Process.Pid)); target == file {
			break
		}
		if i == 200 {
			h.t.Fatalf("process %d never opened %s", cmd.Process.Pid, file)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cmd
}

// kafka starts the unit's process, holding one of its log segments open.
func (h *host) kafka(ignoreTerm bool) *exec.Cmd {
	h.t.Helper()
	cmd := h.start(filepath.Join(h.mount, "data", "orders-0", fmt.Sprintf("%020d.log", 0)), ignoreTerm)
	if err := os.WriteFile(h.pidfile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return cmd
}

// stop runs the stop-and-unmount command as terminate sends it, as SSM runs it.
func (h *host) stop() (ssmrun.Result, hostcmd.StopReport, bool) {
	h.t.Helper()
	commands := terminate.StopCommands(brokerConfig(h.t, h.mount), volumeID, "")
	res := ssmrun.Run(h.t, commands, ssmrun.Options{PathPrefix: h.bin,
		Env: []string{"UNIT_PIDFILE=" + h.pidfile, "UNIT_STOP_TENTHS=20", hostcmd.DeviceDirEnv + "=" + h.devDir}})
	rep, ok := hostcmd.ParseStopReport(res.Stdout)
	return res, rep, ok
}

// wantHeld checks the command failed with code, the data still mounted and intact.
func (h *host) wantHeld(res ssmrun.Result, ok bool, code int, stderr string) {
	h.t.Helper()
	if res.Success() || ok || res.ExitCode != code || !strings.Contains(res.Stderr, stderr) {
		h.t.Errorf("exit %d (report found: %v), stderr %q; want exit %d saying %q", res.ExitCode, ok, res.Stderr, code, stderr)
	}
	if loopdev.SourceOf(h.mount) != h.dev.Path() {
		h.t.Errorf("%s is no longer mounted at %s after a failed stop", h.dev.Path(), h.mount)
	}
	if diff := h.sums.Diff(loopdev.Checksums(h.t, filepath.Join(h.mount, "data"))); len(diff) > 0 {
		h.t.Errorf("data changed: %s", strings.Join(diff, "; "))
	}
}

// wantUnmounted checks the command succeeded and the device is mounted nowhere, its
// filesystem clean and its data intact when read back from the device.
func (h *host) wantUnmounted(res ssmrun.Result, rep hostcmd.StopReport, ok bool, unmounted bool) string {
	h.t.Helper()
	if !res.Success() || !ok || rep.Unmounted != unmounted || rep.Mount != h.mount {
		h.t.Fatalf("exit %d, report %+v (found %v), stderr %q; want success, unmounted=%v", res.ExitCode, rep, ok, res.Stderr, unmounted)
	}
	if unmounted && rep.Device != h.dev.Path() {
		h.t.Errorf("report names device %q, want %s", rep.Device, h.dev.Path())
	}
	if m, err := loopdev.Mounts(h.dev.Path()); err != nil || len(m) > 0 {
		h.t.Fatalf("%s is still mounted at %q (%v)", h.dev.Path(), m, err)
	}
	if err := h.dev.Check("xfs"); err != nil {
		h.t.Errorf("xfs_repair -n after the unmount: %v", err)
	}
	check := h.t.TempDir()
	h.dev.Mount(check, "ro")
	if diff := h.sums.Diff(loopdev.Checksums(h.t, filepath.Join(check, "data"))); len(diff) > 0 {
		h.t.Errorf("data changed: %s", strings.Join(diff, "; "))
	}
	h.dev.Unmount(check)
	return fmt.Sprintf("unmounted, mounted nowhere, xfs_repair -n clean, data %s intact", h.sums)
}

// A process other than Kafka holding a file open in the data mount: the command stops
// Kafka but does not report success, and leaves the filesystem mounted; once the
// holder exits, the same command unmounts it cleanly; run again, it still succeeds.
func TestStopAndUnmountOnARealMount(t *testing.T) {
	start := time.Now()
	h := newHost(t)
	kafka := h.kafka(false)
	holder := h.start(filepath.Join(h.mount, "data", "orders-1", fmt.Sprintf("%020d.log", 1000)), false)

	res, _, ok := h.stop()
	h.wantHeld(res, ok, hostcmd.ExitMountBusy, strconv.Itoa(holder.Process.Pid))
	if processRuns(kafka.Process.Pid) {
		t.Errorf("Kafka (pid %d) still runs after the stop command", kafka.Process.Pid)
	}
	t.Logf("held by pid %d: exit %d after %.2fs: %s", holder.Process.Pid, res.ExitCode, res.Took.Seconds(), lastLine(res.Stderr))

	_ = holder.Process.Kill()
	for processRuns(holder.Process.Pid) {
		time.Sleep(10 * time.Millisecond)
	}
	res, rep, ok := h.stop()
	t.Logf("holder gone: exit %d after %.2fs: %s; %s", res.ExitCode, res.Took.Seconds(), strings.TrimSpace(res.Stdout), h.wantUnmounted(res, rep, ok, true))

	res, rep, ok = h.stop() // a retry after a lost response
	h.wantUnmounted(res, rep, ok, false)
	t.Logf("run again: exit %d: %s (%.2fs in all)", res.ExitCode, strings.TrimSpace(res.Stdout), time.Since(start).Seconds())
}

// Kafka that does not stop (it ignores SIGTERM, as a hung broker would): the command
// fails and the filesystem stays mounted under it; once it is gone, it unmounts.
func TestStopAndUnmountWhileKafkaRuns(t *testing.T) {
	h := newHost(t)
	kafka := h.kafka(true)
	res, _, ok := h.stop()
	h.wantHeld(res, ok, hostcmd.ExitStillActive, "is active")
	t.Logf("Kafka ignoring SIGTERM: exit %d after %.2fs: %s", res.ExitCode, res.Took.Seconds(), lastLine(res.Stderr))
	_ = kafka.Process.Kill()
	for processRuns(kafka.Process.Pid) {
		time.Sleep(10 * time.Millisecond)
	}
	res, rep, ok := h.stop()
	t.Logf("Kafka gone: exit %d: %s", res.ExitCode, h.wantUnmounted(res, rep, ok, true))
}

// The filesystem also mounted elsewhere (a bind mount): unmounting the data mount is
// not enough, and the command says where it still is.
func TestStopAndUnmountWithABindMount(t *testing.T) {
	h := newHost(t)
	h.kafka(false)
	other := t.TempDir()
	if _, err := loopdev.Run("mount", "--bind", h.mount, other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if loopdev.IsMountPoint(other) {
			_, _ = loopdev.Run("umount", other)
		}
	})
	res, _, ok := h.stop()
	if res.Success() || ok || res.ExitCode != hostcmd.ExitStillMounted || !strings.Contains(res.Stderr, other) {
		t.Errorf("exit %d (report %v), stderr %q; want exit %d naming %s", res.ExitCode, ok, res.Stderr, hostcmd.ExitStillMounted, other)
	}
	t.Logf("bind mount at %s: exit %d: %s", other, res.ExitCode, lastLine(res.Stderr))
	if _, err := loopdev.Run("umount", other); err != nil {
		t.Fatal(err)
	}
	res, rep, ok := h.stop()
	t.Logf("bind mount gone: exit %d: %s", res.ExitCode, h.wantUnmounted(res, rep, ok, false))
}

func processRuns(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// lastLine is the script's last line of standard error, without fuser's complaints
// about processes it may not inspect (on some hosts, pid 1).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return noPermission.ReplaceAllString(lines[len(lines)-1], "")
}

var noPermission = regexp.MustCompile(`Cannot stat file /proc/[0-9]+/fd/[0-9]+: Permission denied ?`)
