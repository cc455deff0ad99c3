package test

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"io"
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

// userDataLimit is EC2's limit on user data (bytes, before base64), and
// userDataHeadroom what the broker user data must leave of it: the bootstrap is
// carried compressed, and room for its next changes is part of the design.
const (
	userDataLimit    = 16384
	userDataHeadroom = 2048
)

// bootstrapExtraction is the user data's line that writes the bootstrap from the
// compressed copy that follows it (up to the line SLOTKEEPER_BOOTSTRAP).
const bootstrapExtraction = "base64 -d <<'SLOTKEEPER_BOOTSTRAP' | gzip -dc > /usr/local/sbin/slotkeeper-broker-bootstrap\n"

// extractBootstrap runs the user data's extraction of the bootstrap (the line above,
// its here-document and the line ending it) with bash, base64 and gzip, writing into
// a temporary file instead of /usr/local/sbin, and returns what it wrote; it also
// decodes the here-document itself and fails unless both agree. carried is the size
// of the here-document.
func extractBootstrap(t *testing.T, userData string) (script string, carried int) {
	t.Helper()
	_, rest, ok := strings.Cut(userData, bootstrapExtraction)
	if !ok {
		t.Fatalf("the user data has no line %q", bootstrapExtraction)
	}
	encoded, _, ok := strings.Cut(rest, "\nSLOTKEEPER_BOOTSTRAP\n")
	if !ok {
		t.Fatal("the bootstrap's here-document in the user data has no end (SLOTKEEPER_BOOTSTRAP)")
	}
	for _, line := range strings.Split(encoded, "\n") {
		if len(line) > 76 || strings.TrimLeft(line, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != "" {
			t.Fatalf("the bootstrap's here-document has a line that is not base64 in lines of 76: %q", line)
		}
	}
	compressed, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(encoded, "\n", ""))
	if err != nil {
		t.Fatalf("the bootstrap's copy is not base64: %v", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		t.Fatalf("the bootstrap's copy is not gzip: %v", err)
	}
	decoded, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("the bootstrap's copy does not decompress: %v", err)
	}
	target := filepath.Join(t.TempDir(), "slotkeeper-broker-bootstrap")
	shell := strings.Replace(bootstrapExtraction, "/usr/local/sbin/slotkeeper-broker-bootstrap", target, 1) + encoded + "\nSLOTKEEPER_BOOTSTRAP\n"
	if out, err := exec.Command("bash", "-euo", "pipefail", "-c", shell).CombinedOutput(); err != nil {
		t.Fatalf("the user data's extraction of the bootstrap fails: %v\n%s", err, out)
	}
	written, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(written, decoded) {
		t.Fatalf("base64 -d | gzip -dc writes %d bytes, Go decodes %d", len(written), len(decoded))
	}
	return string(written), len(encoded)
}

