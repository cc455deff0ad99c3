package hostcmd

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testVolume is the volume the tests stop and unmount, and testByID the name udev
// gives its NVMe device under /dev/disk/by-id.
const (
	testVolume = "vol-0abc123def4567890"
	testByID   = "nvme-Amazon_Elastic_Block_Store_vol0abc123def4567890"
)

// host is a fake broker for the script's decision logic: shell shims on PATH stand in
// for systemctl, mountpoint, findmnt, fuser, umount and sync, and record what the
// script asked of them; $SLOTKEEPER_DEV_DIR is a directory of the test's that holds
// the volume's device (a plain file) and its by-id link. (Real devices and mounts are
// for an integration test on a machine where mounting is allowed; here the script's
// branches are what is tested.)
type host struct {
	// unknownUnit: systemd has no such unit (LoadState not-found); active: the unit is
	// still active after the stop; stopFails: the stop command exits 1; mounted: the
	// mount is a mount point (of the volume's device); busy: a process uses the
	// mounted filesystem; umountFails: umount exits 32; bind: the device is (also)
	// mounted at /mnt/copy; open: a process holds the device itself open.
	unknownUnit, active, stopFails, mounted, busy, umountFails, bind, open bool
	// xen: the device has no by-id link; it is /dev/xvdf (attached as /dev/sdf).
	// noDevice: the volume's device is not there at all. partition: the device has a
	// partition (lsblk lists it), mounted at /mnt/part.
	xen, noDevice, partition bool
}

