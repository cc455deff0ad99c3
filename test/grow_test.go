package test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// Must show 1: a 100 GiB volume at 85 % used, target 60 %, gets one ModifyVolume to
// 142 GiB, the filesystem command goes to the holder for the configured mount, and the
// growth is in the slot's history. Both alarm payloads do it.
func TestAlarmGrowsVolumeAndFilesystem(t *testing.T) {
	h := harness.Start(t)
	sent := recordSendCommands(t, h)
	tests := []struct {
		name    string
		payload func(r *growRig, slot int, used float64, at time.Time) []byte
	}{
		{"alarm action", (*growRig).alarmAction},
		{"EventBridge state change", (*growRig).stateChange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newGrowRig(t, h, 3, nil)
			r.launchAll(r.run(0), r.run(1), r.run(2))
			holder := r.lease(1).Holder
			h.ResetCounts()
			sentBefore := len(sent())

			res := r.mustDeliver(tt.payload(r, 1, 85, time.Now().Add(-time.Minute)))

			if res.Outcome != grow.OutcomeGrown || res.Slot != 1 || res.FromGiB != 100 || res.ToGiB != 142 {
				t.Fatalf("result %+v, want grown 100 -> 142 GiB on slot 1", res)
			}
			calls := h.MutatingCalls()
			if n := h.Calls("ModifyVolume"); n != 1 || r.volumeSize(1) != 142 {
				t.Fatalf("%d ModifyVolume calls, volume is %d GiB; want one, to 142", n, r.volumeSize(1))
			}
			for _, other := range []int{0, 2} {
				if s := r.volumeSize(other); s != 100 {
					t.Errorf("slot %d volume is %d GiB, want it untouched at 100", other, s)
				}
			}
			want := grow.FilesystemScript(growDataMount, 142)
			if !slices.Contains(want, "mount='"+growDataMount+"'") {
				t.Fatalf("the script does not name the mount %s: %q", growDataMount, want)
			}
			asked := sent()[sentBefore:]
			if len(asked) != 1 || !slices.Equal(asked[0].InstanceIds, []string{holder}) ||
				asked[0].DocumentName != "AWS-RunShellScript" || !slices.Equal(asked[0].Parameters["commands"], want) {
				t.Fatalf("SendCommand requests %+v, want one AWS-RunShellScript to the holder %s with the script for %s at 142 GiB",
					asked, holder, growDataMount)
			}
			cmds := r.commandsTo(holder) // read back from moto
			if len(cmds) != 1 || cmds[0].Document != "AWS-RunShellScript" || !slices.Equal(cmds[0].Script, want) {
				t.Fatalf("SSM commands moto holds for %s: %+v", holder, cmds)
			}
			c := cmds[0]
			inv, err := r.ssm.GetCommandInvocation(context.Background(), &ssm.GetCommandInvocationInput{CommandId: &c.ID, InstanceId: &holder})
			if err != nil || inv.Status != ssmtypes.CommandInvocationStatusSuccess {
				t.Errorf("invocation of %s on %s: %+v, %v", c.ID, holder, inv, err)
			}
			g := r.growth(1)
			if len(g.History) != 1 || g.Pending != nil {
				t.Fatalf("growth state %+v, want one history entry and nothing pending", g)
			}
			rec := g.History[0]
			if rec.VolumeID != r.lease(1).VolumeID || rec.FromGiB != 100 || rec.ToGiB != 142 || rec.UsedPercent != 85 ||
				rec.Instance != holder || rec.At == "" || !strings.Contains(rec.Reason, "85.0% used") || !strings.HasPrefix(rec.Actor, "grow/") {
				t.Errorf("history entry %+v", rec)
			}
			if got := r.emf(grow.MetricGrowths); !slices.Equal(got, []float64{1}) {
				t.Errorf("Growths metric %v, want [1]", got)
			}
			if got := r.emf(grow.MetricGrowthGiB); !slices.Equal(got, []float64{42}) {
				t.Errorf("GrowthGiB metric %v, want [42]", got)
			}
			wantCalls := []string{"UpdateItem", "ModifyVolume", "SendCommand", "UpdateItem"}
			if !slices.Equal(calls, wantCalls) {
				t.Errorf("mutating calls %v, want %v (pending, modify, filesystem, history)", calls, wantCalls)
			}
			t.Logf("%s: slot 1 volume %s 100 -> %d GiB; SSM command %s to %s; history %+v; mutating calls %v; %d AWS calls",
				tt.name, rec.VolumeID, r.volumeSize(1), c.ID, holder, rec, calls, sum(h.CallCounts()))
		})
	}
}

