// Package deploy_test tests deploy/broker-bootstrap.sh, the broker instances' user
// data script, function by function: bash sources the script (which then only
// defines functions) and runs one of them, with the instance metadata service
// emulated over loopback (IMDSv2, tokens required) and the commands that touch
// devices or AWS (aws, blkid, mkfs.xfs, mount, mountpoint) replaced by stubs on PATH
// that record their arguments. The aws stub answers the lease, the group's lifecycle
// state and the volume from files, as the AWS CLI's text output has them.
package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

const script = "broker-bootstrap.sh"

// imds emulates the instance metadata service with IMDSv2 tokens required: a PUT to
// /latest/api/token returns a token, and every metadata read without it is refused
// (401), as the launch template's HttpTokens: required makes EC2 do.
type imds struct {
	mu sync.Mutex
	// items are the metadata under latest/meta-data/.
	items map[string]string
	// tagsAfter hides the instance tags for that many tag reads: the instance is
	// running, but launch has not tagged it yet.
	tagsAfter int
	tagReads  int
	// targetAfter hides autoscaling/target-lifecycle-state for that many reads.
	targetAfter int
	targetReads int
	// refused counts reads that came without a valid token.
	refused int
}

const imdsToken = "AQAEAGv3-token"

func (m *imds) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut || r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			http.Error(w, "bad token request", http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, imdsToken)
		return
	}
	if r.Header.Get("X-aws-ec2-metadata-token") != imdsToken {
		m.refused++
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	item, ok := strings.CutPrefix(r.URL.Path, "/latest/meta-data/")
	if strings.HasPrefix(item, "tags/instance/") {
		m.tagReads++
		if m.tagReads <= m.tagsAfter {
			ok = false
		}
	}
	if item == "autoscaling/target-lifecycle-state" {
		m.targetReads++
		if m.targetReads <= m.targetAfter {
			ok = false
		}
	}
	v, found := m.items[item]
	if !ok || !found {
		http.NotFound(w, r)
		return
	}
	fmt.Fprint(w, v)
}

// instance returns the metadata of an instance launch has made slot's broker.
func instance(cluster string, slot, nodeID int, az string) map[string]string {
	return map[string]string{
		"instance-id":                             "i-0123456789abcdef0",
		"placement/region":                        "us-east-1",
		"placement/availability-zone":             az,
		"tags/instance/slotkeeper:cluster":        cluster,
		"tags/instance/slotkeeper:slot":           fmt.Sprint(slot),
		"tags/instance/slotkeeper:node-id":        fmt.Sprint(nodeID),
		"tags/instance/slotkeeper:lease":          "3",
		"tags/instance/aws:autoscaling:groupName": "kafka-prod",
		"autoscaling/target-lifecycle-state":      "InService",
	}
}

// run sources the script and runs commands with env (and a PATH that puts stubs
// first), returning stdout and stderr.
func run(t *testing.T, env map[string]string, stubs string, commands string) (string, string, error) {
	t.Helper()
	bashPath, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not found")
	}
	cmd := exec.Command(bashPath, "-c", "set -euo pipefail; source ./"+script+"\n"+commands)
	path := os.Getenv("PATH")
	if stubs != "" {
		path = stubs + string(os.PathListSeparator) + path
	}
	cmd.Env = []string{"PATH=" + path, "LC_ALL=C"}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	return stdout.String(), stderr.String(), err
}

// settings are the script's settings for a cluster, as the user data writes them.
func settings(slots, controllers, base int) map[string]string {
	return map[string]string{
		"SLOTKEEPER_CLUSTER":          "kafka-prod",
		"SLOTKEEPER_TABLE":            "slotkeeper-kafka-prod-leases",
		"SLOTKEEPER_DNS_NAME":         "kafka-prod.internal",
		"SLOTKEEPER_SLOT_COUNT":       fmt.Sprint(slots),
		"SLOTKEEPER_NODE_ID_BASE":     fmt.Sprint(base),
		"SLOTKEEPER_CONTROLLER_COUNT": fmt.Sprint(controllers),
		"SLOTKEEPER_ENV_FILE":         "/nonexistent",
		"SLOTKEEPER_POLL_INTERVAL":    "0.01",
		"SLOTKEEPER_TAG_TIMEOUT":      "10",
	}
}

func withIMDS(t *testing.T, env map[string]string, m *imds) map[string]string {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl not found: the bootstrap reads instance metadata with it")
		}
		t.Skip("curl not found: the bootstrap reads instance metadata with it")
	}
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	out := maps.Clone(env)
	out["SLOTKEEPER_IMDS_ENDPOINT"] = srv.URL
	return out
}

// properties parses server.properties, failing on a key set twice.
func properties(t *testing.T, text string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("not a property line: %q", line)
		}
		if _, dup := out[k]; dup {
			t.Fatalf("%s is set twice", k)
		}
		out[k] = v
	}
	return out
}

