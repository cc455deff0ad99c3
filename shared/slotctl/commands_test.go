package slotctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// fixture is a deployment in moto (demo.Stage) whose three slots are bound by the real
// launch path and whose DNS records are in sync, and slotctl pointed at it through the
// harness proxy (so that its AWS calls are counted).
type fixture struct {
	t     *testing.T
	h     *harness.Harness
	st    *demo.Stage
	ids   []string // the holders of slots 0, 1, 2
	store *lease.Store
}

func newFixture(t *testing.T, h *harness.Harness, cluster string) *fixture {
	t.Helper()
	return newFixtureOf(t, h, newStage(t, h, cluster, demo.StageOptions{}))
}

// newFixtureOf binds the three slots of a stage (kfake's or Apache Kafka's).
func newFixtureOf(t *testing.T, h *harness.Harness, st *demo.Stage) *fixture {
	t.Helper()
	f := &fixture{t: t, h: h, st: st, store: lease.NewStore(dynamodb.NewFromConfig(h.DirectConfig()), st.Config.Table, st.Config.Cluster)}
	cfg := h.AWSConfig()
	log := obs.NewLogger(io.Discard, 0)
	lh := launch.New(st.Config, ec2.NewFromConfig(cfg), autoscaling.NewFromConfig(cfg), dynamodb.NewFromConfig(cfg), log, io.Discard)
	lh.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 10 * time.Second}
	ctx := context.Background()
	for i := range demo.Slots {
		id := launchOne(t, st, i)
		out, err := lh.Invoke(ctx, demo.LifecycleEvent(st.Config.ASGName, id, true))
		if err != nil || !strings.Contains(string(out), `"continue"`) {
			t.Fatalf("launching %s: %s %v", id, out, err)
		}
		f.ids = append(f.ids, id)
	}
	syncer := dns.New(st.Config, route53.NewFromConfig(cfg), ec2.NewFromConfig(cfg), dynamodb.NewFromConfig(cfg), log)
	if err := syncer.Sync(ctx); err != nil {
		t.Fatalf("syncing DNS: %v", err)
	}
	h.ResetCounts()
	return f
}

// result is one slotctl run.
type result struct {
	code           int
	stdout, stderr string
}

// run runs slotctl with the stage's configuration plus env (NAME without the prefix;
// "" unsets a variable), through the proxy.
func (f *fixture) run(env map[string]string, args ...string) result {
	f.t.Helper()
	vars := map[string]string{}
	for k, v := range f.st.Vars {
		vars[config.Prefix+k] = v
	}
	for k, v := range env {
		vars[config.Prefix+k] = v
	}
	var out, errOut bytes.Buffer
	code := slotctl.Main(context.Background(), args, slotctl.IO{
		Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return vars[k] },
		Clients: slotctl.NewClients(f.h.AWSConfig()),
	})
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// decode parses a --json run's document.
func decode[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("decoding the JSON document: %v\nstdout: %s\nstderr: %s", err, r.stdout, r.stderr)
	}
	return v
}

// The commands against a deployment in moto. One harness serves every command, each
// with a deployment of its own.
func TestCommandsAgainstMoto(t *testing.T) {
	h := harness.Start(t)
	t.Run("status", func(t *testing.T) { testStatus(t, newFixture(t, h, "st")) })
	t.Run("history", func(t *testing.T) { testHistory(t, newFixture(t, h, "hi")) })
	t.Run("preflight", func(t *testing.T) { testPreflight(t, newFixture(t, h, "pf")) })
	t.Run("evict", func(t *testing.T) { testEvict(t, newFixture(t, h, "ev")) })
	t.Run("roll refusals", func(t *testing.T) { testRollRefusals(t, newFixture(t, h, "rr")) })
}