// Must show 2: a second alarm while the modification is modifying makes no second
// ModifyVolume. moto completes a modification at once, so the proxy reports it as
// still "modifying" (harness.Override on DescribeVolumesModifications) while armed:
// the modification is real at moto, only its state is held back. The first alarm's
// bounded wait runs out and leaves the growth pending; the second alarm finds the
// modification in flight and does nothing; once it completes, the reconciler grows
// the filesystem.
func TestSecondAlarmWhileModifyingGrowsOnce(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	var modifying atomic.Bool
	h.Override(harness.Override{Action: "DescribeVolumesModifications", Rewrite: func(_, b []byte) []byte {
		if !modifying.Load() {
			return b
		}
		return bytes.ReplaceAll(b, []byte("<modificationState>completed<"), []byte("<modificationState>modifying<"))
	}})
	r.launchAll(r.run(0), r.run(1), r.run(2))
	modifying.Store(true)
	h.ResetCounts()

	first := r.mustDeliver(r.alarmAction(2, 85, time.Now().Add(-time.Minute)))
	if first.Outcome != grow.OutcomePending || first.ToGiB != 142 {
		t.Fatalf("first alarm: %+v, want pending growth to 142 GiB (its wait for optimizing ran out)", first)
	}
	if p := r.growth(2).Pending; p == nil || p.ToGiB != 142 || p.Attempts != 1 || !strings.Contains(p.LastError, "not optimizing") {
		t.Fatalf("pending growth after the first alarm: %+v", p)
	}
	firstCalls := h.MutatingCalls()

	h.ResetCounts()
	for _, payload := range [][]byte{
		r.alarmAction(2, 87, time.Now()),                   // a later datapoint of the same breach
		r.stateChange(2, 85, time.Now().Add(-time.Minute)), // the same breach through EventBridge
	} {
		res := r.mustDeliver(payload)
		if res.Outcome != grow.OutcomeInFlight {
			t.Errorf("alarm while modifying: %+v, want in-flight", res)
		}
	}
	if calls := h.MutatingCalls(); len(calls) != 0 {
		t.Fatalf("alarms while modifying made mutating calls %v, want none", calls)
	}

	modifying.Store(false) // EC2 finished the modification
	h.ResetCounts()
	repairs, err := r.reconcileGrowth() // a later reconcile run
	if err != nil || repairs != 1 {
		t.Fatalf("reconcile: %d repairs, %v; want 1", repairs, err)
	}
	g := r.growth(2)
	if len(g.History) != 1 || g.History[0].ToGiB != 142 || g.Pending != nil {
		t.Fatalf("growth state after reconcile: %+v", g)
	}
	reconcileCalls := h.MutatingCalls()
	if countAction(reconcileCalls, "ModifyVolume") != 0 || countAction(firstCalls, "ModifyVolume") != 1 || r.volumeSize(2) != 142 {
		t.Fatalf("ModifyVolume: %v then %v; want exactly one in all", firstCalls, reconcileCalls)
	}
	if n := len(r.commandsTo(r.lease(2).Holder)); n != 1 {
		t.Errorf("%d filesystem commands, want 1", n)
	}
	t.Logf("first alarm: %v; two alarms while modifying: no mutating call; reconcile: %v (%d repair); volume %d GiB",
		firstCalls, reconcileCalls, repairs, r.volumeSize(2))
}