// The broker fleet's user data carries deploy/cloudwatch-agent.json as it is and
// deploy/broker-bootstrap.sh compressed (gzip, base64; scripts/sync-user-data.sh
// copies them in), and its own extraction line writes the script back byte for byte;
// the user data fits EC2's 16 KB with at least userDataHeadroom to spare, writes
// settings the bootstrap accepts and that describe this stack, and reports the disk
// use of the mount the functions' disk alarms watch.
func TestTemplateBrokerUserData(t *testing.T) {
	s := deployStack(t, "fleet")
	parts, userData := userDataParts(t, s)
	template, err := os.ReadFile(filepath.Join(templateRepoDir(), "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	marked := regexp.MustCompile(`(?m)^ *- \| # (verbatim|gzip base64): (\S+)$`).FindAllSubmatch(template, -1)
	var embedded []string
	for _, m := range marked {
		embedded = append(embedded, string(m[1])+": "+string(m[2]))
	}
	if want := []string{"verbatim: deploy/cloudwatch-agent.json", "gzip base64: deploy/broker-bootstrap.sh"}; !slices.Equal(embedded, want) {
		t.Fatalf("template.yaml embeds %q, want %q", embedded, want)
	}
	files := map[string]string{}
	for _, f := range []string{"deploy/cloudwatch-agent.json", "deploy/broker-bootstrap.sh"} {
		b, err := os.ReadFile(filepath.Join(templateRepoDir(), f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = string(b)
		for _, delim := range []string{"SLOTKEEPER_ENV", "SLOTKEEPER_AGENT_CONFIG"} {
			if slices.Contains(strings.Split(string(b), "\n"), delim) {
				t.Errorf("%s has a line %s, which would end its here-document in the user data", f, delim)
			}
		}
	}
	if !slices.Contains(parts, files["deploy/cloudwatch-agent.json"]) {
		t.Errorf("the user data has no copy of deploy/cloudwatch-agent.json: run scripts/sync-user-data.sh")
	}
	script := files["deploy/broker-bootstrap.sh"]
	extracted, carried := extractBootstrap(t, userData)
	if extracted != script {
		t.Errorf("the user data writes a bootstrap of %d bytes that is not deploy/broker-bootstrap.sh (%d bytes): run scripts/sync-user-data.sh",
			len(extracted), len(script))
	}
	if !strings.HasPrefix(userData, "#!/bin/bash\n") {
		t.Errorf("user data does not start with a shebang: %.40q", userData)
	}
	if len(userData) > userDataLimit-userDataHeadroom {
		t.Errorf("user data is %d bytes: more than EC2's %d less the %d bytes of headroom kept for changes", len(userData), userDataLimit, userDataHeadroom)
	}
	t.Logf("user data: %d of %d bytes, %d to spare (deploy/broker-bootstrap.sh: %d bytes, carried in %d)",
		len(userData), userDataLimit, userDataLimit-len(userData), len(script), carried)

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

// scripts/sync-user-data.sh copies a script into a "gzip base64" block that decodes
// (base64 -d | gzip -dc) to the file byte for byte, comments and all, and a JSON file
// into a verbatim block; run again it changes nothing, and a block that already
// decodes to the file (another gzip's bytes) is kept as it is; an edited file is
// copied again.
func TestSyncUserData(t *testing.T) {
	sync, err := filepath.Abs(filepath.Join(templateRepoDir(), "scripts", "sync-user-data.sh"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := "#!/usr/bin/env bash\n# a comment, kept\nf() {\n\tcat <<'EOF'\n# here-document\nEOF\n}\n\nf\n"
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("s.sh", script)
	write("c.json", "{\n  \"a\": 1\n}\n")
	write("t.yaml", "Resources:\n  X:\n    - | # verbatim: c.json\n      old\n    - | # gzip base64: s.sh\n      b2xkCg==\n    - tail\n")
	syncRun := func() (string, string) {
		t.Helper()
		cmd := exec.Command("bash", sync, "t.yaml")
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sync: %v\n%s", err, out)
		}
		after, err := os.ReadFile(filepath.Join(dir, "t.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out)), string(after)
	}
	// decoded returns the gzip base64 block's content, decoded by the shell tools.
	decoded := func(yaml string) (block, text string) {
		t.Helper()
		_, rest, _ := strings.Cut(yaml, "# gzip base64: s.sh\n")
		block, _, _ = strings.Cut(rest, "    - tail\n")
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", "sed 's/^      //' | base64 -d | gzip -dc")
		cmd.Stdin = strings.NewReader(block)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("the block does not decode: %v\n%s", err, block)
		}
		return block, string(out)
	}

	out, first := syncRun()
	block, text := decoded(first)
	if !strings.Contains(out, "updated") || text != script || !strings.Contains(first, "# verbatim: c.json\n      {\n        \"a\": 1\n      }\n") {
		t.Fatalf("sync said %q; the script block decodes to\n%s\nwant the file\n%s\ntemplate:\n%s", out, text, script, first)
	}
	if out, again := syncRun(); again != first || !strings.Contains(out, "up to date") {
		t.Errorf("a second sync said %q and changed the template:\n%s", out, again)
	}

	// Another gzip's encoding of the same file: kept.
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", "gzip -1c s.sh | base64 -w 60 | sed 's/^/      /'")
	cmd.Dir = dir
	other, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(other) == block {
		t.Fatal("gzip -1 and -9 gave the same block: the test proves nothing")
	}
	write("t.yaml", strings.Replace(first, block, string(other), 1))
	if out, kept := syncRun(); !strings.Contains(out, "up to date") || !strings.Contains(kept, string(other)) {
		t.Errorf("an equivalent block was rewritten (%q):\n%s", out, kept)
	}

	// The file changes: the block follows.
	write("s.sh", script+"echo more\n")
	if out, changed := syncRun(); !strings.Contains(out, "updated") {
		t.Errorf("sync after an edit said %q", out)
	} else if _, text := decoded(changed); text != script+"echo more\n" {
		t.Errorf("after an edit the block decodes to\n%s", text)
	}
	t.Logf("a %d-byte script in a %d-byte block; kept another gzip's equivalent block; followed an edit", len(script), len(block))
}
