package ssmrun

import (
	"strings"
	"testing"
)

// The commands are one script: a variable set on one line is read on the next, the
// first failing line's status ends it under set -e, and the exit status, standard
// output and standard error come back apart. The test's own environment does not
// leak in; PATH is systemd's.
func TestRunsTheCommandsAsOneScript(t *testing.T) {
	t.Setenv("SLOTKEEPER_LEAK", "from the test")
	res := Run(t, []string{
		"set -eu",
		"mount=/var/lib/kafka",
		`echo "mount=$mount"`,
		`echo "leak=${SLOTKEEPER_LEAK-unset} path=$PATH extra=$EXTRA"`,
		`echo "to stderr" >&2`,
		"false",
		"echo never",
	}, Options{Env: []string{"EXTRA=yes"}})
	if res.Success() || res.ExitCode != 1 {
		t.Errorf("exit %d, want 1 (set -e stops at false)", res.ExitCode)
	}
	want := "mount=/var/lib/kafka\nleak=unset path=" + SystemPath + " extra=yes\n"
	if res.Stdout != want {
		t.Errorf("stdout %q, want %q", res.Stdout, want)
	}
	if strings.TrimSpace(res.Stderr) != "to stderr" {
		t.Errorf("stderr %q", res.Stderr)
	}

	res = Run(t, []string{"exit 3"}, Options{})
	if res.ExitCode != 3 {
		t.Errorf("exit 3 reported as %d", res.ExitCode)
	}
	res = Run(t, []string{`echo "$PATH"`}, Options{PathPrefix: "/opt/stand-ins"})
	if !res.Success() || res.Stdout != "/opt/stand-ins:"+SystemPath+"\n" {
		t.Errorf("PATH with a prefix: %+v", res)
	}
}