// Repeated alarms for one breach grow once, even when the repeat comes after the
// growth finished (a redelivery); a new breach after the growth grows again.
func TestRepeatedAlarmAfterGrowthIsStale(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	r.launchAll(r.run(0))
	breach := time.Now().Add(-time.Minute)
	payload := r.alarmAction(0, 85, breach)
	if res := r.mustDeliver(payload); res.Outcome != grow.OutcomeGrown || res.ToGiB != 142 {
		t.Fatalf("first delivery: %+v", res)
	}
	h.ResetCounts()
	stale := r.mustDeliver(payload)
	if stale.Outcome != grow.OutcomeStale || len(h.MutatingCalls()) != 0 {
		t.Fatalf("redelivery: %+v, mutating calls %v; want stale and none", stale, h.MutatingCalls())
	}
	res := r.mustDeliver(r.alarmAction(0, 85, time.Now().Add(2*time.Minute))) // a breach detected after the growth

	if res.Outcome != grow.OutcomeGrown || res.FromGiB != 142 || res.ToGiB != 202 {
		t.Fatalf("new breach at 85%% of 142 GiB: %+v, want grown to 202 GiB", res)
	}
	if g := r.growth(0); len(g.History) != 2 {
		t.Fatalf("history %+v, want two growths", g.History)
	}
	t.Logf("redelivery: %s (%s), no mutating call; new breach: %d -> %d GiB", stale.Outcome, stale.Reason, res.FromGiB, res.ToGiB)
}

// Must show 3: at the max size, no ModifyVolume; the GrowthAtMax metric, an error log
// and an SNS notification instead.
func TestAtMaxSizeAlertsInsteadOfGrowing(t *testing.T) {
	h := harness.Start(t)
	topic, err := sns.NewFromConfig(h.DirectConfig()).CreateTopic(context.Background(), &sns.CreateTopicInput{Name: aws.String("slotkeeper-alerts")})
	if err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(topic.TopicArn)
	r := newGrowRig(t, h, 3, map[string]string{"GROW_MAX_SIZE_GIB": "100", "ALERT_TOPIC_ARN": arn})
	r.launchAll(r.run(1))
	h.ResetCounts()

	res := r.mustDeliver(r.alarmAction(1, 91, time.Now().Add(-time.Minute)))

	if res.Outcome != grow.OutcomeAtMax || res.ToGiB != 100 {
		t.Fatalf("result %+v, want at-max at 100 GiB", res)
	}
	if n := h.Calls("ModifyVolume"); n != 0 || r.volumeSize(1) != 100 {
		t.Fatalf("%d ModifyVolume calls, volume %d GiB; want none, 100", n, r.volumeSize(1))
	}
	if calls := h.MutatingCalls(); len(calls) != 0 {
		t.Errorf("mutating calls %v, want none", calls)
	}
	if got := r.emf(grow.MetricGrowthAtMax); !slices.Equal(got, []float64{1}) {
		t.Errorf("GrowthAtMax metric %v, want [1]; metrics:\n%s", got, r.growMetrics.String())
	}
	if !strings.Contains(r.growLogs.String(), `"level":"ERROR","message":"ALERT: slot 1 disk at max size"`) {
		t.Errorf("no error log for the max size")
	}
	sent := snsPublished(t, h, arn)
	if len(sent) != 1 || !strings.Contains(sent[0][0], "disk at max size") || !strings.Contains(sent[0][1], "slot 1") ||
		!strings.Contains(sent[0][1], "91.0% used") || h.Calls("Publish") != 1 {
		t.Fatalf("SNS notifications on %s: %q (%d Publish calls), want one about slot 1 at 91%%", arn, sent, h.Calls("Publish"))
	}
	if g := r.growth(1); len(g.History) != 0 || g.Pending != nil {
		t.Errorf("growth state %+v, want none", g)
	}
	t.Logf("at max: outcome %s, 0 ModifyVolume, GrowthAtMax %v, SNS %q", res.Outcome, r.emf(grow.MetricGrowthAtMax), sent[0][0])
}