// Every slot of a cluster gets its own KRaft configuration from what the instance
// metadata says: its node id, its AZ as rack, its DNS name as advertised listener,
// the same controller quorum (the first slots, by DNS name), and replication settings
// the cluster's size can satisfy.
func TestKafkaConfigurationOfEverySlot(t *testing.T) {
	azs := []string{"us-east-1a", "us-east-1b", "us-east-1c"}
	for _, c := range []struct {
		name                     string
		slots, controllers, base int
		voters                   string
		rf, minISR               string
	}{
		{"five slots, three controllers", 5, 3, 100,
			"100@broker-0.kafka-prod.internal:9093,101@broker-1.kafka-prod.internal:9093,102@broker-2.kafka-prod.internal:9093", "3", "2"},
		{"one slot: its own quorum", 1, 3, 0, "0@broker-0.kafka-prod.internal:9093", "1", "1"},
		{"two slots, one controller", 2, 1, 7, "7@broker-0.kafka-prod.internal:9093", "2", "1"},
	} {
		for slot := range c.slots {
			t.Run(fmt.Sprintf("%s/slot %d", c.name, slot), func(t *testing.T) {
				az := azs[slot%len(azs)]
				m := &imds{items: instance("kafka-prod", slot, c.base+slot, az)}
				env := withIMDS(t, settings(c.slots, c.controllers, c.base), m)
				stdout, stderr, err := run(t, env, "", "check_settings; imds_login; wait_for_slot; kafka_properties")
				if err != nil {
					t.Fatalf("%v\n%s", err, stderr)
				}
				got := properties(t, stdout)
				roles, listeners := "broker", "PLAINTEXT://:9092"
				if slot < min(c.controllers, c.slots) {
					roles, listeners = "broker,controller", "PLAINTEXT://:9092,CONTROLLER://:9093"
				}
				want := map[string]string{
					"process.roles":                            roles,
					"node.id":                                  fmt.Sprint(c.base + slot),
					"broker.rack":                              az,
					"controller.quorum.voters":                 c.voters,
					"controller.listener.names":                "CONTROLLER",
					"listeners":                                listeners,
					"advertised.listeners":                     fmt.Sprintf("PLAINTEXT://broker-%d.kafka-prod.internal:9092", slot),
					"inter.broker.listener.name":               "PLAINTEXT",
					"listener.security.protocol.map":           "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
					"log.dirs":                                 "/var/lib/kafka/data",
					"controlled.shutdown.enable":               "true",
					"unclean.leader.election.enable":           "false",
					"default.replication.factor":               c.rf,
					"min.insync.replicas":                      c.minISR,
					"offsets.topic.replication.factor":         c.rf,
					"transaction.state.log.replication.factor": c.rf,
					"transaction.state.log.min.isr":            c.minISR,
				}
				if roles == "broker" {
					delete(want, "default.replication.factor") // a controller setting (Kafka 4.x warns on a broker)
				}
				if !maps.Equal(got, want) {
					for k := range maps.Keys(merged(got, want)) {
						if got[k] != want[k] {
							t.Errorf("%s = %q, want %q", k, got[k], want[k])
						}
					}
				}
				if m.refused != 0 {
					t.Errorf("%d metadata reads without an IMDSv2 token", m.refused)
				}
			})
		}
	}
}

func merged(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}

// The script waits until launch has tagged the instance, and gives up (failing the
// boot visibly) when it never does.
func TestWaitsForTheSlotTags(t *testing.T) {
	m := &imds{items: instance("kafka-prod", 2, 2, "us-east-1c"), tagsAfter: 5}
	env := withIMDS(t, settings(3, 3, 0), m)
	stdout, stderr, err := run(t, env, "", `check_settings; imds_login; wait_for_slot; echo "$SLOT $NODE_ID $AZ $INSTANCE_ID $REGION"`)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if got := strings.TrimSpace(stdout); got != "2 2 us-east-1c i-0123456789abcdef0 us-east-1" {
		t.Errorf("identity %q", got)
	}
	if m.tagReads < 6 {
		t.Errorf("read the tags %d times; they appeared at the 6th read", m.tagReads)
	}
	t.Logf("tags polled %d times", m.tagReads)

	never := &imds{items: instance("kafka-prod", 2, 2, "us-east-1c"), tagsAfter: 1 << 30}
	env = withIMDS(t, settings(3, 3, 0), never)
	env["SLOTKEEPER_TAG_TIMEOUT"] = "1"
	_, stderr, err = run(t, env, "", "check_settings; imds_login; wait_for_slot")
	if err == nil || !strings.Contains(stderr, "no slotkeeper:node-id tag") {
		t.Errorf("untagged instance: err %v, stderr %q", err, stderr)
	}
}