// shims builds the fake host and returns the directory of its shims, the file of
// the calls made, the environment to run the script in and the volume's device.
func (h host) shims(t *testing.T) (dir, calls string, env []string, device string) {
	t.Helper()
	dir = t.TempDir()
	state := filepath.Join(dir, "state")
	calls = filepath.Join(dir, "calls")
	devDir := filepath.Join(dir, "dev")
	if err := os.MkdirAll(filepath.Join(devDir, "disk", "by-id"), 0o755); err != nil {
		t.Fatal(err)
	}
	device = filepath.Join(devDir, "nvme1n1")
	if h.xen {
		device = filepath.Join(devDir, "xvdf")
	}
	if !h.noDevice {
		if err := os.WriteFile(device, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if !h.xen {
			if err := os.Symlink("../../nvme1n1", filepath.Join(devDir, "disk", "by-id", testByID)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if h.mounted {
		if err := os.WriteFile(state+".mounted", nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	shims := map[string]string{
		"systemctl": `case $1 in
stop) [ ` + b(h.stopFails) + ` = 1 ] && exit 1; exit 0 ;;
show) if [ ` + b(h.unknownUnit) + ` = 1 ]; then echo LoadState=not-found; else echo LoadState=loaded; fi ;;
is-active) if [ ` + b(h.active) + ` = 1 ]; then echo active; exit 0; else echo inactive; exit 3; fi ;;
esac`,
		"mountpoint": `[ "$2" = /var/lib/kafka ] && [ -e "` + state + `.mounted" ]`,
		"findmnt": `case "$*" in
*--mountpoint*) echo "` + device + `" ;;
*"--source ` + device + `") found=1
	if [ -e "` + state + `.mounted" ]; then echo /var/lib/kafka; found=0; fi
	if [ ` + b(h.bind) + ` = 1 ]; then echo /mnt/copy; found=0; fi
	exit $found ;;
*"--source ` + device + `p1") [ ` + b(h.partition) + ` = 1 ] && { echo /mnt/part; exit 0; }; exit 1 ;;
*--source*) exit 1 ;;
esac`,
		"lsblk": `[ "$3" = "` + device + `" ] || exit 32
echo "` + device + `"
[ ` + b(h.partition) + ` = 1 ] && echo "` + device + `p1"
exit 0`,
		"fuser": `case "$1" in
-m) [ ` + b(h.busy) + ` = 1 ] && { echo " 4242"; exit 0; }; exit 1 ;;
-vm) echo "USER PID ACCESS COMMAND"; echo "kafka 4242 ..c.. java"; exit 0 ;;
-v) echo "USER PID ACCESS COMMAND"; echo "root 777 f.... dd"; exit 0 ;;
*) [ ` + b(h.open) + ` = 1 ] && { echo " 777"; exit 0; }; exit 1 ;;
esac`,
		"umount": `[ ` + b(h.umountFails) + ` = 1 ] && { echo "umount: $1: target is busy." >&2; exit 32; }; rm -f "` + state + `.mounted"`,
		"sync":   `exit 0`,
	}
	for name, body := range shims {
		script := "#!/bin/sh\necho \"" + name + " $*\" >>\"" + calls + "\"\n" + body + "\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash is needed to run the script: %v", err)
	}
	env = []string{"PATH=" + dir + ":" + filepath.Dir(bash) + ":/usr/bin:/bin", DeviceDirEnv + "=" + devDir}
	return dir, calls, env, device
}

// run runs the script exactly as SSM does (the commands, as one file, by /bin/sh) on
// the fake host, and returns its exit code, output and the calls it made.
func (h host) run(t *testing.T, s Stop) (code int, stdout, stderr string, calls []string, device string) {
	t.Helper()
	dir, callFile, env, device := h.shims(t)
	if strings.Contains(s.Command, "kafka-server-stop.sh") {
		stopper := filepath.Join(dir, "kafka-server-stop.sh")
		if err := os.WriteFile(stopper, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		s.Command = strings.Replace(s.Command, "/opt/kafka/bin/kafka-server-stop.sh", stopper, 1)
	}
	file := filepath.Join(dir, "_script.sh")
	if err := os.WriteFile(file, []byte(strings.Join(SSMCommands(StopAndUnmount(s)), "\n")+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", file)
	cmd.Env = env
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	made, _ := os.ReadFile(callFile)
	return code, out.String(), errOut.String(), strings.Split(strings.TrimSpace(string(made)), "\n"), device
}

func TestStopAndUnmount(t *testing.T) {
	kafka := Stop{Unit: "kafka", Mount: "/var/lib/kafka", Volume: testVolume, Device: "/dev/sdf"}
	with := func(f func(*Stop)) Stop { s := kafka; f(&s); return s }
	const dev = "<device>" // the volume's device, in the test's directory
	tests := []struct {
		name     string
		host     host
		stop     Stop
		wantExit int
		wantErr  string // in standard error
		want     StopReport
		wantCall []string // calls that must have been made, in order
		never    string   // a call that must not have been made
	}{
		{"clean stop", host{mounted: true}, kafka, ExitStopped, "",
			StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Volume: testVolume, Device: dev, Unmounted: true},
			[]string{"systemctl stop kafka", "systemctl show -p LoadState kafka", "systemctl is-active kafka", "sync -f /var/lib/kafka",
				"fuser -m /var/lib/kafka", "umount /var/lib/kafka", "findmnt -n -o TARGET --source " + dev, "fuser " + dev}, ""},
		{"already stopped and unmounted (the unit's own stop unmounted it)", host{}, kafka, ExitStopped, "",
			StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Volume: testVolume, Device: dev, Unmounted: false},
			[]string{"systemctl stop kafka", "systemctl is-active kafka", "findmnt -n -o TARGET --source " + dev, "fuser " + dev}, "umount"},
		{"the stop command fails, the unit is stopped", host{stopFails: true, mounted: true}, kafka, ExitStopped, "the stop command failed",
			StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Volume: testVolume, Device: dev, Unmounted: true}, []string{"umount /var/lib/kafka"}, ""},
		{"a unit systemd does not know (it reads inactive)", host{unknownUnit: true, stopFails: true, mounted: true}, kafka, ExitUnknownUnit,
			"unit kafka is not a loaded systemd unit (LoadState 'not-found')", StopReport{}, []string{"systemctl show -p LoadState kafka"}, "umount"},
		{"kafka still running", host{active: true, mounted: true}, kafka, ExitStillActive, "unit kafka is active", StopReport{}, nil, "umount"},
		{"the filesystem in use", host{mounted: true, busy: true}, kafka, ExitMountBusy, "java", StopReport{}, []string{"fuser -vm /var/lib/kafka"}, "umount"},
		{"umount fails", host{mounted: true, umountFails: true}, kafka, ExitUnmountFailed, "target is busy", StopReport{}, nil, ""},
		{"still mounted elsewhere", host{mounted: true, bind: true}, kafka, ExitStillMounted, dev + " is still mounted at /mnt/copy", StopReport{}, nil, ""},
		{"the mount is no mount point, the device is mounted elsewhere", host{bind: true}, kafka, ExitStillMounted, dev + " is still mounted at /mnt/copy",
			StopReport{}, []string{"findmnt -n -o TARGET --source " + dev}, "umount"},
		{"the mount is no mount point, the device is mounted and used elsewhere", host{bind: true, busy: true}, kafka, ExitStillMounted,
			dev + " is still mounted at /mnt/copy", StopReport{}, nil, "umount"},
		{"a wrong data mount: the volume is mounted at /var/lib/kafka, the script was told /data", host{mounted: true},
			with(func(s *Stop) { s.Mount = "/data" }), ExitStillMounted, dev + " is still mounted at /var/lib/kafka", StopReport{}, nil, "umount"},
		{"a partition of the volume mounted elsewhere", host{partition: true}, kafka, ExitStillMounted, dev + "p1 is still mounted at /mnt/part",
			StopReport{}, []string{"lsblk -nrpo NAME " + dev, "findmnt -n -o TARGET --source " + dev, "findmnt -n -o TARGET --source " + dev + "p1"}, ""},
		{"the device held open by a process", host{open: true}, kafka, ExitMountBusy, dev + " is held open: USER PID ACCESS COMMAND root 777 f.... dd",
			StopReport{}, []string{"fuser " + dev, "fuser -v " + dev}, ""},
		{"no device for the volume", host{noDevice: true, mounted: true}, kafka, ExitNoDevice, "no device for volume " + testVolume, StopReport{}, nil, "umount"},
		{"a Xen instance: the device by the name it was attached at", host{xen: true, mounted: true}, kafka, ExitStopped, "",
			StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Volume: testVolume, Device: dev, Unmounted: true},
			[]string{"umount /var/lib/kafka", "findmnt -n -o TARGET --source " + dev}, ""},
		{"no volume of the slot attached: the mount alone", host{mounted: true}, with(func(s *Stop) { s.Volume, s.Device = "", "" }), ExitStopped, "",
			StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Device: dev, Unmounted: true}, []string{"umount /var/lib/kafka", "findmnt -n -o TARGET --source " + dev}, ""},
		{"a custom stop command", host{mounted: true}, with(func(s *Stop) { s.Command = "/opt/kafka/bin/kafka-server-stop.sh && systemctl stop kafka" }),
			ExitStopped, "", StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Volume: testVolume, Device: dev, Unmounted: true},
			[]string{"systemctl stop kafka", "umount /var/lib/kafka"}, ""},
		{"a malformed volume id", host{mounted: true}, with(func(s *Stop) { s.Volume = "vol-1; rm -rf /" }), ExitBadInvocation, "bad arguments: volume",
			StopReport{}, nil, "systemctl"},
		{"a malformed device name", host{mounted: true}, with(func(s *Stop) { s.Device = "/dev/../etc" }), ExitBadInvocation, "bad arguments: device",
			StopReport{}, nil, "systemctl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr, lines, device := tt.host.run(t, tt.stop)
			fix := func(s string) string { return strings.ReplaceAll(s, dev, device) }
			made := strings.Join(lines, "\n")
			if code != tt.wantExit || !strings.Contains(stderr, fix(tt.wantErr)) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q (calls:\n%s)", code, stderr, tt.wantExit, fix(tt.wantErr), made)
			}
			want := tt.want
			want.Device = fix(want.Device)
			rep, ok := ParseStopReport(stdout)
			if ok != (tt.wantExit == ExitStopped) || rep != want {
				t.Errorf("report %+v (%v) from %q, want %+v", rep, ok, stdout, want)
			}
			at := 0
			for _, w := range tt.wantCall {
				i := slices.Index(lines[at:], fix(w))
				if i < 0 {
					t.Errorf("call %q missing or out of order in:\n%s", fix(w), made)
					break
				}
				at += i + 1
			}
			if tt.never != "" && strings.Contains(made, tt.never) {
				t.Errorf("%q was called:\n%s", tt.never, made)
			}
		})
	}
}