// Must show 4: ModifyVolume refused for now (EC2's rate limit, a modification in
// progress, throttling past the SDK's retries): no crash, the growth recorded as
// pending on the slot, and finished by a later reconcile (grow.Handler.Reconcile,
// which the reconcile function calls on every run; here it is called directly).
func TestRefusedGrowthIsFinishedByReconcile(t *testing.T) {
	h := harness.Start(t)
	tests := []struct {
		name, code string // code "" is the harness's default EC2 throttling code
		wantCode   string
	}{
		{"rate limit", "VolumeModificationRateExceeded", "VolumeModificationRateExceeded"},
		{"modification in progress", "IncorrectModificationState", "IncorrectModificationState"},
		{"throttled past the SDK's retries", "", "RequestLimitExceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newGrowRig(t, h, 3, nil)
			r.launchAll(r.run(0))
			h.ResetCounts()
			h.Inject(harness.Fault{Action: "ModifyVolume", Kind: harness.Throttle, Code: tt.code})
			t.Cleanup(h.ClearFaults)

			res, err := r.deliver(r.alarmAction(0, 85, time.Now().Add(-time.Minute)))
			if err != nil || res.Outcome != grow.OutcomePending || res.ToGiB != 142 {
				t.Fatalf("alarm: %+v, %v; want a pending growth to 142 GiB and no error", res, err)
			}
			attempts := h.Calls("ModifyVolume")
			p := r.growth(0).Pending
			if p == nil || p.ToGiB != 142 || p.FromGiB != 100 || p.UsedPercent != 85 || p.Attempts != 1 ||
				!strings.Contains(p.LastError, tt.wantCode) || p.VolumeID != r.lease(0).VolumeID || p.Since == "" {
				t.Fatalf("pending growth %+v, want 100 -> 142 GiB after one attempt failing with %s", p, tt.wantCode)
			}
			if r.volumeSize(0) != 100 || len(r.commandsTo(r.lease(0).Holder)) != 0 {
				t.Fatalf("volume %d GiB and filesystem commands sent while EC2 refused", r.volumeSize(0))
			}
			if got := r.emf(grow.MetricGrowthPending); !slices.Equal(got, []float64{1}) {
				t.Errorf("GrowthPending metric %v, want [1]", got)
			}

			// A reconcile while EC2 still refuses keeps it pending and counts the attempt.
			if n, err := r.reconcileGrowth(); n != 0 || err != nil {
				t.Fatalf("reconcile while refused: %d repairs, %v; want 0, nil", n, err)
			}
			if p := r.growth(0).Pending; p == nil || p.Attempts != 2 {
				t.Fatalf("pending growth after a refused retry: %+v, want 2 attempts", p)
			}

			h.ClearFaults()
			h.ResetCounts()
			repairs, err := r.reconcileGrowth() // the later reconcile
			if err != nil || repairs != 1 {
				t.Fatalf("reconcile: %d repairs, %v; want 1", repairs, err)
			}
			g := r.growth(0)
			if g.Pending != nil || len(g.History) != 1 || g.History[0].ToGiB != 142 || !strings.HasPrefix(g.History[0].Actor, "grow-retry") {
				t.Fatalf("growth state after reconcile %+v, want the growth recorded and nothing pending", g)
			}
			if r.volumeSize(0) != 142 || h.Calls("ModifyVolume") != 1 || len(r.commandsTo(r.lease(0).Holder)) != 1 {
				t.Fatalf("after reconcile: volume %d GiB, %d ModifyVolume", r.volumeSize(0), h.Calls("ModifyVolume"))
			}
			if n, err := r.reconcileGrowth(); n != 0 || err != nil {
				t.Errorf("a further reconcile: %d repairs, %v; want nothing to do", n, err)
			}
			t.Logf("%s: %d refused ModifyVolume attempts (SDK retries included) -> pending %q; reconcile: 1 ModifyVolume, volume %d GiB",
				tt.name, attempts, tt.wantCode, r.volumeSize(0))
		})
	}
}

