package slotctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
)

// runEnv runs slotctl with the given environment only (no moto, no Clients override).
func runEnv(env map[string]string, terminal bool, args ...string) result {
	var out, errOut bytes.Buffer
	code := slotctl.Main(context.Background(), args, slotctl.IO{
		Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return env[k] }, Terminal: terminal,
	})
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// Every bad command line is exit code 2 with the problem and a hint, before any AWS
// call; --json turns the report into a JSON document.
func TestUsageErrors(t *testing.T) {
	full := map[string]string{"SLOTKEEPER_CLUSTER": "c", "SLOTKEEPER_TABLE": "t", "SLOTKEEPER_SLOT_COUNT": "3"}
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		wantCode int
		wantErr  []string // in stderr
		wantHint string
	}{
		{"unknown command", nil, []string{"statuss"}, slotctl.ExitUsage, []string{`unknown command "statuss"`}, "the commands are: status, history, preflight, evict, reset, adopt, roll"},
		{"unknown flag", full, []string{"status", "--colour"}, slotctl.ExitUsage, []string{"flag provided but not defined: -colour"}, "slotctl help status"},
		{"a flag without its value", full, []string{"status", "--timeout"}, slotctl.ExitUsage, []string{"flag needs an argument: -timeout"}, "slotctl help status"},
		{"a bad flag value", full, []string{"status", "--timeout", "soon"}, slotctl.ExitUsage, []string{`invalid value "soon" for flag -timeout`}, ""},
		{"missing configuration, all of it at once", nil, []string{"preflight"}, slotctl.ExitUsage,
			[]string{"SLOTKEEPER_CLUSTER (--cluster)", "SLOTKEEPER_ASG_NAME (--asg-name)", "SLOTKEEPER_TABLE (--table)", "SLOTKEEPER_SLOT_COUNT (--slot-count)", "SLOTKEEPER_SUBNETS (--subnets)"},
			"slotctl help config"},
		{"invalid configuration", full, []string{"status", "--slot-count", "many", "--dns-name", "kafka.internal"}, slotctl.ExitUsage,
			[]string{`SLOTKEEPER_SLOT_COUNT: "many" is not an integer`, "SLOTKEEPER_HOSTED_ZONE_ID: required with SLOTKEEPER_DNS_NAME"}, "fix the variables"},
		{"a missing argument", full, []string{"history"}, slotctl.ExitUsage, []string{"history takes 1 argument(s), got 0"}, "usage: slotctl history <slot>"},
		{"too many arguments", full, []string{"evict", "1", "2"}, slotctl.ExitUsage, []string{"evict takes 1 argument(s), got 2"}, "usage: slotctl evict <slot>"},
		{"a slot that is no slot", full, []string{"history", "-1"}, slotctl.ExitUsage, []string{"flag provided but not defined: -1"}, ""},
		{"a slot out of range, before any AWS configuration", full, []string{"history", "3"}, slotctl.ExitUsage, []string{`"3" is not a slot of cluster c`}, "slots are numbered 0 to 2"},
		{"no region", full, []string{"history", "1"}, slotctl.ExitUsage, []string{"no AWS region configured"}, "set AWS_REGION, or pass --region"},
		{"roll without Kafka", full, []string{"roll", "--asg-name", "g"}, slotctl.ExitUsage, []string{"missing configuration: SLOTKEEPER_KAFKA_BOOTSTRAP (--kafka-bootstrap)"}, "slotctl help config"},
		{"roll since a time that is no time", full, []string{"roll", "--asg-name", "g", "--kafka-bootstrap", "k:9092", "--launched-before", "yesterday"},
			slotctl.ExitUsage, []string{`--launched-before "yesterday"`}, "RFC 3339"},
		{"roll of a slot that is no slot", full, []string{"roll", "--asg-name", "g", "--kafka-bootstrap", "k:9092", "--slots", "0,7"},
			slotctl.ExitUsage, []string{`"7" is not a slot of cluster c`}, "slots are numbered 0 to 2"},
		{"adopt without --slot", full, []string{"adopt", "i-0abc12345def67890", "--asg-name", "g", "--subnets", "subnet-1"},
			slotctl.ExitUsage, []string{"adopt needs --slot"}, "usage: slotctl adopt i-0abc12345def67890 --slot N"},
		{"adopt with an ENI where slots have none", full, []string{"adopt", "i-0abc12345def67890", "--slot", "1", "--eni-id", "eni-1", "--eni", "false", "--asg-name", "g", "--subnets", "subnet-1"},
			slotctl.ExitUsage, []string{"--eni-id is given but SLOTKEEPER_ENI is false"}, "primary IP"},
	}
	t.Setenv("AWS_REGION", "") // the SDK reads the process environment
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_PROFILE", "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runEnv(tt.env, false, tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("exit %d, want %d\nstderr %s", r.code, tt.wantCode, r.stderr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if !strings.Contains(r.stderr, "hint: ") || !strings.Contains(r.stderr, tt.wantHint) {
				t.Errorf("stderr lacks the hint %q:\n%s", tt.wantHint, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}

			// The same with --json: one document on stdout, nothing on stderr.
			j := runEnv(tt.env, false, append(tt.args, "--json")...)
			var doc struct {
				Error, Hint string
				ExitCode    int `json:"exit_code"`
			}
			if err := json.Unmarshal([]byte(j.stdout), &doc); err != nil || j.stderr != "" {
				t.Fatalf("--json: stdout %q (%v), stderr %q", j.stdout, err, j.stderr)
			}
			if doc.ExitCode != tt.wantCode || j.code != tt.wantCode || doc.Error == "" || !strings.Contains(doc.Hint, tt.wantHint) {
				t.Errorf("--json document %+v (exit %d)", doc, j.code)
			}
		})
	}
}

