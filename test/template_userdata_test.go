package test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// userDataParts returns the parts the broker launch template's user data joins, as
// CloudFormation evaluates them, and the whole rendered user data.
func userDataParts(t *testing.T, s *cfnStack) ([]string, string) {
	t.Helper()
	raw := cfnObj(cfnObj(s.raw("BrokerLaunchTemplate")["Properties"])["LaunchTemplateData"])["UserData"]
	join := cfnList(cfnObj(cfnObj(raw)["Fn::Base64"])["Fn::Join"])
	if len(join) != 2 || join[0] != "" {
		t.Fatalf("user data is not Fn::Base64 of Fn::Join with an empty delimiter: %v", raw)
	}
	var parts []string
	for _, p := range cfnList(join[1]) {
		parts = append(parts, cfnStr(s.eval(p)))
	}
	rendered := cfnStr(cfnObj(s.props(s.resource(t, "BrokerLaunchTemplate"))["LaunchTemplateData"])["UserData"])
	decoded, err := base64.StdEncoding.DecodeString(rendered)
	if err != nil {
		t.Fatal(err)
	}
	return parts, string(decoded)
}

// bashReprint returns bash's own rendering of a script's code: the script read as the
// body of a function (never run) and printed back by declare -f, which leaves comments
// and layout out. A copy of a script means the same to bash exactly when the two
// renderings are equal, however the copy was made.
func bashReprint(t *testing.T, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "script.sh")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-c", `eval "__whole() {
$(cat "$1")
}" && declare -f __whole`, "bash", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash cannot read the script: %v\n%s", err, stderr.String())
	}
	return string(out)
}