// A crash right after ModifyVolume took effect loses nothing: the growth was written
// ahead as pending, and the redelivered alarm grows the filesystem without a second
// ModifyVolume.
func TestCrashAfterModifyVolume(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	r.launchAll(r.run(1))
	h.ResetCounts()
	h.Inject(harness.Fault{Action: "ModifyVolume", Kind: harness.Crash, Times: 1})
	payload := r.alarmAction(1, 85, time.Now().Add(-time.Minute))

	res := r.mustDeliver(payload)
	if res.Outcome != grow.OutcomePending || r.volumeSize(1) != 142 {
		t.Fatalf("crashed attempt: %+v, volume %d GiB; want pending, with the modification made at moto", res, r.volumeSize(1))
	}
	res = r.mustDeliver(payload) // the redelivery
	if res.Outcome != grow.OutcomeFilesystem || !res.PendingCleared {
		t.Fatalf("redelivery: %+v, want the filesystem step only", res)
	}
	if n := h.Calls("ModifyVolume"); n != 1 {
		t.Fatalf("%d ModifyVolume calls, want 1", n)
	}
	if g := r.growth(1); len(g.History) != 1 || g.History[0].FromGiB != 100 || g.History[0].ToGiB != 142 || g.Pending != nil {
		t.Fatalf("growth state %+v", g)
	}
}

// A failed filesystem command leaves the growth pending; the reconciler runs it again.
func TestFilesystemFailureStaysPending(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	var failing atomic.Bool
	h.Override(harness.Override{Action: "GetCommandInvocation", Rewrite: func(_, b []byte) []byte {
		if !failing.Load() {
			return b
		}
		b = bytes.ReplaceAll(b, []byte(`"Status": "Success"`), []byte(`"Status": "Failed"`))
		return bytes.ReplaceAll(b, []byte(`"ResponseCode": 0`), []byte(`"ResponseCode": 1`))
	}})
	r.launchAll(r.run(0))
	failing.Store(true)

	res := r.mustDeliver(r.alarmAction(0, 85, time.Now().Add(-time.Minute)))
	if res.Outcome != grow.OutcomePending || r.volumeSize(0) != 142 {
		t.Fatalf("alarm with a failing filesystem command: %+v", res)
	}
	p := r.growth(0).Pending
	if p == nil || p.ToGiB != 142 || !strings.Contains(p.LastError, "status Failed") {
		t.Fatalf("pending growth %+v, want the failed command recorded", p)
	}
	if got := r.emf(grow.MetricFilesystemFailures); !slices.Equal(got, []float64{1}) {
		t.Errorf("FilesystemFailures metric %v, want [1]", got)
	}
	failing.Store(false)
	h.ResetCounts()
	if n, err := r.reconcileGrowth(); n != 1 || err != nil {
		t.Fatalf("reconcile: %d, %v", n, err)
	}
	if h.Calls("ModifyVolume") != 0 || len(r.growth(0).History) != 1 || len(r.commandsTo(r.lease(0).Holder)) != 2 {
		t.Fatalf("reconcile made %d ModifyVolume calls, history %+v", h.Calls("ModifyVolume"), r.growth(0).History)
	}
}

