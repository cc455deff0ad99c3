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

// host is a fake broker for the script's decision logic: shell shims on PATH stand in
// for systemctl, mountpoint, findmnt, fuser, umount and sync, and record what the
// script asked of them. (Real devices and mounts are for an integration test on a
// machine where mounting is allowed; here the script's branches are what is tested.)
type host struct {
	// active: the unit is still active after the stop; stopFails: the stop command
	// exits 1; mounted: the mount is a mount point; busy: a process uses it;
	// umountFails: umount exits 32; bind: the device stays mounted elsewhere.
	active, stopFails, mounted, busy, umountFails, bind bool
}

func (h host) shims(t *testing.T) (dir, calls string) {
	t.Helper()
	dir = t.TempDir()
	state := filepath.Join(dir, "state")
	calls = filepath.Join(dir, "calls")
	if h.mounted {
		if err := os.WriteFile(filepath.Join(state+".mounted"), nil, 0o644); err != nil {
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
is-active) if [ ` + b(h.active) + ` = 1 ]; then echo active; exit 0; else echo inactive; exit 3; fi ;;
esac`,
		"mountpoint": `[ -e "` + state + `.mounted" ]`,
		"findmnt": `case "$*" in
*--mountpoint*) echo /dev/nvme1n1 ;;
*--source*) if [ -e "` + state + `.mounted" ]; then echo /var/lib/kafka; exit 0; fi; if [ ` + b(h.bind) + ` = 1 ]; then echo /mnt/copy; exit 0; fi; exit 1 ;;
esac`,
		"fuser":  `if [ ` + b(h.busy) + ` = 1 ]; then case "$1" in -vm) echo "USER PID ACCESS COMMAND"; echo "kafka 4242 ..c.. java" ;; *) echo " 4242" ;; esac; exit 0; fi; exit 1`,
		"umount": `[ ` + b(h.umountFails) + ` = 1 ] && { echo "umount: $1: target is busy." >&2; exit 32; }; rm -f "` + state + `.mounted"`,
		"sync":   `exit 0`,
	}
	for name, body := range shims {
		script := "#!/bin/sh\necho \"" + name + " $*\" >>\"" + calls + "\"\n" + body + "\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir, calls
}

func TestStopAndUnmount(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash is needed to run the script: %v", err)
	}
	tests := []struct {
		name     string
		host     host
		stop     string // the stop command; "" = systemctl stop <unit>
		wantExit int
		wantErr  string // in standard error
		want     StopReport
		wantCall []string // calls that must have been made, in order
		never    string   // a call that must not have been made
	}{
		{"clean stop", host{mounted: true}, "", ExitStopped, "", StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Device: "/dev/nvme1n1", Unmounted: true},
			[]string{"systemctl stop kafka", "systemctl is-active kafka", "sync -f /var/lib/kafka", "fuser -m /var/lib/kafka", "umount /var/lib/kafka"}, ""},
		{"already stopped and unmounted", host{}, "", ExitStopped, "", StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Unmounted: false},
			[]string{"systemctl stop kafka", "systemctl is-active kafka"}, "umount"},
		{"a unit that was never installed", host{stopFails: true, mounted: true}, "", ExitStopped, "the stop command failed",
			StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Device: "/dev/nvme1n1", Unmounted: true}, []string{"umount /var/lib/kafka"}, ""},
		{"kafka still running", host{active: true, mounted: true}, "", ExitStillActive, "unit kafka is active", StopReport{}, nil, "umount"},
		{"the filesystem in use", host{mounted: true, busy: true}, "", ExitMountBusy, "java", StopReport{}, []string{"fuser -vm /var/lib/kafka"}, "umount"},
		{"umount fails", host{mounted: true, umountFails: true}, "", ExitUnmountFailed, "target is busy", StopReport{}, nil, ""},
		{"still mounted elsewhere", host{mounted: true, bind: true}, "", ExitStillMounted, "/dev/nvme1n1 is still mounted at /mnt/copy", StopReport{}, nil, ""},
		{"a custom stop command", host{mounted: true}, "/opt/kafka/bin/kafka-server-stop.sh && systemctl stop kafka", ExitStopped, "",
			StopReport{Unit: "kafka", Mount: "/var/lib/kafka", Device: "/dev/nvme1n1", Unmounted: true}, []string{"systemctl stop kafka", "umount /var/lib/kafka"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, calls := tt.host.shims(t)
			if strings.Contains(tt.stop, "kafka-server-stop.sh") {
				stopper := filepath.Join(dir, "kafka-server-stop.sh")
				if err := os.WriteFile(stopper, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
					t.Fatal(err)
				}
				tt.stop = strings.Replace(tt.stop, "/opt/kafka/bin/kafka-server-stop.sh", stopper, 1)
			}
			// Run it exactly as SSM does: the commands, as one file, by /bin/sh.
			file := filepath.Join(dir, "_script.sh")
			if err := os.WriteFile(file, []byte(strings.Join(SSMCommands(StopAndUnmount("kafka", "/var/lib/kafka", tt.stop)), "\n")+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("/bin/sh", file)
			cmd.Env = []string{"PATH=" + dir + ":" + filepath.Dir(bash) + ":/usr/bin:/bin"}
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			made, _ := os.ReadFile(calls)
			if code != tt.wantExit || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q (calls:\n%s)", code, stderr.String(), tt.wantExit, tt.wantErr, made)
			}
			rep, ok := ParseStopReport(stdout.String())
			if ok != (tt.wantExit == ExitStopped) || rep != tt.want {
				t.Errorf("report %+v (%v) from %q, want %+v", rep, ok, stdout.String(), tt.want)
			}
			lines := strings.Split(strings.TrimSpace(string(made)), "\n")
			at := 0
			for _, want := range tt.wantCall {
				i := slices.Index(lines[at:], want)
				if i < 0 {
					t.Errorf("call %q missing or out of order in:\n%s", want, made)
					break
				}
				at += i + 1
			}
			if tt.never != "" && strings.Contains(string(made), tt.never) {
				t.Errorf("%q was called:\n%s", tt.never, made)
			}
		})
	}
}

func TestStopAndUnmountQuotesItsArguments(t *testing.T) {
	s := StopAndUnmount("kafka", "/var/lib/it's kafka", "")
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
