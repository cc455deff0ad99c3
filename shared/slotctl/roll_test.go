package slotctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/hostcmd"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// rollRig is a deployment whose three slots are bound by the real launch path, with
// the holders InService in the group, and:
//   - demo.Group playing the group around moto: an eviction puts the holder in
//     Terminating:Wait and runs the real terminate handler on its lifecycle action; once
//     that completed with CONTINUE, the instance is terminated and a replacement is
//     launched from the launch template in its AZ, and the real launch handler runs on
//     the replacement's lifecycle action;
//   - a Kafka model on kfake: a broker stops when SSM runs the stop command on its
//     instance (it leaves the cluster, the ISRs and, as a controller, the caught-up
//     voters; a leader hands the leadership over); it registers again once its
//     replacement's launch completed, and catches up only after Kafka has been asked
//     lagLooks more times (the roll must look, and wait, while it is under-replicated).
//
// The KRaft quorum is voters 0, 1 and 100 (a controller outside the slots), leader 0:
// slot 2 is a broker, slot 1 a controller, slot 0 the quorum leader.
type rollRig struct {
	t   *testing.T
	h   *harness.Harness
	st  *demo.Stage
	f   *fixture
	g   *demo.Group
	cfg aws.Config // AWS through the group's endpoint

	mu       sync.Mutex
	node     map[string]int32 // instance -> node id of the slot it holds
	quorum   kafkatest.Quorum
	events   []string
	caughtUp map[int32][]time.Time
	stopped  map[int32][]time.Time
	lagLooks int64
}

func newRollRig(t *testing.T, cluster string) *rollRig {
	t.Helper()
	return newRollRigSlots(t, cluster, 0)
}