// Must show 5: an alarm for an unknown slot or another cluster, another state, another
// event, or a malformed payload changes nothing.
func TestForeignAlarmsMutateNothing(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	r.launchAll(r.run(0), r.run(1))
	at := time.Now().Add(-time.Minute)
	good := r.alarmAction(0, 85, at)
	edit := func(f func(m, d map[string]any)) []byte {
		return r.event("alarm-action.json", func(m map[string]any) {
			d := m["alarmData"].(map[string]any)
			r.alarmEdit(0, 85, at, r.lease(0).Holder)(d)
			f(m, d)
		})
	}
	tests := []struct {
		name     string
		payload  []byte
		wantErr  bool
		noCalls  bool // rejected before any AWS call
		wantLog  string
		wantSlot int
	}{
		{"slot beyond the count", edit(func(_, d map[string]any) { d["alarmName"] = grow.AlarmName(r.cfg.Cluster, 3) }), false, true, "is not the disk alarm", -1},
		{"slot 700", edit(func(_, d map[string]any) { d["alarmName"] = grow.AlarmName(r.cfg.Cluster, 700) }), false, true, "is not the disk alarm", -1},
		{"another cluster", edit(func(_, d map[string]any) { d["alarmName"] = grow.AlarmName(r.cfg.Cluster+"x", 0) }), false, true, "is not the disk alarm", -1},
		{"the sample's cluster", r.event("alarm-action.json", nil), false, true, "is not the disk alarm", -1},
		{"another alarm of ours", edit(func(_, d map[string]any) { d["alarmName"] = "slotkeeper-" + r.cfg.Cluster + "-cpu-0" }), false, true, "is not the disk alarm", -1},
		{"back to OK", edit(func(_, d map[string]any) { d["state"].(map[string]any)["value"] = grow.StateOK }), false, true, "only ALARM", -1},
		{"insufficient data", edit(func(_, d map[string]any) { d["state"].(map[string]any)["value"] = grow.StateInsufficientData }), false, true, "only ALARM", -1},
		{"OK sample", r.event("alarm-action-ok.json", nil), false, true, "ignoring alarm", -1},
		{"instance state change", r.event("state-change-running.json", nil), false, true, "ignoring event", -1},
		{"scheduled event", r.event("schedule.json", nil), false, true, "ignoring event", -1},
		{"launch lifecycle action", r.event("launch-lifecycle.json", nil), false, true, "ignoring event", -1},
		{"a slot never claimed", edit(func(_, d map[string]any) { d["alarmName"] = grow.AlarmName(r.cfg.Cluster, 2) }), false, false, "is free", 2},
		{"not JSON", []byte("disk full on broker 0"), true, true, "rejecting", -1},
		{"truncated", good[:len(good)/2], true, true, "rejecting", -1},
		{"no alarm name", edit(func(_, d map[string]any) { delete(d, "alarmName") }), true, true, "rejecting", -1},
		{"no state", edit(func(_, d map[string]any) { delete(d, "state") }), true, true, "rejecting", -1},
		{"unreadable timestamp", edit(func(m, d map[string]any) { d["state"].(map[string]any)["timestamp"] = "now"; m["time"] = "now" }), true, true, "rejecting", -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.ResetCounts()
			before := len(r.growLogs.String())
			res, err := r.deliver(tt.payload)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error %v", err, tt.wantErr)
			}
			if err == nil && res.Slot != tt.wantSlot {
				t.Errorf("result %+v, want slot %d", res, tt.wantSlot)
			}
			if calls := h.MutatingCalls(); len(calls) != 0 {
				t.Errorf("mutating calls %v, want none", calls)
			}
			if n := sum(h.CallCounts()); tt.noCalls && n != 0 {
				t.Errorf("%d AWS calls %v, want none", n, h.CallCounts())
			}
			if logged := r.growLogs.String()[before:]; !strings.Contains(logged, tt.wantLog) {
				t.Errorf("log %q lacks %q", logged, tt.wantLog)
			}
		})
	}
	if r.volumeSize(0) != 100 || len(r.growth(0).History) != 0 {
		t.Fatalf("slot 0 changed: %d GiB", r.volumeSize(0))
	}
}