// Run twice, the script succeeds twice: the second run finds the unit stopped and the
// device unmounted, and changes nothing.
func TestStopAndUnmountTwice(t *testing.T) {
	h := host{mounted: true}
	dir, callFile, env, device := h.shims(t)
	file := filepath.Join(dir, "_script.sh")
	if err := os.WriteFile(file, []byte(strings.Join(SSMCommands(StopAndUnmount(Stop{Unit: "kafka", Mount: "/var/lib/kafka", Volume: testVolume})), "\n")+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i, unmounted := range []bool{true, false} {
		cmd := exec.Command("/bin/sh", file)
		cmd.Env = env
		out, err := cmd.Output()
		rep, ok := ParseStopReport(string(out))
		if err != nil || !ok || rep.Unmounted != unmounted || rep.Device != device {
			made, _ := os.ReadFile(callFile)
			t.Fatalf("run %d: %v, report %+v (%v); want success, unmounted=%v, device %s (calls:\n%s)", i+1, err, rep, ok, unmounted, device, made)
		}
	}
}

func TestStopAndUnmountQuotesItsArguments(t *testing.T) {
	s := StopAndUnmount(Stop{Unit: "kafka", Mount: "/var/lib/it's kafka"})
	if !strings.Contains(s, `mount='/var/lib/it'\''s kafka'`) {
		t.Errorf("mount not quoted for the shell:\n%s", s)
	}
	cmds := SSMCommands(s)
	if !IsStopAndUnmount(cmds) || IsStopAndUnmount([]string{"systemctl stop kafka"}) {
		t.Errorf("IsStopAndUnmount does not recognise the wrapped script")
	}
	if strings.Contains(cmds[1], "\n"+stopScriptDelim+"\n") {
		t.Errorf("the here-document's delimiter appears inside the script")
	}
}