// copyOf returns the part of the user data that copies file: the JSON file as it is;
// for a script, the one part that starts with the file's first line (the shebang, which
// the copy keeps), or "" when there is none or several.
func copyOf(parts []string, file, text string) string {
	if !strings.HasSuffix(file, ".sh") {
		if slices.Contains(parts, text) {
			return text
		}
		return ""
	}
	first, _, _ := strings.Cut(text, "\n")
	var found []string
	for _, p := range parts {
		if strings.HasPrefix(p, first+"\n") {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		return ""
	}
	return found[0]
}

// The broker fleet's user data carries deploy/cloudwatch-agent.json as it is and
// deploy/broker-bootstrap.sh without its comments (scripts/sync-user-data.sh copies
// them in), and the copied script is the same code to bash (bash's own rendering of
// the copy and of the file are equal, whatever the stripping did) and behaves as the
// file does; the user data fits EC2's
// 16 KB, writes settings the bootstrap accepts and that describe this stack, and
// reports the disk use of the mount the functions' disk alarms watch.
func TestTemplateBrokerUserData(t *testing.T) {
	s := deployStack(t, "fleet")
	parts, userData := userDataParts(t, s)
	template, err := os.ReadFile(filepath.Join(templateRepoDir(), "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	marked := regexp.MustCompile(`(?m)^ *- \| # verbatim: (\S+)$`).FindAllSubmatch(template, -1)
	var embedded []string
	for _, m := range marked {
		embedded = append(embedded, string(m[1]))
	}
	if want := []string{"deploy/cloudwatch-agent.json", "deploy/broker-bootstrap.sh"}; !slices.Equal(embedded, want) {
		t.Fatalf("template.yaml embeds %v, want %v", embedded, want)
	}
	files, copies := map[string]string{}, map[string]string{}
	for _, f := range embedded {
		b, err := os.ReadFile(filepath.Join(templateRepoDir(), f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = string(b)
		copied := copyOf(parts, f, string(b))
		switch {
		case copied == "":
			t.Errorf("the user data has no copy of %s: run scripts/sync-user-data.sh", f)
		case strings.HasSuffix(f, ".sh") && bashReprint(t, copied) != bashReprint(t, string(b)):
			t.Errorf("the user data's copy of %s means something else to bash than the file: run scripts/sync-user-data.sh", f)
		}
		copies[f] = copied
		for _, delim := range []string{"SLOTKEEPER_ENV", "SLOTKEEPER_AGENT_CONFIG", "SLOTKEEPER_BOOTSTRAP"} {
			if slices.Contains(strings.Split(string(b), "\n"), delim) {
				t.Errorf("%s has a line %s, which would end its here-document in the user data", f, delim)
			}
		}
	}
	if !strings.HasPrefix(userData, "#!/bin/bash\n") {
		t.Errorf("user data does not start with a shebang: %.40q", userData)
	}
	if len(userData) > 16384 {
		t.Errorf("user data is %d bytes; EC2 allows 16384", len(userData))
	}
	script, copied := files["deploy/broker-bootstrap.sh"], copies["deploy/broker-bootstrap.sh"]
	t.Logf("user data: %d of 16384 bytes (deploy/broker-bootstrap.sh: %d bytes in the file, %d in the user data)",
		len(userData), len(script), len(copied))
	sameBehaviour(t, script, copied)

	// The settings the user data writes, read by the bootstrap itself.
	m := regexp.MustCompile(`(?s)<<'SLOTKEEPER_ENV'\n(.*?)\nSLOTKEEPER_ENV\n`).FindStringSubmatch(userData)
	if m == nil {
		t.Fatal("no settings here-document in the user data")
	}
	envFile := filepath.Join(t.TempDir(), "broker.env")
	if err := os.WriteFile(envFile, []byte(m[1]+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-c", `set -euo pipefail; source deploy/broker-bootstrap.sh; load_settings "$1"; check_settings
echo "$SLOTKEEPER_CLUSTER $SLOTKEEPER_DNS_NAME $SLOTKEEPER_SLOT_COUNT $SLOTKEEPER_NODE_ID_BASE $SLOTKEEPER_CONTROLLER_COUNT $SLOTKEEPER_DATA_MOUNT $SLOTKEEPER_KAFKA_URL $SLOTKEEPER_TABLE"`, "bash", envFile)
	cmd.Dir = templateRepoDir()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the bootstrap rejects the user data's settings: %v\n%s", err, stderr.String())
	}
	cfg := loadFunctionConfig(t, s, "LaunchFunction")
	want := "kafka-prod kafka-prod.internal 5 100 3 " + cfg.Grow.DataMount + " https://archive.apache.org/dist/kafka/4.4.0/kafka_2.13-4.4.0.tgz " + cfg.Table
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("bootstrap settings %q\nwant %q", got, want)
	}

	// The agent reports disk_used_percent for exactly the functions' data mount, with
	// the dimensions the disk alarms use (shared/grow).
	var agent struct {
		Metrics struct {
			Namespace             string     `json:"namespace"`
			AggregationDimensions [][]string `json:"aggregation_dimensions"`
			MetricsCollected      struct {
				Disk struct {
					Resources   []string `json:"resources"`
					Measurement []string `json:"measurement"`
				} `json:"disk"`
			} `json:"metrics_collected"`
		} `json:"metrics"`
	}
	if err := json.Unmarshal([]byte(files["deploy/cloudwatch-agent.json"]), &agent); err != nil {
		t.Fatal(err)
	}
	a := agent.Metrics
	if a.Namespace != "CWAgent" || !slices.Equal(a.MetricsCollected.Disk.Resources, []string{cfg.Grow.DataMount}) ||
		!slices.Equal(a.MetricsCollected.Disk.Measurement, []string{"used_percent"}) ||
		len(a.AggregationDimensions) != 1 || !slices.Equal(a.AggregationDimensions[0], []string{"InstanceId", "path"}) {
		t.Errorf("the agent configuration does not report disk_used_percent of %s by InstanceId and path: %+v", cfg.Grow.DataMount, a)
	}

	// The launch template: IMDSv2 only, tags in the metadata, no slotkeeper tags.
	data := cfnObj(s.props(s.resource(t, "BrokerLaunchTemplate"))["LaunchTemplateData"])
	md := cfnObj(data["MetadataOptions"])
	if md["HttpTokens"] != "required" || md["InstanceMetadataTags"] != "enabled" {
		t.Errorf("metadata options %v: the bootstrap reads its tags through IMDSv2", md)
	}
	specs, _ := json.Marshal(data["TagSpecifications"])
	if strings.Contains(string(specs), "slotkeeper:") {
		t.Errorf("the launch template tags %s: instances get slotkeeper tags only from launch", specs)
	}
	group := s.props(s.resource(t, "BrokerGroup"))
	if cfnNum(group["MaxSize"]) != 5 || cfnNum(group["DesiredCapacity"]) != 5 || cfnStr(group["AutoScalingGroupName"]) != "kafka-prod" {
		t.Errorf("broker group %v: want one instance per slot, named AsgName", group)
	}
}

// sameBehaviour checks that the user data's copy of the bootstrap is valid bash and
// prints what the file prints: every here-document it writes (the Kafka configuration,
// the systemd unit) and the cluster id, for a controller slot and a broker slot.
func sameBehaviour(t *testing.T, file, copied string) {
	t.Helper()
	dir := t.TempDir()
	paths := map[string]string{"file": filepath.Join(dir, "file.sh"), "copy": filepath.Join(dir, "copy.sh")}
	for name, text := range map[string]string{"file": file, "copy": copied} {
		if err := os.WriteFile(paths[name], []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("bash", "-n", paths["copy"]).CombinedOutput(); err != nil {
		t.Fatalf("the user data's copy of the bootstrap is not valid bash: %v\n%s", err, out)
	}
	run := func(path, slot string) string {
		cmd := exec.Command("bash", "-c", `set -euo pipefail; source "$1"; check_settings
SLOT=$2 NODE_ID=$((100 + $2)) AZ=us-east-1a; kafka_properties; kafka_unit; cluster_id; replication_factor; heap_opts`, "bash", path, slot)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "SLOTKEEPER_CLUSTER=kafka-prod", "SLOTKEEPER_DNS_NAME=kafka-prod.internal",
			"SLOTKEEPER_SLOT_COUNT=5", "SLOTKEEPER_TABLE=slotkeeper-kafka-prod-leases", "SLOTKEEPER_NODE_ID_BASE=100"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("running %s: %v\n%s", path, err, out)
		}
		return string(out)
	}
	for _, slot := range []string{"0", "4"} {
		if a, b := run(paths["file"], slot), run(paths["copy"], slot); a != b || !strings.Contains(a, "node.id=") {
			t.Errorf("slot %s: the copy prints\n%s\nthe file prints\n%s", slot, b, a)
		}
	}
}

// scripts/sync-user-data.sh keeps every line whose removal would change what bash
// reads: here-documents of every form (<<'W', <<\W, <<"W", <<-W) and a line after a
// backslash continuation, whose '#' starts no comment; and it refuses, changing
// nothing, a script whose copy would still mean something else (a '#' line inside a
// multi-line string). The copies are checked with bash's own rendering, independent of
// how the script strips.
func TestSyncUserDataKeepsTheMeaning(t *testing.T) {
	sync, err := filepath.Abs(filepath.Join(templateRepoDir(), "scripts", "sync-user-data.sh"))
	if err != nil {
		t.Fatal(err)
	}
	tricky := "#!/usr/bin/env bash\n# a comment\nf() {\n\t# a comment\n\tcat <<'EOF'\n# quoted here-document\nEOF\n" +
		"\tcat <<\\EOF\n# backslash here-document\nEOF\n\tcat <<-\"EOF\"\n\t# dash here-document\n\tEOF\n" +
		"\tcat << EOF\n  # spaced here-document\nEOF\n\techo a \\\n# continued, not a comment\n\tcat <<<\"here-string\"\n\n\techo done # trailing\n}\nf\n"
	for _, c := range []struct {
		name, script string
		refused      bool
	}{
		{"here-documents and a continuation", tricky, false},
		{"a '#' line inside a multi-line string", "#!/usr/bin/env bash\nx='a\n# b'\necho \"$x\"\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "s.sh"), []byte(c.script), 0o644); err != nil {
				t.Fatal(err)
			}
			before := "Resources:\n  X:\n    - | # verbatim: s.sh\n      old\n    - tail\n"
			if err := os.WriteFile(filepath.Join(dir, "t.yaml"), []byte(before), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("bash", sync, "t.yaml")
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			after, rerr := os.ReadFile(filepath.Join(dir, "t.yaml"))
			if rerr != nil {
				t.Fatal(rerr)
			}
			if c.refused {
				if err == nil || string(after) != before || !strings.Contains(string(out), "would change what bash reads") {
					t.Fatalf("sync: %v\n%s\ntemplate now:\n%s\nwant a refusal and no change", err, out, after)
				}
				return
			}
			if err != nil {
				t.Fatalf("sync: %v\n%s", err, out)
			}
			// The block: the lines after the marker, indented 6 spaces, up to "    - tail".
			body, _, _ := strings.Cut(strings.SplitN(string(after), "# verbatim: s.sh\n", 2)[1], "    - tail\n")
			var lines []string
			for _, l := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
				lines = append(lines, strings.TrimPrefix(l, "      "))
			}
			copied := strings.Join(lines, "\n") + "\n"
			if bashReprint(t, copied) != bashReprint(t, c.script) {
				t.Errorf("the copy means something else to bash:\n%s\nfile:\n%s", copied, c.script)
			}
			for _, kept := range []string{"# quoted here-document", "# backslash here-document", "\t# dash here-document", "  # spaced here-document", "# continued, not a comment"} {
				if !slices.Contains(lines, kept) {
					t.Errorf("the copy lost the line %q:\n%s", kept, copied)
				}
			}
			if strings.Contains(copied, "# a comment") {
				t.Errorf("a comment line was kept:\n%s", copied)
			}
			run := func(text string) string {
				out, err := exec.Command("bash", "-c", text).CombinedOutput()
				if err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				return string(out)
			}
			if a, b := run(copied), run(c.script); a != b {
				t.Errorf("the copy prints\n%s\nthe file prints\n%s", a, b)
			}
			t.Logf("%d lines in the file, %d in the copy; same code to bash, same output", strings.Count(c.script, "\n"), len(lines))
		})
	}
}