// An instance tagged for another cluster, or with tags that disagree with the
// cluster's numbering, never becomes a broker.
func TestRefusesAForeignIdentity(t *testing.T) {
	for _, c := range []struct {
		name  string
		items map[string]string
		want  string
	}{
		{"another cluster", instance("kafka-test", 1, 1, "us-east-1b"), "belongs to cluster kafka-test"},
		{"node id not base + slot", instance("kafka-prod", 1, 7, "us-east-1b"), "node id 7 is not 0 + slot 1"},
		{"slot beyond the count", instance("kafka-prod", 3, 3, "us-east-1a"), "slot 3 is not below the slot count 3"},
		{"malformed slot", merged(instance("kafka-prod", 1, 1, "us-east-1b"), map[string]string{"tags/instance/slotkeeper:slot": "one"}), "malformed slot tags"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := withIMDS(t, settings(3, 3, 0), &imds{items: c.items})
			_, stderr, err := run(t, env, "", "check_settings; imds_login; wait_for_slot")
			if err == nil || !strings.Contains(stderr, c.want) {
				t.Errorf("err %v, stderr %q; want a failure saying %q", err, stderr, c.want)
			}
		})
	}
}

// stubs writes executable scripts named after commands into a directory for PATH.
func stubs(t *testing.T, scripts map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/usr/bin/env bash\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// awsStub writes an aws command for PATH into a new directory and returns the
// directory (for PATH, and for the answers and calls files). It records each call's
// arguments as one line of dir/calls and answers:
//
//	dynamodb get-item                             dir/lease
//	autoscaling describe-auto-scaling-instances   dir/group
//	ec2 describe-volumes                          dir/volume
//	anything else (create-tags, delete-tags)      nothing, success
//
// answers holds the files' contents; a file of several lines answers one line per
// call, its last line for good. A missing file fails the call. A file named
// "fail:<service> <operation>" (e.g. "fail:ec2 delete-tags") makes that call fail.
func awsStub(t *testing.T, answers map[string]string) string {
	t.Helper()
	dir := stubs(t, map[string]string{"aws": `dir=$(dirname "$0")
printf '%s\n' "$*" >>"$dir/calls"
if [[ -f "$dir/fail:$1 $2" ]]; then
	echo "stub: $1 $2 fails" >&2
	exit 254
fi
case "$1 $2" in
"dynamodb get-item") f=lease ;;
"autoscaling describe-auto-scaling-instances") f=group ;;
"ec2 describe-volumes") f=volume ;;
*) exit 0 ;;
esac
[[ -f $dir/$f ]] || { echo "stub: no $f" >&2; exit 255; }
if (($(wc -l <"$dir/$f") > 1)); then
	head -n 1 "$dir/$f"
	tail -n +2 "$dir/$f" >"$dir/$f.next" && mv "$dir/$f.next" "$dir/$f"
else
	cat "$dir/$f"
fi`})
	for name, text := range answers {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// calls returns the aws calls the stub in dir received, one per line.
func calls(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "calls"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// Must show 4 (waits): Kafka starts only once the instance may serve as node N: its
// target lifecycle state (IMDS) is InService, the slot's lease is bound to it at its
// slotkeeper:lease version, and the group has it InService (launch completed CONTINUE).
// Until then it waits, saying why; an instance on its way out never serves; and the
// volume it then uses is the one the lease records.
func TestServesOnlyWhenBoundAndInService(t *testing.T) {
	const me = "i-0123456789abcdef0"
	bound := "bound\t" + me + "\t3\tvol-0abc123def4567890\n"
	for _, c := range []struct {
		name        string
		targetAfter int
		target      string
		lease       string
		group       string
		serves      bool
		logs        []string
	}{
		{"target state appears late, then bound, then in service", 3, "InService",
			"claimed\t" + me + "\t3\tNone\nclaimed\t" + me + "\t3\tvol-0abc123def4567890\n" + bound,
			"Pending:Wait\nPending:Proceed\nInService\n", true,
			[]string{"waiting: target lifecycle state unknown, not InService",
				"waiting: slot 2's lease is claimed by " + me + " at version 3, not bound by this instance at version 3",
				"waiting: the group has this instance Pending:Wait, not InService",
				"serving as node 2: target InService, lease bound at version 3, group InService"}},
		{"abandoned: target Terminated", 0, "Terminated", bound, "InService\n", false,
			[]string{"target lifecycle state Terminated: this instance never serves as node 2"}},
		{"launched into a warm pool", 0, "Warmed:Stopped", bound, "InService\n", false,
			[]string{"target lifecycle state Warmed:Stopped: warm pools are not supported (a warm instance gets no slot; this runs once): remove the warm pool"}},
		{"the lease is bound to another instance", 0, "InService", "bound\ti-0fffffffffffffff0\t4\tvol-0abc123def4567890\n", "InService\n", false,
			[]string{"not serving after 1s: slot 2's lease is bound by i-0fffffffffffffff0 at version 4, not bound by this instance at version 3"}},
		{"the lease moved to a later version", 0, "InService", "bound\t" + me + "\t5\tvol-0abc123def4567890\n", "InService\n", false,
			[]string{"not serving after 1s: slot 2's lease is bound by " + me + " at version 5, not bound by this instance at version 3"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			items := instance("kafka-prod", 2, 2, "us-east-1c")
			items["autoscaling/target-lifecycle-state"] = c.target
			m := &imds{items: items, targetAfter: c.targetAfter}
			env := withIMDS(t, settings(3, 3, 0), m)
			env["SLOTKEEPER_SERVE_TIMEOUT"] = "1"
			if c.serves {
				env["SLOTKEEPER_SERVE_TIMEOUT"] = "60"
			}
			dir := awsStub(t, map[string]string{"lease": c.lease, "group": c.group})
			stdout, stderr, err := run(t, env, dir, `check_settings; imds_login; wait_for_slot; wait_until_serving; echo "volume=$VOLUME_ID"`)
			if (err == nil) != c.serves {
				t.Fatalf("err %v, want serving %v\n%s", err, c.serves, stderr)
			}
			for _, l := range c.logs {
				if !strings.Contains(stderr, "slotkeeper-bootstrap: "+l) && !strings.Contains(stderr, "slotkeeper-bootstrap: ERROR: "+l) {
					t.Errorf("log lacks %q:\n%s", l, stderr)
				}
			}
			got := calls(t, dir)
			if c.serves {
				if strings.TrimSpace(stdout) != "volume=vol-0abc123def4567890" {
					t.Errorf("stdout %q, want the recorded volume", stdout)
				}
				// 3 reads before the target state appears; then 2 with the lease claimed and
				// 3 with it bound (the group: Pending:Wait, Pending:Proceed, InService).
				if m.targetReads != 8 || countPrefix(got, "dynamodb get-item") != 5 || countPrefix(got, "autoscaling describe-auto-scaling-instances") != 3 {
					t.Errorf("target state read %d times, calls %q", m.targetReads, got)
				}
				want := `dynamodb get-item --region us-east-1 --table-name slotkeeper-kafka-prod-leases --consistent-read --key {"cluster":{"S":"kafka-prod"},"slot":{"N":"2"}}`
				if !strings.HasPrefix(got[0], want) {
					t.Errorf("lease read %q, want it to start %q", got[0], want)
				}
			}
			if (c.target == "Terminated" || strings.HasPrefix(c.target, "Warmed:")) && len(got) != 0 {
				t.Errorf("an instance on its way out made AWS calls %q", got)
			}
			for _, l := range strings.Split(stderr, "\n") {
				if strings.Contains(l, "waiting") || strings.Contains(l, "serv") {
					t.Log(l)
				}
			}
		})
	}
}

// The volume the lease records must be attached here and tagged for the slot; its
// device is found by its id among the NVMe devices.
func TestFindsTheRecordedVolumeByID(t *testing.T) {
	const me = "i-0123456789abcdef0"
	for _, c := range []struct {
		name, volume, answer string
		link                 bool
		want                 string // device, or the refusal
	}{
		{"attached, marked for claim 3", "vol-0abc123def4567890", me + "\t2\t3", true, "nvme1n1 3"},
		{"attached, not marked", "vol-0abc123def4567890", me + "\t2\tNone", true, "nvme1n1 none"},
		{"the lease records none", "None", "", true, "REFUSED: slot 2's lease records no volume"},
		{"attached elsewhere", "vol-0abc123def4567890", "i-0fffffffffffffff0\t2\tNone", true, "REFUSED: volume vol-0abc123def4567890, which the lease records, is attached to i-0fffffffffffffff0, not here"},
		{"tagged for another slot", "vol-0abc123def4567890", me + "\t1\tNone", true, "REFUSED: volume vol-0abc123def4567890 is tagged slotkeeper:slot=1, not 2"},
		{"no device yet", "vol-0abc123def4567890", me + "\t2\tNone", false, "does not exist"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			byID := filepath.Join(dir, "by-id")
			if err := os.MkdirAll(byID, 0o755); err != nil {
				t.Fatal(err)
			}
			dev := filepath.Join(dir, "nvme1n1")
			if err := os.WriteFile(dev, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if c.link {
				if err := os.Symlink("../nvme1n1", filepath.Join(byID, "nvme-Amazon_Elastic_Block_Store_vol0abc123def4567890")); err != nil {
					t.Fatal(err)
				}
			}
			bin := awsStub(t, map[string]string{"volume": c.answer + "\n"})
			env := settings(3, 3, 0)
			env["SLOTKEEPER_DEVICE_DIR"] = byID
			env["SLOTKEEPER_DEVICE_TIMEOUT"] = "1"
			stdout, stderr, err := run(t, env, bin, `INSTANCE_ID=i-0123456789abcdef0 REGION=us-east-1 SLOT=2 VOLUME_ID=`+c.volume+`
slot_volume
device=$(volume_device "$VOLUME_ID")
echo "$device ${MARK:-none}"`)
			if strings.HasPrefix(c.want, "nvme") {
				want := dev + strings.TrimPrefix(c.want, "nvme1n1")
				if err != nil || strings.TrimSpace(stdout) != want {
					t.Fatalf("got %q, err %v, stderr %q; want %s", stdout, err, stderr, want)
				}
				if got := calls(t, bin); len(got) != 1 || !strings.HasPrefix(got[0], "ec2 describe-volumes --region us-east-1 --volume-ids vol-0abc123def4567890 ") {
					t.Errorf("aws calls %q, want one describe-volumes of the recorded volume by id", got)
				}
				return
			}
			if err == nil || !strings.Contains(stderr, c.want) {
				t.Errorf("err %v, stderr %q; want a failure saying %q", err, stderr, c.want)
			}
			if strings.HasPrefix(c.want, "REFUSED") && countPrefix(calls(t, bin), "ec2 create-tags --region us-east-1 --resources i-0123456789abcdef0 --tags Key=slotkeeper:cluster,Value=kafka-prod Key=slotkeeper:refused,Value=") != 1 {
				t.Errorf("the refusal is not in the instance's slotkeeper:refused tag: %q", calls(t, bin))
			}
		})
	}
}

// Must show 4 (formatting): a device is formatted only when it has no signature and its
// volume's slotkeeper:never-formatted mark is this instance's claim (slotkeeper made it
// blank for this claim); the mark is cleared once the filesystem exists. A device
// without a signature is refused without the mark (perhaps a damaged superblock) and
// with the mark of another claim (the mark may have outlived a use of the volume), as
// is anything but xfs or ext4: no mkfs, the reason logged and in the instance's
// slotkeeper:refused tag. A mark that cannot be cleared is a refusal too.
func TestFormatsOnlyWhatSlotkeeperMadeBlank(t *testing.T) {
	const clear = "ec2 delete-tags --region us-east-1 --resources vol-0abc123def4567890 --tags Key=slotkeeper:never-formatted"
	for _, c := range []struct {
		name       string
		blkid      string // stub: what blkid -p prints and its exit status
		mark       string // the volume's never-formatted mark ("" none); this instance's claim is 3
		failClear  bool   // delete-tags fails
		formats    bool
		clearsMark bool // a delete-tags call of the mark
		log        string
	}{
		{"blank, marked for this claim", "exit 2", "3", false, true, true, "/dev/nvme1n1 is blank and volume vol-0abc123def4567890 was made blank for claim 3: formatting it (xfs)"},
		{"blank, not marked", "exit 2", "", false, false, false,
			"REFUSED: /dev/nvme1n1 (volume vol-0abc123def4567890) has no filesystem signature and is not marked slotkeeper:never-formatted: perhaps a damaged filesystem; never formatting it"},
		{"blank, marked for an earlier claim", "exit 2", "1", false, false, false,
			"REFUSED: /dev/nvme1n1 (volume vol-0abc123def4567890) has no filesystem signature and is marked never formatted for claim 1, not 3: it may have been used since; never formatting it"},
		{"blank, marked true (an earlier version's mark)", "exit 2", "true", false, false, false,
			"REFUSED: /dev/nvme1n1 (volume vol-0abc123def4567890) has no filesystem signature and is marked never formatted for claim true, not 3"},
		{"xfs, still marked (formatted, then a crash)", "echo xfs", "3", false, false, true, "/dev/nvme1n1 already holds xfs: keeping it"},
		{"xfs, marked for an earlier claim", "echo xfs", "1", false, false, true, "volume vol-0abc123def4567890 has a filesystem: cleared its slotkeeper:never-formatted mark"},
		{"xfs", "echo xfs", "", false, false, false, "/dev/nvme1n1 already holds xfs: keeping it"},
		{"ext4", "echo ext4", "", false, false, false, "/dev/nvme1n1 already holds ext4: keeping it"},
		{"blank, marked, the mark cannot be cleared", "exit 2", "3", true, true, true,
			"REFUSED: could not clear the slotkeeper:never-formatted mark of vol-0abc123def4567890"},
		{"partition table, marked", "exit 0", "3", false, false, false, "REFUSED: /dev/nvme1n1 (volume vol-0abc123def4567890) holds a partition table or unknown signature: refusing to touch it"},
		{"other filesystem", "echo btrfs", "", false, false, false, "REFUSED: /dev/nvme1n1 (volume vol-0abc123def4567890) holds btrfs: refusing to touch it"},
		{"probe error, marked", "exit 4", "3", false, false, false, "REFUSED: cannot probe /dev/nvme1n1 (blkid exit 4): refusing to format it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			answers := map[string]string{}
			if c.failClear {
				answers["fail:ec2 delete-tags"] = ""
			}
			bin := awsStub(t, answers)
			formatted := filepath.Join(bin, "mkfs")
			for name, body := range map[string]string{"blkid": c.blkid, "mkfs.xfs": fmt.Sprintf("printf '%%s\\n' \"$@\" > %q", formatted)} {
				if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/usr/bin/env bash\n"+body+"\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			_, stderr, err := run(t, settings(3, 3, 0), bin,
				"INSTANCE_ID=i-0123456789abcdef0 REGION=us-east-1 SLOT=2 LEASE=3 VOLUME_ID=vol-0abc123def4567890 MARK="+c.mark+"\nensure_filesystem /dev/nvme1n1")
			refused := strings.HasPrefix(c.log, "REFUSED")
			if (err == nil) == refused {
				t.Fatalf("err %v, want refused %v; stderr %q", err, refused, stderr)
			}
			if !strings.Contains(stderr, "slotkeeper-bootstrap: "+c.log) {
				t.Errorf("log lacks %q:\n%s", c.log, stderr)
			}
			b, statErr := os.ReadFile(formatted)
			if formats := statErr == nil; formats != c.formats {
				t.Fatalf("mkfs.xfs ran: %v, want %v", formats, c.formats)
			}
			if c.formats && !strings.HasSuffix(string(b), "/dev/nvme1n1\n") {
				t.Errorf("mkfs.xfs arguments %q", b)
			}
			got := calls(t, bin)
			if n := countPrefix(got, clear); (n == 1) != c.clearsMark || n > 1 {
				t.Errorf("the mark cleared %d times, want %v: %q", n, c.clearsMark, got)
			}
			tagged := countPrefix(got, "ec2 create-tags --region us-east-1 --resources i-0123456789abcdef0 --tags Key=slotkeeper:cluster,Value=kafka-prod Key=slotkeeper:refused,Value=")
			if (tagged == 1) != refused {
				t.Errorf("refusal tags %d, want refused %v: %q", tagged, refused, got)
			}
			t.Log(c.log)
		})
	}
}

// blockTool returns the path of a filesystem tool the disk tests run for real; without
// it the test fails under CI and is skipped otherwise.
func blockTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
				return filepath.Join(dir, name)
			}
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (xfsprogs, util-linux)", name)
		}
		t.Skipf("%s not found (xfsprogs, util-linux)", name)
	}
	return p
}

