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
	ExitStopped       = 0 // Kafka stopped, the mount is unmounted and nothing holds the device
	ExitBadInvocation = 2 // the script was called wrongly
	ExitStillActive   = 4 // the unit is still active (or activating) after the stop command
	ExitMountBusy     = 5 // processes still use the mounted filesystem
	ExitUnmountFailed = 6 // umount failed
	ExitStillMounted  = 7 // the filesystem is still mounted (there, or elsewhere) after umount
)

// scriptMarker is the comment line every StopAndUnmount script carries.
const scriptMarker = "# slotkeeper: stop the broker and unmount its data volume before the volume is detached."

// stopScriptDelim ends the here-document SSMCommands wraps the script in.
const stopScriptDelim = "SLOTKEEPER_STOP_AND_UNMOUNT"

// StopAndUnmount returns the bash script that hands a leaving broker's data volume over
// cleanly, for the systemd unit unit, the data mount mount and the stop command stop
// (empty: systemctl stop <unit>):
//
//  1. run the stop command (a controlled shutdown: Kafka hands its leaderships over).
//     Its exit status alone decides nothing: a unit that was never installed cannot
//     be stopped, and is not running either;
//  2. check that the unit is not active, activating, deactivating or reloading
//     (systemctl is-active);
//  3. if mount is a mount point: sync it; if any process still uses the filesystem
//     (fuser -m: Kafka run outside the unit, a shell in the directory), fail and name
//     them (fuser -v); else unmount it, never lazily (a lazy unmount hides a user);
//  4. check that mount is no mount point any more and that the filesystem's device is
//     mounted nowhere else either (findmnt --source), which catches a bind mount.
//
// It exits 0 only when all of that holds, and then prints one line, "slotkeeper-stop
// unit=… mount=… device=… unmounted=yes|already"; otherwise it exits with one of the
// Exit* codes and says why on standard error. Running it again after it succeeded
// changes nothing and succeeds again: a stopped unit stays stopped, an unmounted
// mount is left alone. It needs bash, systemctl, coreutils (sync, tr), util-linux
// (mountpoint, findmnt, umount) and psmisc (fuser); without fuser, a filesystem still
// in use makes umount fail instead.
func StopAndUnmount(unit, mount, stop string) string {
	if stop == "" {
		stop = "systemctl stop " + shellQuote(unit)
	}
	lines := []string{
		"#!/usr/bin/env bash",
		scriptMarker,
		"set -uo pipefail",
		"unit=" + shellQuote(unit),
		"mount=" + shellQuote(mount),
		`fail() { local code=$1; shift; echo "slotkeeper-stop: $*" >&2; exit "$code"; }`,
		fmt.Sprintf(`[[ -n $unit && $mount == /* && $mount != / ]] || fail %d "bad arguments: unit '$unit', mount '$mount'"`, ExitBadInvocation),
		"",
		"# 1-2. Stop Kafka; the unit must end up inactive (or failed: stopped too).",
		"if ! ( " + stop + " ); then",
		`	echo "slotkeeper-stop: the stop command failed; checking whether $unit runs" >&2`,
		"fi",
		`state=$(systemctl is-active "$unit" 2>/dev/null)`,
		`case $state in`,
		fmt.Sprintf(`active | activating | deactivating | reloading | refreshing) fail %d "unit $unit is $state after the stop command" ;;`, ExitStillActive),
		`esac`,
		"",
		"# 3-4. Sync and unmount, unless something still uses the filesystem; then check",
		"# that the device is mounted nowhere.",
		`device="" unmounted=already`,
		`if mountpoint -q "$mount"; then`,
		`	device=$(findmnt -n -o SOURCE --mountpoint "$mount")`,
		`	sync -f "$mount" 2>/dev/null || sync`,
		`	pids=$(fuser -m "$mount" 2>/dev/null)`,
		`	if [[ -n ${pids//[[:space:]]/} ]]; then`,
		fmt.Sprintf(`		fail %d "$mount is still in use: $(fuser -vm "$mount" 2>&1 | tr -s '
' ' ')"`, ExitMountBusy),
		`	fi`,
		`	if ! out=$(umount "$mount" 2>&1); then`,
		fmt.Sprintf(`		fail %d "umount $mount failed: $out"`, ExitUnmountFailed),
		`	fi`,
		`	unmounted=yes`,
		`fi`,
		`if mountpoint -q "$mount"; then`,
		fmt.Sprintf(`	fail %d "$mount is still a mount point after umount"`, ExitStillMounted),
		`fi`,
		`if [[ -n $device ]] && where=$(findmnt -n -o TARGET --source "$device"); then`,
		fmt.Sprintf(`	fail %d "$device is still mounted at $(printf '%%s' "$where" | tr -s '
' ' ')"`, ExitStillMounted),
		`fi`,
		`echo "` + StopReportPrefix + `unit=$unit mount=$mount device=${device:--} unmounted=$unmounted"`,
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
	Unit, Mount, Device string
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
