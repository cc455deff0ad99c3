// Package hostcmd holds the commands slotkeeper runs on broker instances over SSM
// (AWS-RunShellScript, as root): their text in one place, each a self-contained bash
// script that needs only bash, systemd's systemctl, coreutils, util-linux and psmisc,
// so that it can be read, reviewed and run by hand, and tested against real block
// devices.
package hostcmd

import (
	"fmt"
	"strings"
)

// StopReportPrefix starts the one line of standard output StopAndUnmount prints when
// it succeeds.
const StopReportPrefix = "slotkeeper-stop "

// Exit codes of the StopAndUnmount script. Any of them but ExitStopped means the data
// volume must stay attached: something may still use it.
const (
	ExitStopped       = 0 // Kafka stopped, the volume's device is mounted nowhere and nothing holds it
	ExitBadInvocation = 2 // the script was called wrongly
	ExitUnknownUnit   = 3 // the unit is not a loaded systemd unit: whether Kafka runs cannot be told
	ExitStillActive   = 4 // the unit is still active (or activating) after the stop command
	ExitMountBusy     = 5 // processes still use the mounted filesystem, or hold the device open
	ExitUnmountFailed = 6 // umount failed
	ExitStillMounted  = 7 // the filesystem is still mounted (there, or elsewhere) after umount
	ExitNoDevice      = 8 // the volume's device cannot be found on the instance
)

// scriptMarker is the comment line every StopAndUnmount script carries.
const scriptMarker = "# slotkeeper: stop the broker and unmount its data volume before the volume is detached."

// stopScriptDelim ends the here-document SSMCommands wraps the script in.
const stopScriptDelim = "SLOTKEEPER_STOP_AND_UNMOUNT"

// DeviceDirEnv names the environment variable that replaces /dev where the script
// looks for the volume's device. Nothing sets it on a broker (SSM runs the script
// with the agent's environment); tests point it at a directory of their own.
const DeviceDirEnv = "SLOTKEEPER_DEV_DIR"

// Stop says what StopAndUnmount stops and unmounts.
type Stop struct {
	// Unit is the broker's systemd unit; Command the stop command (empty:
	// systemctl stop <Unit>).
	Unit, Command string
	// Mount is the data mount point.
	Mount string
	// Volume is the slot's data volume as attached to the instance (EC2 says so):
	// its id and the device name it was attached at (/dev/sdf, /dev/xvdf). Empty when
	// no volume of the slot is attached to the instance.
	Volume, Device string
}