// An AWS endpoint that does not answer is exit code 3, with a hint that names it.
func TestUnreachableAWS(t *testing.T) {
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "testing")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	env := map[string]string{"SLOTKEEPER_CLUSTER": "c", "SLOTKEEPER_TABLE": "t", "SLOTKEEPER_SLOT_COUNT": "3"}
	r := runEnv(env, false, "status", "--endpoint-url", "http://127.0.0.1:1", "--timeout", "10s")
	if r.code != slotctl.ExitUnreachable || !strings.Contains(r.stderr, "connection refused") ||
		!strings.Contains(r.stderr, "hint: nothing answers at the AWS endpoint") {
		t.Errorf("exit %d, stderr %s", r.code, r.stderr)
	}
}

// Help is exit code 0, for the overview, each command and the configuration flags,
// which are every SLOTKEEPER_ variable.
func TestHelp(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{nil, []string{"Commands:", "status", "history <slot>", "preflight", "evict <slot>", "Exit codes: 0 ok"}},
		{[]string{"help"}, []string{"Commands:"}},
		{[]string{"--help"}, []string{"Commands:"}},
		{[]string{"help", "evict"}, []string{"ShouldDecrementDesiredCapacity=false", "--yes", "Needs: SLOTKEEPER_CLUSTER, SLOTKEEPER_ASG_NAME"}},
		{[]string{"preflight", "-h"}, []string{"NOT_ENOUGH_REPLICAS", "AZRebalance", "--broker-start"}},
		{[]string{"adopt", "--help"}, []string{"--slot", "--volume", "--eni-id", "--yes", "never formatted", "Needs: SLOTKEEPER_CLUSTER, SLOTKEEPER_ASG_NAME"}},
		{[]string{"help", "roll"}, []string{"--dry-run", "--slots", "--launched-before", "quorum leader very last", "SLOTKEEPER_KAFKA_BOOTSTRAP"}},
		{[]string{"help", "config"}, []string{"--asg-name", "--kafka-bootstrap", "--hosted-zone-id", "--grow-max-size-gib"}},
	}
	for _, tt := range tests {
		r := runEnv(nil, false, tt.args...)
		if r.code != slotctl.ExitOK || r.stderr != "" {
			t.Errorf("%v: exit %d, stderr %q", tt.args, r.code, r.stderr)
		}
		for _, w := range tt.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%v: output lacks %q", tt.args, w)
			}
		}
	}
	if r := runEnv(nil, false, "help", "nothing"); r.code != slotctl.ExitUsage {
		t.Errorf("help for an unknown topic: exit %d", r.code)
	}

	// Every command's help shows examples of it.
	for _, c := range append(slotctl.Commands(), demo.Command()) {
		var out, errOut bytes.Buffer
		code := slotctl.Main(context.Background(), []string{c.Name, "--help"}, slotctl.IO{
			Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }}, demo.Command())
		_, examples, _ := strings.Cut(out.String(), "\nExamples:\n")
		if code != slotctl.ExitOK || !strings.HasPrefix(strings.TrimSpace(examples), "slotctl "+c.Name) {
			t.Errorf("slotctl %s --help: exit %d, no example of the command:\n%s", c.Name, code, out.String())
		}
	}
}

// Colour is used on a terminal only, and never with --no-color or NO_COLOR.
func TestColourOnlyOnATerminal(t *testing.T) {
	tests := []struct {
		terminal bool
		env      map[string]string
		args     []string
		want     bool
	}{
		{false, nil, nil, false},
		{true, nil, nil, true},
		{true, nil, []string{"--no-color"}, false},
		{true, map[string]string{"NO_COLOR": "1"}, nil, false},
		{true, map[string]string{"TERM": "dumb"}, nil, false},
	}
	for _, tt := range tests {
		r := runEnv(tt.env, tt.terminal, append([]string{"statuss"}, tt.args...)...)
		if got := strings.Contains(r.stderr, "\x1b["); got != tt.want {
			t.Errorf("terminal %v, env %v, args %v: colour %v, want %v (%q)", tt.terminal, tt.env, tt.args, got, tt.want, r.stderr)
		}
	}
}