// roll refuses, with nothing changed, what it cannot roll.
func testRollRefusals(t *testing.T, f *fixture) {
	// EC2 launch times have a second's resolution, and "--launched-before now" must
	// name a later second than the fixture's launches, however fast they were.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	asg := autoscaling.NewFromConfig(f.h.DirectConfig())
	ctx := context.Background()
	tests := []struct {
		name    string
		setup   func()
		args    []string
		wantErr string
	}{
		{name: "a free slot", args: []string{"--slots", "3", "--slot-count", "4"}, wantErr: "slot 3 is free: it has no broker to roll"},
		{name: "holders outside the group", wantErr: "is not an instance of group rr-brokers: the group cannot replace it"},
		{name: "no terminate hook", wantErr: "group rr-brokers has no terminate lifecycle hook", setup: func() {
			if _, err := asg.DeleteLifecycleHook(ctx, &autoscaling.DeleteLifecycleHookInput{
				AutoScalingGroupName: aws.String(f.st.Config.ASGName), LifecycleHookName: aws.String(demo.TerminateHook)}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			f.h.ResetCounts()
			// Every holder old, whatever the second it was launched in: "now" would race
			// the fixture's launch times, which EC2 gives to the second.
			old := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
			r := f.run(nil, append([]string{"roll", "--launched-before", old, "--poll", "100ms", "--step-timeout", "20s", "--json"}, tt.args...)...)
			doc := decode[map[string]any](t, r)
			if r.code != slotctl.ExitRefused || !strings.Contains(fmt.Sprint(doc["error"]), tt.wantErr) || doc["hint"] == "" {
				t.Errorf("exit %d, document %v; want exit %d and an error with %q", r.code, doc, slotctl.ExitRefused, tt.wantErr)
			}
			if m := f.h.MutatingCalls(); len(m) > 0 {
				t.Errorf("a refused roll made mutating calls %v", m)
			}
		})
	}
}

func testStatus(t *testing.T, f *fixture) {
	direct := route53.NewFromConfig(f.h.DirectConfig())
	setRecord := func(name, ip string) {
		_, err := direct.ChangeResourceRecordSets(context.Background(), &route53.ChangeResourceRecordSetsInput{
			HostedZoneId: aws.String(f.st.ZoneID),
			ChangeBatch: &r53types.ChangeBatch{Changes: []r53types.Change{{Action: r53types.ChangeActionUpsert,
				ResourceRecordSet: &r53types.ResourceRecordSet{Name: aws.String(name), Type: r53types.RRTypeA, TTL: aws.Int64(30),
					ResourceRecords: []r53types.ResourceRecord{{Value: aws.String(ip)}}}}}},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	healthy := f.run(nil, "status", "--json")
	sv := decode[slotctl.Survey](t, healthy)
	if healthy.code != slotctl.ExitOK || len(sv.Slots) != 3 || len(sv.Problems) != 0 {
		t.Fatalf("healthy status: exit %d, problems %v\n%s", healthy.code, sv.Problems, healthy.stderr)
	}
	tests := []struct {
		name         string
		setup        func() (undo func())
		env          map[string]string
		wantCode     int
		wantProblems []string
	}{
		{name: "healthy", wantCode: slotctl.ExitOK},
		{name: "a partition out of sync", wantCode: slotctl.ExitProblem, wantProblems: []string{"Kafka: 1 under-replicated partition(s)"},
			setup: func() func() {
				f.st.Kafka.SetISR(demo.Topic, 0, f.st.Kafka.Replicas(demo.Topic, 0)[:2]...)
				return func() { f.st.Kafka.Restore(demo.Topic, 0) }
			}},
		{name: "a record changed by hand", wantCode: slotctl.ExitProblem,
			wantProblems: []string{"DNS: broker-2." + f.st.Config.DNS.Name + " is [10.9.9.9] (TTL 30), want [" + sv.Slots[2].IP + "]"},
			setup: func() func() {
				setRecord("broker-2."+f.st.Config.DNS.Name, "10.9.9.9")
				return func() { setRecord("broker-2."+f.st.Config.DNS.Name, sv.Slots[2].IP) }
			}},
		{name: "Kafka unreachable", env: map[string]string{"KAFKA_BOOTSTRAP": "127.0.0.1:1"}, wantCode: slotctl.ExitUnreachable,
			wantProblems: []string{"Kafka: "}},
		{name: "a holder died", wantCode: slotctl.ExitProblem,
			wantProblems: []string{"slot 1: holder " + f.ids[1] + " is terminated", "slot 1: broker 1 is not registered in Kafka",
				"DNS: bootstrap." + f.st.Config.DNS.Name},
			setup: func() func() {
				f.h.TerminateInstance(t, f.ids[1])
				f.st.Kafka.Unregister(1)
				return func() {}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				defer tt.setup()()
			}
			f.h.ResetCounts()
			r := f.run(tt.env, "status", "--json", "--timeout", "5s")
			got := decode[slotctl.Survey](t, r)
			if r.code != tt.wantCode {
				t.Errorf("exit %d, want %d; problems %v; stderr %s", r.code, tt.wantCode, got.Problems, r.stderr)
			}
			for _, want := range tt.wantProblems {
				if !slices.ContainsFunc(got.Problems, func(p string) bool { return strings.HasPrefix(p, want) }) {
					t.Errorf("problems %q lack one starting %q", got.Problems, want)
				}
			}
			if len(tt.wantProblems) == 0 && len(got.Problems) > 0 {
				t.Errorf("problems %q, want none", got.Problems)
			}
			if m := f.h.MutatingCalls(); len(m) > 0 {
				t.Errorf("status made mutating calls %v", m)
			}
		})
	}

	// What a person sees: the table, with the slots' IPs, volumes, sizes and names,
	// and colour only on a terminal.
	for _, row := range sv.Slots {
		if row.State != "bound" || row.Holder != f.ids[row.Slot] || row.IP == "" || row.SizeGiB != demo.VolumeGiB ||
			row.DNSName != "broker-"+string(rune('0'+row.Slot))+"."+f.st.Config.DNS.Name || !slices.Equal(row.DNSValues, []string{row.IP}) {
			t.Errorf("slot row %+v", row)
		}
	}
	plain := f.run(map[string]string{"KAFKA_BOOTSTRAP": ""}, "status")
	for _, want := range []string{"SLOT  AZ", sv.Slots[0].IP, sv.Slots[0].Volume, "100 GiB", "Kafka  not checked", "Problems:"} {
		if !strings.Contains(plain.stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, plain.stdout)
		}
	}
	if strings.Contains(plain.stdout, "\x1b[") {
		t.Errorf("colour in output that is not a terminal:\n%q", plain.stdout)
	}
}

func testHistory(t *testing.T, f *fixture) {
	ctx := context.Background()
	l, err := f.store.Get(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.RecordGrowth(ctx, 2, lease.GrowthRecord{VolumeID: l.VolumeID, FromGiB: 100, ToGiB: 144, UsedPercent: 86.3, Reason: "alarm"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		check    func(t *testing.T, r result)
	}{
		{"a bound slot", []string{"history", "1", "--json"}, nil, slotctl.ExitOK, func(t *testing.T, r result) {
			h := decode[slotctl.History](t, r)
			var moves []string
			for _, tr := range h.Transitions {
				moves = append(moves, tr.From+">"+tr.To)
			}
			// The claim, the record of the new ENI and volume (one write, right after
			// both were created), the bind.
			if h.State != "bound" || h.Holder != f.ids[1] || h.Version != 1 ||
				!slices.Equal(moves, []string{"free>claimed", "claimed>claimed", "claimed>bound"}) ||
				h.Transitions[0].Instance != f.ids[1] || !strings.HasPrefix(h.Transitions[0].Actor, "launch") ||
				h.VolumeID == "" || h.Transitions[1].Reason != "recorded ENI "+h.ENIID+" ("+h.IP+") and volume "+h.VolumeID+" as the slot's" {
				t.Errorf("history %+v", h)
			}
		}},
		{"flags anywhere", []string{"--json", "history", "--table", f.st.Config.Table, "1"}, nil, slotctl.ExitOK, func(t *testing.T, r result) {
			if h := decode[slotctl.History](t, r); h.Slot != 1 || len(h.Transitions) != 3 {
				t.Errorf("history %+v", h)
			}
		}},
		{"growths", []string{"history", "2"}, nil, slotctl.ExitOK, func(t *testing.T, r result) {
			for _, want := range []string{"free → claimed", "claimed → bound", f.ids[2], "100 → 144 GiB", "86.3%"} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("history lacks %q:\n%s", want, r.stdout)
				}
			}
		}},
		{"a slot never claimed", []string{"history", "3", "--json", "--slot-count", "4"}, nil, slotctl.ExitOK, func(t *testing.T, r result) {
			if h := decode[slotctl.History](t, r); !h.NeverUsed || h.State != "free" || len(h.Transitions) != 0 {
				t.Errorf("history %+v", h)
			}
		}},
		{"a slot out of range", []string{"history", "3"}, nil, slotctl.ExitUsage, func(t *testing.T, r result) {
			if !strings.Contains(r.stderr, "slots are numbered 0 to 2") {
				t.Errorf("stderr %q", r.stderr)
			}
		}},
		{"only what history needs", []string{"history", "0", "--json"}, map[string]string{"ASG_NAME": "", "SUBNETS": "", "SECURITY_GROUPS": ""}, slotctl.ExitOK, nil},
		{"a table that does not exist", []string{"history", "0", "--json", "--table", "nope"}, nil, slotctl.ExitUnreachable, func(t *testing.T, r result) {
			doc := decode[map[string]any](t, r)
			if !strings.Contains(doc["hint"].(string), "SLOTKEEPER_TABLE") || doc["exit_code"] != float64(slotctl.ExitUnreachable) {
				t.Errorf("error document %v", doc)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.run(tt.env, tt.args...)
			if r.code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", r.code, tt.wantCode, r.stdout, r.stderr)
			}
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

func testPreflight(t *testing.T, f *fixture) {
	asg := autoscaling.NewFromConfig(f.h.DirectConfig())
	ctx := context.Background()
	type want struct{ check, result string }
	tests := []struct {
		name     string
		setup    func() (undo func())
		env      map[string]string
		wantCode int
		want     []want
	}{
		{name: "ready", wantCode: slotctl.ExitOK, want: []want{{"subnets", "ok"}, {"lease table", "ok"}, {"auto scaling", "ok"},
			{"lifecycle hooks", "ok"}, {"topics", "ok"}, {"hosted zone", "ok"}}},
		{name: "replication factor above the broker count", env: map[string]string{"SLOT_COUNT": "2"}, wantCode: slotctl.ExitProblem,
			want: []want{{"topics", "fail"}, {"subnets", "warn"}}},
		{name: "the group launches where no slot lives", env: map[string]string{"SUBNETS": f.st.World.Subnets[0].ID + "," + f.st.World.Subnets[1].ID},
			wantCode: slotctl.ExitProblem, want: []want{{"auto scaling", "fail"}, {"subnets", "warn"}}},
		{name: "no terminate hook", wantCode: slotctl.ExitProblem, want: []want{{"lifecycle hooks", "fail"}},
			setup: func() func() {
				if _, err := asg.DeleteLifecycleHook(ctx, &autoscaling.DeleteLifecycleHookInput{
					AutoScalingGroupName: aws.String(f.st.Config.ASGName), LifecycleHookName: aws.String(demo.TerminateHook)}); err != nil {
					t.Fatal(err)
				}
				return func() {
					if _, err := asg.PutLifecycleHook(ctx, &autoscaling.PutLifecycleHookInput{
						AutoScalingGroupName: aws.String(f.st.Config.ASGName), LifecycleHookName: aws.String(demo.TerminateHook),
						LifecycleTransition: aws.String("autoscaling:EC2_INSTANCE_TERMINATING"), HeartbeatTimeout: aws.Int32(900)}); err != nil {
						t.Fatal(err)
					}
				}
			}},
		{name: "heartbeat timeout shorter than the interval", env: map[string]string{"HEARTBEAT_INTERVAL": "10m", "ATTACH_TIMEOUT": "6m"},
			wantCode: slotctl.ExitUsage}, // config.Load refuses it already: HEARTBEAT_INTERVAL must be below ATTACH_TIMEOUT
		{name: "no lease table", env: map[string]string{"TABLE": "nope"}, wantCode: slotctl.ExitProblem, want: []want{{"lease table", "fail"}}},
		{name: "no hosted zone", env: map[string]string{"HOSTED_ZONE_ID": "ZNOSUCHZONE"}, wantCode: slotctl.ExitProblem, want: []want{{"hosted zone", "fail"}}},
		{name: "DNS not managed, Kafka not checked", env: map[string]string{"HOSTED_ZONE_ID": "", "DNS_NAME": "", "KAFKA_BOOTSTRAP": ""},
			wantCode: slotctl.ExitOK, want: []want{{"hosted zone", "skip"}, {"topics", "skip"}}},
		{name: "Kafka unreachable", env: map[string]string{"KAFKA_BOOTSTRAP": "127.0.0.1:1"}, wantCode: slotctl.ExitUnreachable,
			want: []want{{"topics", "error"}, {"lease table", "ok"}}},
		// Last: kafkatest cannot delete the topic again.
		{name: "replication factor at min ISR", wantCode: slotctl.ExitProblem, want: []want{{"topics", "fail"}},
			setup: func() func() {
				if err := f.st.Kafka.CreateTopic(context.Background(), "scratch", 1, 2, nil); err != nil {
					t.Fatal(err)
				}
				return func() {}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				defer tt.setup()()
			}
			f.h.ResetCounts()
			r := f.run(tt.env, "preflight", "--json", "--timeout", "5s")
			if r.code != tt.wantCode {
				t.Errorf("exit %d, want %d\nstdout %s\nstderr %s", r.code, tt.wantCode, r.stdout, r.stderr)
			}
			if tt.wantCode == slotctl.ExitUsage {
				return
			}
			rep := decode[slotctl.PreflightReport](t, r)
			for _, w := range tt.want {
				i := slices.IndexFunc(rep.Checks, func(c slotctl.Check) bool { return c.Name == w.check })
				if i < 0 || rep.Checks[i].Result != w.result {
					t.Errorf("check %s: %+v, want %s", w.check, rep.Checks, w.result)
				} else if w.result != slotctl.CheckOK && w.result != slotctl.CheckSkip && rep.Checks[i].Hint == "" {
					t.Errorf("check %s (%s) has no hint", w.check, w.result)
				}
			}
			if m := f.h.MutatingCalls(); len(m) > 0 {
				t.Errorf("preflight made mutating calls %v", m)
			}
		})
	}
}

func testEvict(t *testing.T, f *fixture) {
	ctx := context.Background()
	asg := autoscaling.NewFromConfig(f.h.DirectConfig())
	attach := func() {
		if _, err := asg.AttachInstances(ctx, &autoscaling.AttachInstancesInput{
			AutoScalingGroupName: aws.String(f.st.Config.ASGName), InstanceIds: f.ids}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name     string
		setup    func()
		args     []string
		env      map[string]string
		wantCode int
		wantErr  string
	}{
		{name: "not a slot", args: []string{"evict", "x"}, wantCode: slotctl.ExitUsage, wantErr: `"x" is not a slot`},
		{name: "a free slot", args: []string{"evict", "3", "--slot-count", "4", "--yes"}, wantCode: slotctl.ExitRefused, wantErr: "slot 3 is free"},
		{name: "a holder outside the group", args: []string{"evict", "1", "--yes"}, wantCode: slotctl.ExitRefused, wantErr: "is not an instance of group"},
		{name: "without --yes", setup: attach, args: []string{"evict", "1"}, wantCode: slotctl.ExitRefused, wantErr: "dry run: nothing changed"},
		{name: "without a terminate hook", args: []string{"evict", "1", "--yes"}, wantCode: slotctl.ExitRefused, wantErr: "has no terminate lifecycle hook",
			setup: func() {
				if _, err := asg.DeleteLifecycleHook(ctx, &autoscaling.DeleteLifecycleHookInput{
					AutoScalingGroupName: aws.String(f.st.Config.ASGName), LifecycleHookName: aws.String(demo.TerminateHook)}); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "a draining slot", args: []string{"evict", "2", "--yes"}, wantCode: slotctl.ExitRefused, wantErr: "slot 2 is draining",
			setup: func() {
				if _, err := asg.PutLifecycleHook(ctx, &autoscaling.PutLifecycleHookInput{
					AutoScalingGroupName: aws.String(f.st.Config.ASGName), LifecycleHookName: aws.String(demo.TerminateHook),
					LifecycleTransition: aws.String("autoscaling:EC2_INSTANCE_TERMINATING"), HeartbeatTimeout: aws.Int32(900)}); err != nil {
					t.Fatal(err)
				}
				l, err := f.store.Get(ctx, 2)
				if err == nil {
					_, err = f.store.Drain(ctx, l, "test")
				}
				if err != nil {
					t.Fatal(err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			f.h.ResetCounts()
			r := f.run(tt.env, append(tt.args, "--json")...)
			doc := decode[map[string]any](t, r)
			errText, _ := doc["error"].(string)
			if doc["dry_run"] == true { // the document of a dry run is the plan
				errText, doc["hint"] = "dry run: nothing changed", "re-run with --yes"
			}
			if r.code != tt.wantCode || !strings.Contains(errText, tt.wantErr) || doc["hint"] == "" {
				t.Errorf("exit %d, document %v; want exit %d and an error with %q and a hint", r.code, doc, tt.wantCode, tt.wantErr)
			}
			if m := f.h.MutatingCalls(); len(m) > 0 {
				t.Errorf("a refused evict made mutating calls %v", m)
			}
		})
	}

	// Broker 1 is at min ISR: evict says so (the terminate function will wait), and
	// with --yes asks the group for a planned termination that keeps the capacity.
	f.st.Kafka.SetISR(demo.Topic, 0, 1, 2)
	f.st.Kafka.SetISR(demo.Topic, 1, 1, 2)
	f.st.Kafka.SetISR(demo.Topic, 2, 1, 2)
	f.h.ResetCounts()
	r := f.run(nil, "evict", "1", "--yes", "--json")
	ev := decode[slotctl.Eviction](t, r)
	if r.code != slotctl.ExitOK || !ev.Done || ev.Instance != f.ids[1] || ev.Safe == nil || *ev.Safe || !strings.Contains(ev.Safety, "holds the termination") {
		t.Fatalf("evict: exit %d, %+v\nstderr %s", r.code, ev, r.stderr)
	}
	if m := f.h.MutatingCalls(); !slices.Equal(m, []string{"TerminateInstanceInAutoScalingGroup"}) {
		t.Errorf("mutating calls %v, want exactly one TerminateInstanceInAutoScalingGroup", m)
	}
	bodies := f.h.Bodies("TerminateInstanceInAutoScalingGroup")
	if len(bodies) != 1 {
		t.Fatalf("%d TerminateInstanceInAutoScalingGroup requests", len(bodies))
	}
	form, _ := url.ParseQuery(string(bodies[0]))
	if form.Get("InstanceId") != f.ids[1] || form.Get("ShouldDecrementDesiredCapacity") != "false" {
		t.Errorf("request %v, want InstanceId=%s and ShouldDecrementDesiredCapacity=false", form, f.ids[1])
	}
}
