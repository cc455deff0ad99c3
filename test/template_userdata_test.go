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

// userDataCopy is what scripts/sync-user-data.sh puts into the user data for file: a
// JSON file as it is; a shell script without its comment-only and blank lines outside
// here-documents, its first line (the shebang) and every here-document line kept.
func userDataCopy(file, text string) string {
	if !strings.HasSuffix(file, ".sh") {
		return text
	}
	opener := regexp.MustCompile(`(^|[^<])<<(-?)[ \t]*["']?([A-Za-z_][A-Za-z_0-9]*)`)
	var out []string
	heredoc, dash := "", false
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i, line := range lines {
		if heredoc != "" {
			probe := line
			if dash {
				probe = strings.TrimLeft(probe, "\t")
			}
			if probe == heredoc {
				heredoc = ""
			}
			out = append(out, line)
			continue
		}
		if trimmed := strings.TrimLeft(line, " \t"); i > 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if m := opener.FindStringSubmatch(line); m != nil {
			heredoc, dash = m[3], m[2] == "-"
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n") + "\n"
}

// The broker fleet's user data carries deploy/cloudwatch-agent.json as it is and
// deploy/broker-bootstrap.sh without its comments (scripts/sync-user-data.sh copies
// them in), and the copied script behaves as the file does; the user data fits EC2's
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
	files := map[string]string{}
	for _, f := range embedded {
		b, err := os.ReadFile(filepath.Join(templateRepoDir(), f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = string(b)
		if !slices.Contains(parts, userDataCopy(f, string(b))) {
			t.Errorf("the user data's copy of %s differs from the file: run scripts/sync-user-data.sh", f)
		}
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
	script := files["deploy/broker-bootstrap.sh"]
	t.Logf("user data: %d of 16384 bytes (deploy/broker-bootstrap.sh: %d bytes in the file, %d in the user data)",
		len(userData), len(script), len(userDataCopy("deploy/broker-bootstrap.sh", script)))
	sameBehaviour(t, script, userDataCopy("deploy/broker-bootstrap.sh", script))

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