// StopAndUnmount returns the bash script that hands a leaving broker's data volume over
// cleanly:
//
//  1. run the stop command (a controlled shutdown: Kafka hands its leaderships over).
//     Its exit status alone decides nothing;
//  2. check that the unit is a loaded systemd unit (systemctl show -p LoadState: a
//     unit that does not exist reads "inactive", which proves nothing) and that it is
//     not active, activating, deactivating, reloading or refreshing (systemctl
//     is-active);
//  3. find the volume's device from its id: the NVMe device udev links as
//     /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_<id without its hyphen> (Nitro),
//     else the device name it was attached at, as /dev/sd<x> or /dev/xvd<x> (Xen);
//     none found fails;
//  4. if the mount is a mount point: sync it; if any process still uses the filesystem
//     (fuser -m: Kafka run outside the unit, a shell in the directory), fail and name
//     them (fuser -v); else unmount it, never lazily (a lazy unmount hides a user);
//     then check that it is no mount point any more;
//  5. whether or not the mount was a mount point (the unit's own stop may have
//     unmounted it; SLOTKEEPER_DATA_MOUNT may name another path): check that the
//     volume's device and its partitions (lsblk), and the device that was mounted at
//     the mount, are mounted nowhere (findmnt --source, which also catches a bind
//     mount) and held open by no process (fuser).
//
// It exits 0 only when all of that holds, and then prints one line, "slotkeeper-stop
// unit=… mount=… volume=… device=… unmounted=yes|already"; otherwise it exits with
// one of the Exit* codes and says why on standard error. Running it again after it
// succeeded changes nothing and succeeds again. It needs bash, systemctl, coreutils
// (sync, tr, readlink), util-linux (mountpoint, findmnt, lsblk, umount) and psmisc
// (fuser);
// without fuser the in-use checks are skipped, and a filesystem still in use makes
// umount fail instead. The device is looked for under $SLOTKEEPER_DEV_DIR instead of
// /dev when that is set (tests only).
func StopAndUnmount(s Stop) string {
	stop := s.Command
	if stop == "" {
		stop = "systemctl stop " + shellQuote(s.Unit)
	}
	lines := []string{
		"#!/usr/bin/env bash",
		scriptMarker,
		"set -uo pipefail",
		"unit=" + shellQuote(s.Unit),
		"mount=" + shellQuote(s.Mount),
		"volume=" + shellQuote(s.Volume),
		"attached_as=" + shellQuote(s.Device),
		`dev_dir=${` + DeviceDirEnv + `:-/dev}`,
		`fail() { local code=$1; shift; echo "slotkeeper-stop: $*" >&2; exit "$code"; }`,
		fmt.Sprintf(`[[ -n $unit && $mount == /* && $mount != / ]] || fail %d "bad arguments: unit '$unit', mount '$mount'"`, ExitBadInvocation),
		fmt.Sprintf(`[[ -z $volume || $volume =~ ^vol-[0-9a-f]+$ ]] || fail %d "bad arguments: volume '$volume'"`, ExitBadInvocation),
		fmt.Sprintf(`[[ -z $attached_as || $attached_as =~ ^/dev/(sd|xvd)[a-z]+$ ]] || fail %d "bad arguments: device '$attached_as'"`, ExitBadInvocation),
		`oneline() { tr -s '\n' ' '; }`,
		"",
		"# 1-2. Stop Kafka; the unit must exist and end up inactive (or failed: stopped too).",
		"if ! ( " + stop + " ); then",
		`	echo "slotkeeper-stop: the stop command failed; checking whether $unit runs" >&2`,
		"fi",
		`load=$(systemctl show -p LoadState "$unit" 2>/dev/null)`,
		`load=${load#LoadState=}`,
		`if [[ $load != loaded ]]; then`,
		fmt.Sprintf(`	fail %d "unit $unit is not a loaded systemd unit (LoadState '${load:-unknown}'): cannot tell whether Kafka runs"`, ExitUnknownUnit),
		`fi`,
		`state=$(systemctl is-active "$unit" 2>/dev/null)`,
		`case $state in`,
		fmt.Sprintf(`active | activating | deactivating | reloading | refreshing) fail %d "unit $unit is $state after the stop command" ;;`, ExitStillActive),
		`esac`,
		"",
		"# 3. The volume's device: by its id (NVMe), else by the name it was attached at.",
		`device=""`,
		`if [[ -n $volume ]]; then`,
		`	link="$dev_dir/disk/by-id/nvme-Amazon_Elastic_Block_Store_${volume//-/}"`,
		`	candidates=("$link")`,
		`	if [[ -n $attached_as ]]; then`,
		`		name=${attached_as##*/}`,
		`		name=${name#xvd}`,
		`		name=${name#sd}`,
		`		candidates+=("$dev_dir/sd$name" "$dev_dir/xvd$name")`,
		`	fi`,
		`	for candidate in "${candidates[@]}"; do`,
		`		if [[ -e $candidate ]]; then`,
		`			device=$(readlink -f "$candidate")`,
		`			break`,
		`		fi`,
		`	done`,
		`	if [[ -z $device ]]; then`,
		fmt.Sprintf(`		fail %d "no device for volume $volume (looked for ${candidates[*]}): cannot check that it is unmounted"`, ExitNoDevice),
		`	fi`,
		`fi`,
		"",
		"# 4. Sync and unmount the mount, unless something still uses the filesystem.",
		`mounted_from="" unmounted=already`,
		`if mountpoint -q "$mount"; then`,
		`	mounted_from=$(findmnt -n -o SOURCE --mountpoint "$mount")`,
		`	sync -f "$mount" 2>/dev/null || sync`,
		`	pids=$(fuser -m "$mount" 2>/dev/null)`,
		`	if [[ -n ${pids//[[:space:]]/} ]]; then`,
		fmt.Sprintf(`		fail %d "$mount is still in use: $(fuser -vm "$mount" 2>&1 | oneline)"`, ExitMountBusy),
		`	fi`,
		`	if ! out=$(umount "$mount" 2>&1); then`,
		fmt.Sprintf(`		fail %d "umount $mount failed: $out"`, ExitUnmountFailed),
		`	fi`,
		`	unmounted=yes`,
		`fi`,
		`if mountpoint -q "$mount"; then`,
		fmt.Sprintf(`	fail %d "$mount is still a mount point after umount"`, ExitStillMounted),
		`fi`,
		"",
		"# 5. The volume's device and its partitions (and what was mounted at the mount)",
		"# are mounted nowhere and held open by no process.",
		`devices=()`,
		`for dev in "$device" "$mounted_from"; do`,
		`	[[ -n $dev ]] || continue`,
		`	if parts=$(lsblk -nrpo NAME "$dev" 2>/dev/null) && [[ -n $parts ]]; then`,
		`		while read -r part; do devices+=("$part"); done <<<"$parts"`,
		`	else`,
		`		devices+=("$dev")`,
		`	fi`,
		`done`,
		`for dev in "${devices[@]}"; do`,
		`	if where=$(findmnt -n -o TARGET --source "$dev"); then`,
		fmt.Sprintf(`		fail %d "$dev is still mounted at $(printf '%%s' "$where" | oneline)"`, ExitStillMounted),
		`	fi`,
		`	pids=$(fuser "$dev" 2>/dev/null)`,
		`	if [[ -n ${pids//[[:space:]]/} ]]; then`,
		fmt.Sprintf(`		fail %d "$dev is held open: $(fuser -v "$dev" 2>&1 | oneline)"`, ExitMountBusy),
		`	fi`,
		`done`,
		`[[ -n $device ]] || device=$mounted_from`,
		`echo "` + StopReportPrefix + `unit=$unit mount=$mount volume=${volume:--} device=${device:--} unmounted=$unmounted"`,
	}
	return strings.Join(lines, "\n") + "\n"
}