// newRollRigSlots is newRollRig with a slot count of slots (0: the fixture's; above
// it, the slots past the three brokers' are spare and free).
func newRollRigSlots(t *testing.T, cluster string, slots int) *rollRig {
	t.Helper()
	h := harness.Start(t)
	rig := &rollRig{t: t, h: h, node: map[string]int32{}, caughtUp: map[int32][]time.Time{}, stopped: map[int32][]time.Time{}, lagLooks: 4}
	// moto runs no command: the proxy tells the Kafka model of each stop command.
	h.Override(harness.Override{Action: "SendCommand", Rewrite: func(req, resp []byte) []byte {
		rig.sendCommand(req)
		return resp
	}})
	rig.f = newFixture(t, h, cluster)
	rig.st = rig.f.st
	if slots > 0 {
		rig.st.Config.SlotCount = slots
		rig.st.Vars["SLOT_COUNT"] = fmt.Sprint(slots)
		if _, err := autoscaling.NewFromConfig(h.DirectConfig()).UpdateAutoScalingGroup(context.Background(), &autoscaling.UpdateAutoScalingGroupInput{
			AutoScalingGroupName: aws.String(rig.st.Config.ASGName), MaxSize: aws.Int32(int32(slots))}); err != nil {
			t.Fatal(err)
		}
	}
	join(t, rig.st, rig.f.ids...)
	for i, id := range rig.f.ids {
		rig.node[id] = int32(i)
	}
	rig.quorum = kafkatest.Quorum{Leader: 0, Voters: []int32{0, 1, 100}, Behind: map[int32]time.Duration{}}
	rig.st.Kafka.SetQuorum(rig.quorum)

	g, err := demo.NewGroup(t, rig.st)
	if err != nil {
		t.Fatal(err)
	}
	rig.g = g
	rig.cfg = h.AWSConfig()
	rig.cfg.BaseEndpoint = aws.String(g.URL)
	cfg, log := rig.st.Config, obs.NewLogger(io.Discard, 0)
	ec2c, asg, ddb := ec2.NewFromConfig(rig.cfg), autoscaling.NewFromConfig(rig.cfg), dynamodb.NewFromConfig(rig.cfg)
	syncer := dns.New(cfg, route53.NewFromConfig(rig.cfg), ec2c, ddb, log)

	lh := launch.New(cfg, ec2c, asg, ddb, log, io.Discard)
	lh.Followers = []launch.Follower{grow.NewAlarms(cfg, awsapi.NewCloudWatch(rig.cfg), log), syncer}
	lh.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 10 * time.Second}
	th := terminate.New(cfg, ec2c, asg, ddb, ssm.NewFromConfig(rig.cfg), log, io.Discard)
	k, err := kafka.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	th.Kafka, th.Drainers = k, []terminate.Drainer{syncer}
	th.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 5 * time.Second}
	th.HeartbeatInterval, th.SafetyRecheck, th.SafetyMaxWait = 200*time.Millisecond, 50*time.Millisecond, 20*time.Second
	th.LeaveTimeout, th.SSMPoll = 5*time.Second, 10*time.Millisecond

	g.Terminate = func(ctx context.Context, id string) error {
		out, err := th.Invoke(ctx, demo.LifecycleEvent(cfg.ASGName, id, false))
		if err != nil {
			return err
		}
		var res terminate.Result
		if err := json.Unmarshal(out, &res); err != nil || res.Outcome != terminate.OutcomeReleased || !res.Planned || res.Forced {
			return fmt.Errorf("terminate of %s answered %s (%w)", id, out, err)
		}
		rig.note("terminate handler released slot %d of %s (planned, %d safety checks)", res.Slot, id, res.SafetyChecks)
		return nil
	}
	g.Launch = func(ctx context.Context, id string) (string, int, error) {
		out, err := lh.Invoke(ctx, demo.LifecycleEvent(cfg.ASGName, id, true))
		if err != nil {
			return "", -1, err
		}
		var res struct {
			Outcome string `json:"outcome"`
			Slot    int    `json:"slot"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			return "", -1, err
		}
		rig.note("launch handler: %s %s slot %d", id, res.Outcome, res.Slot)
		if res.Outcome == "continue" {
			rig.started(id, int32(cfg.NodeID(res.Slot)))
		}
		return res.Outcome, res.Slot, nil
	}
	return rig
}

func (rig *rollRig) note(format string, args ...any) {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	rig.events = append(rig.events, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
}

// sendCommand sees an SSM SendCommand: the stop-and-unmount command stops the broker
// of each instance it targets.
func (rig *rollRig) sendCommand(req []byte) {
	var in struct {
		InstanceIds []string
		Parameters  map[string][]string
	}
	if json.Unmarshal(req, &in) != nil || !hostcmd.IsStopAndUnmount(in.Parameters["commands"]) {
		return
	}
	for _, id := range in.InstanceIds {
		rig.mu.Lock()
		n, ok := rig.node[id]
		rig.mu.Unlock()
		if !ok {
			continue
		}
		k := rig.st.Kafka
		k.Unregister(n)
		for p := range int32(3) {
			var isr []int32
			for _, r := range k.Replicas(demo.Topic, p) {
				if r != n {
					isr = append(isr, r)
				}
			}
			k.SetISR(demo.Topic, p, isr...)
		}
		rig.mu.Lock()
		if slices.Contains(rig.quorum.Voters, n) {
			rig.quorum.Behind[n] = kafkatest.Unknown
			if rig.quorum.Leader == n {
				for _, v := range rig.quorum.Voters {
					if _, behind := rig.quorum.Behind[v]; !behind {
						rig.quorum.Leader = v // an election among the caught-up voters
						break
					}
				}
			}
			k.SetQuorum(rig.quorum)
		}
		rig.stopped[n] = append(rig.stopped[n], time.Now())
		rig.mu.Unlock()
		rig.note("SSM stop on %s: broker %d stopped", id, n)
	}
}

// started: the replacement's broker registers, lagging; it catches up once Kafka has
// been asked lagLooks more times.
func (rig *rollRig) started(id string, n int32) {
	k := rig.st.Kafka
	rig.mu.Lock()
	rig.node[id] = n
	rig.mu.Unlock()
	k.Register(n)
	from := k.Answered()
	rig.note("broker %d starts on %s and catches up", n, id)
	go func() {
		deadline := time.Now().Add(time.Minute)
		for k.Answered() < from+rig.lagLooks && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		for p := range int32(3) {
			k.Restore(demo.Topic, p)
		}
		rig.mu.Lock()
		delete(rig.quorum.Behind, n)
		k.SetQuorum(rig.quorum)
		rig.caughtUp[n] = append(rig.caughtUp[n], time.Now())
		rig.mu.Unlock()
		rig.note("broker %d caught up (%d Kafka requests while it lagged)", n, k.Answered()-from)
	}()
}

// roll runs slotctl roll through the group's endpoint.
func (rig *rollRig) roll(ctx context.Context, args ...string) result {
	vars := map[string]string{}
	for k, v := range rig.st.Vars {
		vars[config.Prefix+k] = v
	}
	var out, errOut bytes.Buffer
	code := slotctl.Main(ctx, append([]string{"roll"}, args...), slotctl.IO{
		Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return vars[k] },
		Clients: slotctl.NewClients(rig.cfg),
	})
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// nextSecond waits for the next second and returns it: EC2 launch times have a
// second's resolution, and the roll compares them with --launched-before.
func nextSecond() time.Time {
	next := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(next))
	return next.UTC()
}

var progressLine = regexp.MustCompile(`(?m)^ +\d+\.\ds  slot (\d) \((?:broker|controller|quorum leader) \d\) · evicting (i-[0-9a-f]+): TerminateInstanceInAutoScalingGroup`)

// slotctl roll over three brokers against moto and kfake, driving the real terminate
// and launch handlers: the order (broker, controller, quorum leader), one slot at a
// time, waiting while partitions are under-replicated, resuming after being killed
// mid-roll, and ending with every holder new and every slot on its own volume and ENI.
func TestRoll(t *testing.T) {
	rig := newRollRig(t, "ro")
	ctx := context.Background()
	before := map[int]lease.Lease{}
	for s := range demo.Slots {
		l, err := rig.f.store.Get(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		before[s] = l
	}
	since := nextSecond()
	stamp := since.Format(time.RFC3339)

	t.Run("dry run", func(t *testing.T) {
		rig.h.ResetCounts()
		r := rig.roll(ctx, "--dry-run", "--launched-before", stamp, "--json")
		rep := decode[slotctl.RollReport](t, r)
		var order, roles []string
		for _, p := range rep.Plan {
			order = append(order, fmt.Sprint(p.Slot))
			roles = append(roles, p.Role)
			if p.New {
				t.Errorf("plan: slot %d's holder is new: %s", p.Slot, p.Why)
			}
		}
		if r.code != slotctl.ExitOK || !rep.DryRun || !rep.Ready || strings.Join(order, ",") != "2,1,0" ||
			strings.Join(roles, ",") != "broker,controller,quorum leader" || len(rep.Steps) != 0 {
			t.Errorf("dry run: exit %d, %+v\nstderr %s", r.code, rep, r.stderr)
		}
		if m := rig.h.MutatingCalls(); len(m) > 0 || len(rig.g.Evictions()) > 0 {
			t.Errorf("a dry run made mutating calls %v, evictions %v", m, rig.g.Evictions())
		}
		t.Logf("dry run:\n%s", r.stderr)
	})

	t.Run("by launch template version", func(t *testing.T) {
		r := rig.roll(ctx, "--dry-run", "--json")
		rep := decode[slotctl.RollReport](t, r)
		for _, p := range rep.Plan {
			if !p.New || p.LaunchTemplate == "" {
				t.Errorf("every holder runs the group's launch template version 1: %+v", p)
			}
		}
		// A new launch template version makes every holder old.
		direct := ec2.NewFromConfig(rig.h.DirectConfig())
		if _, err := direct.CreateLaunchTemplateVersion(ctx, &ec2.CreateLaunchTemplateVersionInput{
			LaunchTemplateName: aws.String("ro-broker"), SourceVersion: aws.String("1"),
			LaunchTemplateData: &ec2types.RequestLaunchTemplateData{InstanceType: ec2types.InstanceTypeM5Large},
		}); err != nil {
			t.Fatal(err)
		}
		r = rig.roll(ctx, "--dry-run", "--json")
		rep = decode[slotctl.RollReport](t, r)
		for _, p := range rep.Plan {
			if p.New || !strings.Contains(p.Why, "launch template version 1, the group's is 2") {
				t.Errorf("after version 2: %+v", p)
			}
		}
		if r.code != slotctl.ExitOK || !strings.HasSuffix(rep.By, "version 2") {
			t.Errorf("exit %d, by %q", r.code, rep.By)
		}
	})

	// The roll, killed mid-step: once its second eviction's replacement is launching.
	ctx1, kill := context.WithCancel(ctx)
	defer kill()
	var armed atomic.Bool
	armed.Store(true)
	rig.g.Launched = func(context.Context, string) { // set while no lifecycle runs
		if armed.Load() && len(rig.g.Evictions()) == 2 {
			kill()
		}
	}
	args := []string{"--launched-before", stamp, "--poll", "100ms", "--step-timeout", "2m", "--json"}
	began := time.Now()
	first := rig.roll(ctx1, args...)
	armed.Store(false)
	rep1 := decode[slotctl.RollReport](t, first)
	if first.code != slotctl.ExitProblem || !strings.Contains(rep1.Error, "roll interrupted") ||
		rep1.Hint != "resume with: slotctl roll --launched-before "+stamp || len(rep1.Steps) != 2 || rep1.Done {
		t.Fatalf("killed roll: exit %d, %d steps, done %v, error %q, hint %q\nstderr %s", first.code, len(rep1.Steps), rep1.Done, rep1.Error, rep1.Hint, first.stderr)
	}
	// Resumed: the same command.
	second := rig.roll(ctx, args...)
	rep2 := decode[slotctl.RollReport](t, second)
	elapsed := time.Since(began)
	rig.g.Wait()
	if second.code != slotctl.ExitOK || !rep2.Done || len(rep2.Steps) != 1 || rep2.ElapsedMS < rep2.Steps[0].InSyncAtMS {
		t.Fatalf("resumed roll: exit %d, %+v\nstderr %s", second.code, rep2, second.stderr)
	}
	for _, err := range rig.g.Errs() {
		t.Errorf("the group: %v", err)
	}
	t.Logf("killed roll (exit %d):\n%s", first.code, first.stderr)
	t.Logf("resumed roll (exit %d):\n%s", second.code, second.stderr)

	// The resumed roll first waited for the step the killed one left in progress.
	var planNew []int
	for _, p := range rep2.Plan {
		if p.New {
			planNew = append(planNew, p.Slot)
		}
	}
	if !slices.Equal(planNew, []int{2}) || len(rep2.Steps[0].Waits) == 0 {
		t.Errorf("resumed roll: holders new at its start %v (want slot 2 only: slot 1 was mid-step), waits %q", planNew, rep2.Steps[0].Waits)
	}

	// Order, one eviction per slot: broker (slot 2), controller (slot 1), leader (slot 0).
	ev := rig.g.Evictions()
	var got []string
	for _, e := range ev {
		got = append(got, e.Instance)
	}
	want := []string{rig.f.ids[2], rig.f.ids[1], rig.f.ids[0]}
	if !slices.Equal(got, want) {
		t.Fatalf("evictions %v, want %v (slots 2, 1, 0)", got, want)
	}
	// Every step that waited while under-replicated said so in a progress line.
	if n := strings.Count(first.stderr+second.stderr, "· waiting: Kafka: 3 under-replicated partition(s)"); n != 2 {
		t.Errorf("%d progress lines of steps waiting while under-replicated, want 2 (slots 2 and 0)", n)
	}
	var printed []string
	for _, m := range progressLine.FindAllStringSubmatch(first.stderr+second.stderr, -1) {
		printed = append(printed, m[1])
	}
	if strings.Join(printed, ",") != "2,1,0" {
		t.Errorf("progress lines name evictions of slots %v, want 2,1,0", printed)
	}

	// One slot at a time, and never while under-replicated: each eviction comes after
	// the previous replacement went in service and after its broker caught up.
	steps := append(rep1.Steps, rep2.Steps...)
	for i := 1; i < len(ev); i++ {
		prevNode := int32(2 - (i - 1))
		rig.mu.Lock()
		caught := rig.caughtUp[prevNode]
		rig.mu.Unlock()
		if len(caught) != 1 || ev[i-1].InService.IsZero() || !ev[i].At.After(ev[i-1].InService) || !ev[i].At.After(caught[0]) {
			t.Errorf("eviction %d at %s: previous replacement in service %s, broker %d caught up %v",
				i, ev[i].At.Format("15:04:05.000"), ev[i-1].InService.Format("15:04:05.000"), prevNode, caught)
		}
	}
	for i, st := range steps {
		if i == 1 {
			continue // killed before it could wait
		}
		if !slices.ContainsFunc(st.SyncWaits, func(w string) bool { return strings.Contains(w, "under-replicated partition(s)") }) {
			t.Errorf("step %d (slot %d) did not wait while under-replicated: %q", i, st.Slot, st.SyncWaits)
		}
	}
	// The slots' histories: no two slots away from bound at the same time.
	type away struct {
		slot     int
		from, to string
	}
	var aways []away
	for s := range demo.Slots {
		l, err := rig.f.store.Get(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		var from string
		for _, tr := range l.History {
			switch {
			case tr.From == lease.Bound && tr.To == lease.Draining:
				from = tr.At
			case tr.To == lease.Bound && from != "":
				aways = append(aways, away{s, from, tr.At})
				from = ""
			}
		}
	}
	if len(aways) != 3 {
		t.Fatalf("slot histories show %d departures and returns, want 3: %+v", len(aways), aways)
	}
	for i, a := range aways {
		for _, b := range aways[i+1:] {
			if a.from < b.to && b.from < a.to {
				t.Errorf("slots %d and %d were away at the same time: %+v %+v", a.slot, b.slot, a, b)
			}
		}
	}

	// The end: every holder new, every slot bound on its own volume and ENI, which
	// are attached to the new holder; the old instances terminated.
	sv, err := slotctl.Inspect(ctx, rig.st.Clients(), rig.st.Config, slotctl.SurveyOptions{KnownSubnets: true})
	if err != nil {
		t.Fatal(err)
	}
	direct := ec2.NewFromConfig(rig.h.DirectConfig())
	for s, row := range sv.Slots {
		was := before[s]
		out, err := direct.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{row.Holder}})
		if err != nil || len(out.Reservations) == 0 {
			t.Fatalf("describing %s: %v", row.Holder, err)
		}
		launched := aws.ToTime(out.Reservations[0].Instances[0].LaunchTime)
		vols, err := direct.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{was.VolumeID}})
		if err != nil || len(vols.Volumes) != 1 || len(vols.Volumes[0].Attachments) != 1 {
			t.Fatalf("volume %s: %v", was.VolumeID, err)
		}
		att := aws.ToString(vols.Volumes[0].Attachments[0].InstanceId)
		if row.State != "bound" || row.HolderState != "running" || launched.Before(since) || row.Holder == was.Holder ||
			row.Volume != was.VolumeID || row.ENI != was.ENIID || row.IP != was.IP || att != row.Holder {
			t.Errorf("slot %d: %+v (launched %s; was %s with volume %s, ENI %s, IP %s; volume attached to %s)",
				s, row, launched, was.Holder, was.VolumeID, was.ENIID, was.IP, att)
		}
		old, err := direct.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{was.Holder}})
		if err != nil || len(old.Reservations) == 0 || old.Reservations[0].Instances[0].State.Name != ec2types.InstanceStateNameTerminated {
			t.Errorf("old holder %s of slot %d is not terminated: %v", was.Holder, s, err)
		}
	}
	if k := sv.Kafka; k == nil || k.UnderReplicated != 0 || len(k.Brokers) != 3 {
		t.Errorf("Kafka at the end: %+v", sv.Kafka)
	}
	if len(sv.Problems) != 0 {
		t.Errorf("problems at the end: %v", sv.Problems)
	}
	// The group launched each replacement while the old holder was still leaving, as
	// AWS does: its launch waits for the handover (a launch path without one abandons
	// it, and the group launches another); every termination, and the launch of every
	// holder, continued.
	abandoned := rig.g.Abandoned()
	for _, c := range rig.h.Completions() {
		switch {
		case c.Result == "CONTINUE":
		case c.Result == "ABANDON" && c.Hook == demo.LaunchHook && slices.Contains(abandoned, c.InstanceID):
		default:
			t.Errorf("completion %+v", c)
		}
	}
	t.Logf("replacements abandoned (then replaced by the group): %d", len(abandoned))

	rig.mu.Lock()
	t.Logf("Kafka and the handlers, in order:\n  %s", strings.Join(rig.events, "\n  "))
	rig.mu.Unlock()
	for _, st := range steps {
		t.Logf("slot %d (%s %d): %s -> %s, volume %s -> %s; evicted at %.1fs, bound at %.1fs, in sync at %.1fs; waited before: %q; after: %q",
			st.Slot, st.Role, st.NodeID, st.Old, st.New, st.Volume, st.VolumeAfter, float64(st.EvictedAtMS)/1000, float64(st.BoundAtMS)/1000,
			float64(st.InSyncAtMS)/1000, st.Waits, st.SyncWaits)
	}
	t.Logf("3 brokers rolled in %s (killed mid-step, once slot 1's replacement was launching; resumed)", elapsed.Round(100*time.Millisecond))
}

// slotctl roll in a cluster with a spare (never used) slot in the evicted holder's
// AZ: the replacement takes over the evicted broker's slot (same node id, same
// volume), not the spare one, and the roll goes on; the spare slot stays free.
func TestRollWithSpareSlot(t *testing.T) {
	rig := newRollRigSlots(t, "rs", 6) // slot 5 shares slot 2's AZ
	ctx := context.Background()
	before, err := rig.f.store.Get(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	// The next second, not "now": EC2 gives launch times to the second, and the
	// fixture's holders were launched in this one.
	stamp := nextSecond().Format(time.RFC3339)
	r := rig.roll(ctx, "--launched-before", stamp, "--slots", "2", "--poll", "200ms", "--step-timeout", "30s", "--json")
	rig.g.Wait()
	rep := decode[slotctl.RollReport](t, r)
	l2, err := rig.f.store.Get(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	l5, err := rig.f.store.Get(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("roll exit %d (%s); slot 2: %s by %s → %s by %s, volume %s → %s; slot 5: %s (version %d)",
		r.code, rep.Error, before.State, before.Holder, l2.State, l2.Holder, before.VolumeID, l2.VolumeID, l5.State, l5.Version)
	if r.code != slotctl.ExitOK || l2.State != lease.Bound || l2.Holder == before.Holder || l2.VolumeID != before.VolumeID {
		t.Errorf("roll exit %d: slot 2 is %s by %s with volume %s; want bound to a new holder with volume %s\n%s",
			r.code, l2.State, l2.Holder, l2.VolumeID, before.VolumeID, r.stderr)
	}
	if l5.State != lease.Free || l5.Version != 0 {
		t.Errorf("spare slot 5 is %s at version %d: the replacement took it", l5.State, l5.Version)
	}
}

// A roll never evicts a holder it put in place itself, even when its judge of old and
// new calls the replacement old: here --launched-before lies an hour ahead (as a
// local clock an hour ahead of AWS's would with "now"), so every replacement looks
// launched before it. The roll replaces slot 2 once, says the replacement does not
// look new, and ends; it does not evict the replacement again.
func TestRollDoesNotEvictItsOwnReplacement(t *testing.T) {
	rig := newRollRig(t, "rr")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ahead := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	r := rig.roll(ctx, "--launched-before", ahead, "--slots", "2", "--poll", "200ms", "--step-timeout", "30s", "--json")
	rig.g.Wait()
	rep := decode[slotctl.RollReport](t, r)
	ev := rig.g.Evictions()
	t.Logf("roll exit %d, done %v, %d step(s), evictions %+v\n%s", r.code, rep.Done, len(rep.Steps), ev, r.stderr)
	if r.code != slotctl.ExitOK || !rep.Done || len(rep.Steps) != 1 || len(ev) != 1 {
		t.Errorf("roll exit %d, done %v, %d steps, %d evictions; want exit 0, done, one step, one eviction", r.code, rep.Done, len(rep.Steps), len(ev))
	}
	if !strings.Contains(r.stderr, "does not look new") || !strings.Contains(r.stderr, "this roll does not evict it again") {
		t.Errorf("the progress does not say the replacement looks old but is kept:\n%s", r.stderr)
	}
}

// While Kafka answers DescribeQuorum with an error, the roll does not take the cluster
// for at rest (a look that failed proves nothing) and evicts nobody; once the quorum
// answers again it goes on, in its order: broker 2 first (neither a controller nor the
// leader), not slot 0, the quorum leader, as a roll that took the failure for "no
// quorum" would.
func TestRollWaitsOutAFailingQuorumRead(t *testing.T) {
	rig := newRollRig(t, "rq")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failing := rig.quorum
	failing.ErrorCode = kerr.UnknownServerError.Code
	rig.st.Kafka.SetQuorum(failing)
	var during []demo.Eviction
	go func() {
		time.Sleep(2 * time.Second)
		during = rig.g.Evictions()
		rig.st.Kafka.SetQuorum(rig.quorum)
		for ctx.Err() == nil && len(rig.g.Evictions()) == 0 {
			time.Sleep(20 * time.Millisecond)
		}
		cancel() // one eviction tells the order
	}()
	ahead := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	r := rig.roll(ctx, "--launched-before", ahead, "--poll", "200ms", "--step-timeout", "30s", "--json")
	rig.g.Wait()
	ev := rig.g.Evictions()
	t.Logf("roll exit %d; evictions while DescribeQuorum failed: %d; after: %+v\n%s", r.code, len(during), ev, r.stderr)
	if len(during) > 0 {
		t.Errorf("the roll evicted %s while it could not read the quorum", during[0].Instance)
	}
	if !strings.Contains(r.stderr, "waiting: cannot look: describing the KRaft quorum") {
		t.Errorf("the progress does not say the roll waits because it cannot read the quorum")
	}
	if len(ev) == 0 {
		t.Fatalf("no eviction once the quorum answered: %s", r.stderr)
	}
	if ev[0].Instance != rig.f.ids[2] {
		t.Errorf("the first eviction is %s, want slot 2's holder %s (brokers first, the quorum leader, slot 0, last)", ev[0].Instance, rig.f.ids[2])
	}
}

// While a removal holds the cluster's removal token (a termination between its safety
// wait and its release: another roll's eviction, a scale-in, an instance refresh), the
// roll evicts nobody; once the token is given back it goes on.
func TestRollWaitsForTheRemovalToken(t *testing.T) {
	rig := newRollRig(t, "rt")
	bg := context.Background()
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	l1, err := rig.f.store.Get(bg, 1)
	if err != nil {
		t.Fatal(err)
	}
	free, err := rig.f.store.GetRemoval(bg)
	if err != nil {
		t.Fatal(err)
	}
	held, err := rig.f.store.TakeRemoval(bg, free, lease.Remover{Slot: 1, Instance: l1.Holder, LeaseVersion: l1.Version,
		Invocation: "another-removal", Until: time.Now().Add(time.Hour)}, "a removal under way")
	if err != nil {
		t.Fatal(err)
	}
	var during []demo.Eviction
	go func() {
		time.Sleep(2 * time.Second)
		during = rig.g.Evictions()
		if _, err := rig.f.store.GiveBackRemoval(bg, held, "the removal is over"); err != nil {
			t.Error(err)
		}
		for ctx.Err() == nil && len(rig.g.Evictions()) == 0 {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
	}()
	ahead := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	r := rig.roll(ctx, "--launched-before", ahead, "--poll", "200ms", "--step-timeout", "30s", "--json")
	rig.g.Wait()
	ev := rig.g.Evictions()
	t.Logf("roll exit %d; evictions while the token was held: %d; after: %d\n%s", r.code, len(during), len(ev), r.stderr)
	if len(during) > 0 {
		t.Errorf("the roll evicted %s while another removal held the token", during[0].Instance)
	}
	if !strings.Contains(r.stderr, "waiting: the removal token is held: a removal of slot 1 ("+l1.Holder+") is under way") {
		t.Errorf("the progress does not say the roll waits for the removal token")
	}
	if len(ev) == 0 {
		t.Errorf("no eviction once the token was given back")
	}
}
