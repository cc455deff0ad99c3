package grow

import (
	"fmt"
	"strconv"
	"strings"
)

// reportPrefix starts the one line of standard output the filesystem script prints
// when it succeeds.
const reportPrefix = "slotkeeper-grow "

// FilesystemScript returns the shell script (one command per line, for SSM's
// AWS-RunShellScript, run as root by /bin/sh) that grows the filesystem mounted at
// mount, online, to fill its device once the device is at least sizeGiB:
//
//   - the mount must be a mount point (not a directory of the root filesystem);
//   - the device must already show the new size (the kernel sees it once the volume
//     modification is optimizing); otherwise the script fails and the growth is retried;
//   - xfs is grown with xfs_growfs on the mount point, ext4 with resize2fs on the
//     device; any other filesystem is refused;
//   - afterwards the filesystem must fill at least 90% of the device, which catches a
//     partition or volume manager in between (slotkeeper formats the whole device);
//   - on success it prints one line: slotkeeper-grow fstype=… device=… before_kib=…
//     after_kib=… device_bytes=… (see ParseReport).
//
// Growing a filesystem that already fills its device changes nothing, so the script is
// safe to run again.
func FilesystemScript(mount string, sizeGiB int32) []string {
	return []string{
		"set -eu",
		"mount=" + shellQuote(mount),
		"want_bytes=" + strconv.FormatInt(int64(sizeGiB)<<30, 10),
		`fail() { echo "slotkeeper-grow: $*" >&2; exit 1; }`,
		`findmnt --mountpoint "$mount" >/dev/null 2>&1 || fail "$mount is not a mount point"`,
		`dev=$(findmnt -n -o SOURCE --mountpoint "$mount")`,
		`fstype=$(findmnt -n -o FSTYPE --mountpoint "$mount")`,
		`dev_bytes=$(blockdev --getsize64 "$dev")`,
		`[ "$dev_bytes" -ge "$want_bytes" ] || fail "$dev is $dev_bytes bytes, not yet $want_bytes: the volume modification has not reached the instance yet"`,
		`before_kib=$(df -P -k "$mount" | awk 'NR == 2 { print $2 }')`,
		`case "$fstype" in`,
		`xfs) xfs_growfs "$mount" >&2 ;;`,
		`ext4) resize2fs "$dev" >&2 ;;`,
		`*) fail "$mount is $fstype; only xfs and ext4 are grown" ;;`,
		`esac`,
		`after_kib=$(df -P -k "$mount" | awk 'NR == 2 { print $2 }')`,
		`[ $((after_kib * 1024 * 10)) -ge $((dev_bytes * 9)) ] || fail "$fstype on $dev is $after_kib KiB after growing, under 90% of its $dev_bytes-byte device"`,
		`echo "` + reportPrefix + `fstype=$fstype device=$dev before_kib=$before_kib after_kib=$after_kib device_bytes=$dev_bytes"`,
	}
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Report is what the filesystem script printed on success.
type Report struct {
	FSType, Device                   string
	BeforeKiB, AfterKiB, DeviceBytes int64
}

// Grew reports whether the filesystem got bigger during the run (false when it
// already filled its device).
func (r Report) Grew() bool { return r.AfterKiB > r.BeforeKiB }

// ParseReport finds the filesystem script's report line in its standard output.
func ParseReport(stdout string) (Report, bool) {
	for _, line := range strings.Split(stdout, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), reportPrefix)
		if !ok {
			continue
		}
		var r Report
		var err error
		for _, field := range strings.Fields(rest) {
			k, v, _ := strings.Cut(field, "=")
			switch k {
			case "fstype":
				r.FSType = v
			case "device":
				r.Device = v
			case "before_kib":
				r.BeforeKiB, err = strconv.ParseInt(v, 10, 64)
			case "after_kib":
				r.AfterKiB, err = strconv.ParseInt(v, 10, 64)
			case "device_bytes":
				r.DeviceBytes, err = strconv.ParseInt(v, 10, 64)
			}
			if err != nil {
				return Report{}, false
			}
		}
		if r.FSType == "" || r.AfterKiB <= 0 {
			return Report{}, false
		}
		return r, true
	}
	return Report{}, false
}

// String renders the report for logs.
func (r Report) String() string {
	return fmt.Sprintf("%s on %s: %d -> %d KiB (device %d bytes)", r.FSType, r.Device, r.BeforeKiB, r.AfterKiB, r.DeviceBytes)
}