// SSMCommands returns script as the commands parameter of AWS-RunShellScript: the
// agent writes the lines to a file and runs it with /bin/sh, so the script is handed
// to bash on standard input (a quoted here-document: sh expands nothing in it). The
// command's exit status is the script's.
func SSMCommands(script string) []string {
	return []string{
		"bash -s <<'" + stopScriptDelim + "'",
		strings.TrimSuffix(script, "\n"),
		stopScriptDelim,
	}
}

// IsStopAndUnmount reports whether commands (an AWS-RunShellScript commands
// parameter) are a StopAndUnmount script as SSMCommands wraps it.
func IsStopAndUnmount(commands []string) bool {
	return len(commands) == 3 && strings.HasSuffix(commands[0], "<<'"+stopScriptDelim+"'") &&
		strings.Contains(commands[1], scriptMarker)
}

// StopReport is what the StopAndUnmount script printed on success.
type StopReport struct {
	Unit, Mount string
	// Volume is the volume whose device was checked (empty: none was given), Device
	// that device, or the device that was mounted at the mount (empty: neither).
	Volume, Device string
	// Unmounted is true when the script unmounted the mount, false when it was not
	// mounted (any more).
	Unmounted bool
}

// ParseStopReport finds the StopAndUnmount script's report line in its standard output.
func ParseStopReport(stdout string) (StopReport, bool) {
	for _, line := range strings.Split(stdout, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), StopReportPrefix)
		if !ok {
			continue
		}
		var r StopReport
		for _, field := range strings.Fields(rest) {
			k, v, _ := strings.Cut(field, "=")
			switch k {
			case "unit":
				r.Unit = v
			case "mount":
				r.Mount = v
			case "volume":
				r.Volume = strings.TrimPrefix(v, "-")
			case "device":
				r.Device = strings.TrimPrefix(v, "-")
			case "unmounted":
				r.Unmounted = v == "yes"
			}
		}
		return r, true
	}
	return StopReport{}, false
}

// shellQuote quotes s for bash.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