// Must show 6: after a replacement launch, the slot's disk alarm watches the new
// instance; a redelivered launch leaves the alarm alone, and so does a cluster with
// no grow function.
func TestAlarmFollowsTheHolder(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	ids := []string{r.run(0), r.run(1), r.run(2)}
	r.launchAll(ids...)
	check := func(slot int, instance string) {
		t.Helper()
		a := r.alarm(slot)
		if a == nil {
			t.Fatalf("slot %d has no disk alarm", slot)
		}
		dims := map[string]string{}
		for _, d := range a.Dimensions {
			dims[aws.ToString(d.Name)] = aws.ToString(d.Value)
		}
		if dims["InstanceId"] != instance || dims["path"] != growDataMount || len(dims) != 2 ||
			aws.ToString(a.Namespace) != "CWAgent" || aws.ToString(a.MetricName) != "disk_used_percent" ||
			aws.ToFloat64(a.Threshold) != 80 || a.ComparisonOperator != cwtypes.ComparisonOperatorGreaterThanOrEqualToThreshold ||
			!slices.Equal(a.AlarmActions, []string{growFunctionARN}) || len(a.OKActions) != 0 ||
			aws.ToString(a.TreatMissingData) != "notBreaching" {
			t.Fatalf("slot %d alarm: dimensions %v, %+v; want it on %s at %s", slot, dims, a, instance, growDataMount)
		}
	}
	for i, id := range ids {
		check(i, id)
	}
	if n := h.Calls("PutMetricAlarm"); n != 3 {
		t.Errorf("%d PutMetricAlarm calls for three launches, want 3", n)
	}

	h.TerminateInstance(t, ids[1])
	replacement := r.run(1)
	h.ResetCounts()
	r.launchAll(replacement)
	if l := r.lease(1); l.Holder != replacement || l.State != lease.Bound {
		t.Fatalf("slot 1 lease %+v, want bound by %s", l, replacement)
	}
	check(1, replacement)
	check(0, ids[0])
	if n := h.Calls("PutMetricAlarm"); n != 1 {
		t.Errorf("%d PutMetricAlarm calls for the replacement, want 1", n)
	}

	h.ResetCounts()
	r.launchAll(replacement) // a redelivered launch event
	if n := h.Calls("PutMetricAlarm"); n != 0 {
		t.Errorf("redelivered launch rewrote the alarm (%d PutMetricAlarm)", n)
	}
	check(1, replacement)

	// The reconcile repair points a drifted alarm back at the holder.
	drift := grow.AlarmInput(r.cfg, 2, "i-0123456789abcdef0")
	if _, err := r.cw.PutMetricAlarm(context.Background(), drift); err != nil {
		t.Fatal(err)
	}
	leases, err := r.store.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.alarms.Reconcile(context.Background(), leases); n != 1 || err != nil {
		t.Fatalf("alarm reconcile: %d repairs, %v; want 1", n, err)
	}
	check(2, ids[2])
	if n, err := r.alarms.Reconcile(context.Background(), leases); n != 0 || err != nil {
		t.Fatalf("second alarm reconcile: %d repairs, %v; want 0", n, err)
	}

	// Without a grow function there are no alarms, and no CloudWatch calls.
	off := newGrowRig(t, h, 3, map[string]string{"GROW_FUNCTION_ARN": ""})
	h.ResetCounts()
	off.launchAll(off.run(0))
	if n := h.Calls("PutMetricAlarm") + h.Calls("DescribeAlarms"); n != 0 {
		t.Errorf("%d CloudWatch calls with no grow function, want none", n)
	}
	out, err := r.cw.DescribeAlarms(context.Background(), &cloudwatch.DescribeAlarmsInput{AlarmNamePrefix: aws.String("slotkeeper-" + off.cfg.Cluster + "-")})
	if err != nil || len(out.MetricAlarms) != 0 {
		t.Errorf("alarms of a cluster with no grow function: %v, %v", out, err)
	}
	t.Logf("slot 1 alarm moved from %s to %s with 1 PutMetricAlarm; redelivery: 0", ids[1], replacement)
}