// A volume that held a broker's data, whose superblock was then destroyed (a forced
// detach, say), still carries the never-formatted mark of the claim that created it:
// an instance whose user data never cleared it (an older bootstrap) used it. The real
// blkid finds no signature (exit 2) on the real xfs image with its first 4 KiB zeroed;
// the bootstrap of a later claim refuses it and never runs mkfs. Only the mark of its
// own claim, which launch re-stamps solely for a volume no broker has used, would let
// it format.
func TestNeverFormatsADamagedVolumeMarkedForAnotherClaim(t *testing.T) {
	mkfs, blkid := blockTool(t, "mkfs.xfs"), blockTool(t, "blkid")
	img := filepath.Join(t.TempDir(), "volume.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(320 << 20); err != nil { // sparse; xfs needs 300 MiB
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command(mkfs, "-q", "-f", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v\n%s", err, out)
	}
	if out, err := exec.Command(blkid, "-p", "-o", "value", "-s", "TYPE", img).Output(); err != nil || strings.TrimSpace(string(out)) != "xfs" {
		t.Fatalf("blkid of the fresh image: %q %v", out, err)
	}
	// The broker's data is there; then the superblock goes.
	f, err = os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	err = exec.Command(blkid, "-p", "-o", "value", "-s", "TYPE", img).Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("blkid -p of the damaged image: %v, want exit 2 (no signature)", err)
	}

	for _, c := range []struct {
		name, mark string
		formats    bool
		want       string
	}{
		{"marked for the claim that created it (1), this is claim 5", "1", false,
			"REFUSED: " + img + " (volume vol-0abc123def4567890) has no filesystem signature and is marked never formatted for claim 1, not 5"},
		{"mark removed by launch (the slot was bound since)", "", false,
			"REFUSED: " + img + " (volume vol-0abc123def4567890) has no filesystem signature and is not marked slotkeeper:never-formatted"},
		{"marked for this claim (launch re-stamps only a never-used volume)", "5", true,
			"is blank and volume vol-0abc123def4567890 was made blank for claim 5: formatting it (xfs)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			bin := awsStub(t, nil)
			formatted := filepath.Join(bin, "mkfs")
			if err := os.WriteFile(filepath.Join(bin, "mkfs.xfs"), []byte(fmt.Sprintf("#!/usr/bin/env bash\nprintf '%%s\\n' \"$@\" > %q\n", formatted)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(blkid, filepath.Join(bin, "blkid")); err != nil {
				t.Fatal(err)
			}
			_, stderr, err := run(t, settings(3, 3, 0), bin,
				"INSTANCE_ID=i-0123456789abcdef0 REGION=us-east-1 SLOT=2 LEASE=5 VOLUME_ID=vol-0abc123def4567890 MARK="+c.mark+"\nensure_filesystem "+img)
			_, statErr := os.Stat(formatted)
			if formats := statErr == nil; formats != c.formats || (err == nil) != c.formats {
				t.Fatalf("mkfs ran %v (want %v), err %v\n%s", formats, c.formats, err, stderr)
			}
			if !strings.Contains(stderr, c.want) {
				t.Errorf("log lacks %q:\n%s", c.want, stderr)
			}
			t.Logf("blkid -p exit 2; mark %q, claim 5: mkfs ran %v", c.mark, c.formats)
		})
	}
}

// Nothing is written to the volume before its identity is checked: a volume holding
// another node's log, its data directory owned by someone else, is refused with its
// owner unchanged (no chown), and nothing created on it.
func TestPrepareVolumeWritesNothingBeforeTheIdentityCheck(t *testing.T) {
	mount := t.TempDir()
	data := filepath.Join(mount, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	env := settings(3, 3, 0)
	env["SLOTKEEPER_DATA_MOUNT"] = mount
	env["SLOTKEEPER_FSTAB"] = filepath.Join(t.TempDir(), "fstab")
	if err := os.WriteFile(env["SLOTKEEPER_FSTAB"], nil, 0o644); err != nil {
		t.Fatal(err)
	}
	own, _, err := run(t, env, "", "cluster_id")
	if err != nil {
		t.Fatal(err)
	}
	bin := awsStub(t, nil)
	chowned := filepath.Join(bin, "chowned")
	for name, body := range map[string]string{
		"blkid":      `case "$*" in *UUID*) echo 0f1e2d3c-aaaa-bbbb-cccc-1234567890ab ;; *) echo xfs ;; esac`,
		"mountpoint": "exit 0",
		"mount":      "exit 0",
		"chown":      fmt.Sprintf("printf '%%s\\n' \"$*\" >> %q", chowned),
	} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/usr/bin/env bash\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name, nodeID string
		refused      bool
	}{
		{"another node's log", "2", true},
		{"its own log", "1", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_ = os.Remove(chowned)
			meta := "version=1\nnode.id=" + c.nodeID + "\ncluster.id=" + strings.TrimSpace(own) + "\n"
			if err := os.WriteFile(filepath.Join(data, "meta.properties"), []byte(meta), 0o644); err != nil {
				t.Fatal(err)
			}
			_, stderr, err := run(t, env, bin, "INSTANCE_ID=i-0123456789abcdef0 REGION=us-east-1 SLOT=1 NODE_ID=1 LEASE=3 VOLUME_ID=vol-0abc123def4567890 MARK=\nprepare_volume /dev/nvme1n1")
			b, _ := os.ReadFile(chowned)
			if c.refused {
				if err == nil || !strings.Contains(stderr, "REFUSED: "+filepath.Join(data, "meta.properties")+": node.id=2, but slot 1 is node 1") {
					t.Fatalf("err %v, stderr %q: want the refusal", err, stderr)
				}
				if len(b) != 0 {
					t.Errorf("the refused volume was written to: chown %q", b)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
			if want := "-R 9092:9092 " + data + "\n"; string(b) != want { // kafka's fixed uid and gid
				t.Errorf("chown calls %q, want %q (the data directory, once its identity is checked)", b, want)
			}
		})
	}
}

// The volume is mounted by filesystem UUID at the data mount, at every boot: fstab
// gets exactly one line for the mount, the other lines stay.
func TestMountsTheVolumeAtEveryBoot(t *testing.T) {
	dir := t.TempDir()
	fstab := filepath.Join(dir, "fstab")
	mount := filepath.Join(dir, "var-lib-kafka")
	before := "UUID=root / xfs defaults 0 0\nUUID=old-volume " + mount + " xfs defaults 0 2\n/dev/xvdb /scratch ext4 defaults 0 2\n"
	if err := os.WriteFile(fstab, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	mounted := filepath.Join(dir, "mounted")
	bin := stubs(t, map[string]string{
		"blkid":      `case "$*" in *UUID*) echo 0f1e2d3c-aaaa-bbbb-cccc-1234567890ab ;; *TYPE*) echo xfs ;; esac`,
		"mountpoint": "exit 1",
		"mount":      fmt.Sprintf("printf '%%s\\n' \"$@\" > %q", mounted),
	})
	env := settings(3, 3, 0)
	env["SLOTKEEPER_FSTAB"] = fstab
	env["SLOTKEEPER_DATA_MOUNT"] = mount
	for range 2 { // twice: a second run changes nothing
		if _, stderr, err := run(t, env, bin, "mount_data /dev/nvme1n1"); err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
	}
	b, err := os.ReadFile(fstab)
	if err != nil {
		t.Fatal(err)
	}
	want := "UUID=root / xfs defaults 0 0\n/dev/xvdb /scratch ext4 defaults 0 2\nUUID=0f1e2d3c-aaaa-bbbb-cccc-1234567890ab " + mount + " xfs defaults,noatime,nofail 0 2\n"
	if string(b) != want {
		t.Errorf("fstab:\n%s\nwant:\n%s", b, want)
	}
	if m, _ := os.ReadFile(mounted); string(m) != "--fstab\n"+fstab+"\n"+mount+"\n" {
		t.Errorf("mount called with %q", m)
	}
}

// Must show 4 (another node's log): a volume that already holds another node's or
// another cluster's log is refused (the reason logged and in the instance's
// slotkeeper:refused tag); the slot's own is resumed.
func TestRefusesAnotherBrokersVolume(t *testing.T) {
	mount := t.TempDir()
	if err := os.MkdirAll(filepath.Join(mount, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := settings(3, 3, 0)
	env["SLOTKEEPER_DATA_MOUNT"] = mount
	own, _, err := run(t, env, "", "cluster_id")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, meta, want string
	}{
		{"its own", "version=1\nnode.id=1\ncluster.id=" + strings.TrimSpace(own) + "\n", ""},
		{"never started", "", ""},
		{"another node", "version=1\nnode.id=2\ncluster.id=" + strings.TrimSpace(own) + "\n", "node.id=2, but slot 1 is node 1"},
		{"another cluster", "version=1\nnode.id=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\n", "cluster.id=AAAAAAAAAAAAAAAAAAAAAA"},
	} {
		t.Run(c.name, func(t *testing.T) {
			meta := filepath.Join(mount, "data", "meta.properties")
			_ = os.Remove(meta)
			if c.meta != "" {
				if err := os.WriteFile(meta, []byte(c.meta), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			bin := awsStub(t, nil)
			_, stderr, err := run(t, env, bin, "INSTANCE_ID=i-0123456789abcdef0 REGION=us-east-1 SLOT=1 NODE_ID=1; check_volume_identity")
			if c.want == "" && err != nil {
				t.Errorf("refused: %v %s", err, stderr)
			}
			if c.want != "" && (err == nil || !strings.Contains(stderr, "slotkeeper-bootstrap: REFUSED: "+meta+": "+c.want)) {
				t.Errorf("err %v, stderr %q; want a refusal saying %q", err, stderr, c.want)
			}
			refusals := countPrefix(calls(t, bin), "ec2 create-tags --region us-east-1 --resources i-0123456789abcdef0 --tags Key=slotkeeper:cluster,Value=kafka-prod Key=slotkeeper:refused,Value=")
			if (refusals == 1) != (c.want != "") {
				t.Errorf("refusal tags %d: %q", refusals, calls(t, bin))
			}
			if c.want != "" {
				t.Log(strings.TrimSpace(stderr))
			}
		})
	}
}

// The KRaft cluster id is the same on every broker of a cluster (derived from its
// name, in Kafka's base64url UUID form) unless one is given.
func TestClusterID(t *testing.T) {
	id := func(env map[string]string) string {
		t.Helper()
		out, stderr, err := run(t, env, "", "cluster_id")
		if err != nil {
			t.Fatalf("%v %s", err, stderr)
		}
		return strings.TrimSpace(out)
	}
	prod := settings(3, 3, 0)
	test := settings(3, 3, 0)
	test["SLOTKEEPER_CLUSTER"] = "kafka-test"
	given := settings(3, 3, 0)
	given["SLOTKEEPER_KAFKA_CLUSTER_ID"] = "MkU3OEVBNTcwNTJENDM2Qk"
	// base64url(SHA-256("slotkeeper:kafka-prod")[:16]), computed independently.
	if got := id(prod); got != "Jktltl2DD3hoidllqh_c6w" {
		t.Errorf("kafka-prod cluster id %q", got)
	}
	if a, b := id(prod), id(test); a == b || len(b) != 22 {
		t.Errorf("clusters kafka-prod and kafka-test get %q and %q", a, b)
	}
	if got := id(given); got != "MkU3OEVBNTcwNTJENDM2Qk" {
		t.Errorf("given cluster id ignored: %q", got)
	}
}

// Stopping the Kafka unit is a controlled shutdown: SIGTERM, with time to hand the
// leaderships over, and the exit status Java gives it counted as success; once Kafka
// exited, the unit unmounts the data volume (as root, a failure ignored), and a start
// mounts it again.
func TestKafkaUnitStopsInAControlledWay(t *testing.T) {
	out, stderr, err := run(t, settings(3, 3, 0), "", "check_settings; SLOT=1 NODE_ID=1; kafka_unit")
	if err != nil {
		t.Fatalf("%v %s", err, stderr)
	}
	for _, line := range []string{
		"KillSignal=SIGTERM", "SuccessExitStatus=143", "TimeoutStopSec=110", "RequiresMountsFor=/var/lib/kafka",
		"User=kafka", "ExecStart=/opt/kafka/bin/kafka-server-start.sh /etc/kafka/server.properties", "Restart=on-failure",
		"WantedBy=multi-user.target",
		"ExecStopPost=-+/bin/sh -c 'sync -f /var/lib/kafka; ! mountpoint -q /var/lib/kafka || umount /var/lib/kafka'",
	} {
		if !strings.Contains(out, "\n"+line+"\n") {
			t.Errorf("unit lacks %q:\n%s", line, out)
		}
	}
}

// The settings file is read literally: nothing in it runs, lines that are not
// SLOTKEEPER_ settings are ignored, and the environment wins.
func TestSettingsFileIsNeverExecuted(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	file := filepath.Join(dir, "broker.env")
	content := fmt.Sprintf("SLOTKEEPER_CLUSTER=kafka-prod\nSLOTKEEPER_DNS_NAME=$(touch %s)\ntouch %s\nPATH=/nowhere\nSLOTKEEPER_SLOT_COUNT=3\n", marker, marker)
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := run(t, map[string]string{"SLOTKEEPER_SLOT_COUNT": "5"}, "", fmt.Sprintf(`load_settings %q; echo "$SLOTKEEPER_CLUSTER|$SLOTKEEPER_DNS_NAME|$SLOTKEEPER_SLOT_COUNT"`, file))
	if err != nil {
		t.Fatalf("%v %s", err, stderr)
	}
	if want := fmt.Sprintf("kafka-prod|$(touch %s)|5", marker); strings.TrimSpace(out) != want {
		t.Errorf("settings %q, want %q", out, want)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a line of the settings file was executed")
	}
}