// The growth state on the lease item: conditioned writes, idempotent records, a capped
// history.
func TestGrowthStore(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	r.launchAll(r.run(0))
	ctx := context.Background()
	st := r.store
	vol := r.lease(0).VolumeID

	if _, err := st.SetPendingGrowth(ctx, 2, lease.PendingGrowth{VolumeID: "vol-x", ToGiB: 10}); !errors.Is(err, lease.ErrFenced) {
		t.Fatalf("pending growth on a never-claimed slot: %v, want ErrFenced", err)
	}
	if l := r.lease(2); l.Exists() {
		t.Fatalf("a pending growth created the item of a never-claimed slot: %+v", l)
	}
	p, err := st.SetPendingGrowth(ctx, 0, lease.PendingGrowth{VolumeID: vol, FromGiB: 100, ToGiB: 150})
	if err != nil || p.Since == "" || p.UpdatedAt == "" {
		t.Fatalf("SetPendingGrowth: %+v, %v", p, err)
	}
	if all, err := st.PendingGrowths(ctx); err != nil || len(all) != 1 || all[0].ToGiB != 150 {
		t.Fatalf("PendingGrowths: %v, %v", all, err)
	}
	// A growth that does not reach the pending size leaves it pending.
	if cleared, err := st.RecordGrowth(ctx, 0, lease.GrowthRecord{VolumeID: vol, FromGiB: 100, ToGiB: 120, Reason: "r"}); cleared || err != nil {
		t.Fatalf("RecordGrowth(120): cleared %v, %v", cleared, err)
	}
	// The same growth again writes nothing.
	if cleared, err := st.RecordGrowth(ctx, 0, lease.GrowthRecord{VolumeID: vol, FromGiB: 100, ToGiB: 120, Reason: "r"}); cleared || err != nil || len(r.growth(0).History) != 1 {
		t.Fatalf("repeated RecordGrowth: cleared %v, %v, history %v", cleared, err, r.growth(0).History)
	}
	if cleared, err := st.RecordGrowth(ctx, 0, lease.GrowthRecord{VolumeID: vol, FromGiB: 120, ToGiB: 150, Reason: "r"}); !cleared || err != nil {
		t.Fatalf("RecordGrowth(150): cleared %v, %v; want the pending growth cleared", cleared, err)
	}
	if err := st.ClearPendingGrowth(ctx, 0, p); !errors.Is(err, lease.ErrFenced) {
		t.Errorf("clearing a pending growth that is gone: %v, want ErrFenced", err)
	}
	// Concurrent records (duplicate deliveries and a reconcile run) all land.
	errs := make(chan error, 3)
	for i := range 3 {
		go func() {
			_, err := st.RecordGrowth(ctx, 0, lease.GrowthRecord{VolumeID: vol, FromGiB: int32(200 + i), ToGiB: int32(201 + i), Reason: "concurrent"})
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent RecordGrowth: %v", err)
		}
	}
	if g := r.growth(0); len(g.History) != 5 || g.Seq != 5 {
		t.Fatalf("after 3 concurrent records: %d entries, seq %d; want 5, 5", len(g.History), g.Seq)
	}
	// The history keeps the newest GrowthHistoryLimit entries.
	for i := range 25 {
		if _, err := st.RecordGrowth(ctx, 0, lease.GrowthRecord{VolumeID: vol, FromGiB: int32(300 + i), ToGiB: int32(301 + i), Reason: "many"}); err != nil {
			t.Fatal(err)
		}
	}
	g := r.growth(0)
	if len(g.History) != lease.GrowthHistoryLimit || g.Seq != 30 || g.History[len(g.History)-1].ToGiB != 325 {
		t.Fatalf("history of %d entries (last %+v), seq %d; want %d entries ending at 325 GiB, seq 30",
			len(g.History), g.History[len(g.History)-1], g.Seq, lease.GrowthHistoryLimit)
	}
	// The lease itself is untouched by growth bookkeeping.
	if l := r.lease(0); l.State != lease.Bound || l.Version != 1 {
		t.Errorf("lease after growth writes: %+v", l)
	}
	t.Logf("3 concurrent records all landed; 30 records kept as the newest %d", len(g.History))
}
