package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// setAlarm sets slot's disk alarm to state at moto, as CloudWatch's evaluation would
// (moto does not evaluate alarms).
func (r *growRig) setAlarm(slot int, state cwtypes.StateValue) {
	r.t.Helper()
	_, err := r.cw.SetAlarmState(context.Background(), &cloudwatch.SetAlarmStateInput{
		AlarmName: aws.String(grow.AlarmName(r.cfg.Cluster, slot)), StateValue: state,
		StateReason: aws.String("test: the disk stays full"),
	})
	if err != nil {
		r.t.Fatal(err)
	}
}

// putDiskUse publishes a disk_used_percent datapoint of the data mount of instance at
// `at`, as the CloudWatch agent does.
func (r *growRig) putDiskUse(instance string, used float64, at time.Time) {
	r.t.Helper()
	_, err := r.cw.PutMetricData(context.Background(), &cloudwatch.PutMetricDataInput{
		Namespace: aws.String(grow.MetricNamespace),
		MetricData: []cwtypes.MetricDatum{{
			MetricName: aws.String(grow.MetricName), Value: aws.Float64(used), Timestamp: aws.Time(at), Unit: cwtypes.StandardUnitPercent,
			Dimensions: []cwtypes.Dimension{
				{Name: aws.String(grow.DimensionInstance), Value: aws.String(instance)},
				{Name: aws.String(grow.DimensionPath), Value: aws.String(r.cfg.Grow.DataMount)},
			},
		}},
	})
	if err != nil {
		r.t.Fatal(err)
	}
}

// clock is a settable clock for the grow handler: real time plus an offset.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time               { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration)      { c.offset.Add(int64(d)) }
func (r *growRig) useClock(c *clock) *growRig { r.grow.Now = c.now; return r }

// Issue 10, Must show 7: two (and four) concurrent deliveries of one alarm make exactly
// one ModifyVolume. Every delivery's first write is held back (harness latency), so all
// of them have read the slot, found no growth recorded and planned the same growth
// before any record lands: the conditional write lets exactly one through, and only
// its writer modifies the volume; the others answer in-flight.
func TestConcurrentAlarmDeliveriesModifyOnce(t *testing.T) {
	h := harness.Start(t)
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprintf("%d deliveries", n), func(t *testing.T) {
			r := newGrowRig(t, h, 3, nil)
			r.launchAll(r.run(0))
			payload := r.alarmAction(0, 85, time.Now().Add(-time.Minute))
			h.ResetCounts()
			h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.Latency, Latency: 400 * time.Millisecond, Times: n})
			t.Cleanup(h.ClearFaults)

			results := make([]grow.Result, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i], errs[i] = r.deliver(payload)
				}()
			}
			wg.Wait()
			outcomes := map[string]int{}
			for i, res := range results {
				if errs[i] != nil {
					t.Fatalf("delivery %d: %v", i, errs[i])
				}
				outcomes[res.Outcome]++
			}
			if got := h.Calls("ModifyVolume"); got != 1 {
				t.Fatalf("%d ModifyVolume calls for %d concurrent deliveries of one alarm (outcomes %v), want exactly 1", got, n, outcomes)
			}
			if outcomes[grow.OutcomeGrown] != 1 || outcomes[grow.OutcomeInFlight] != n-1 {
				t.Errorf("outcomes %v, want 1 grown and %d in-flight", outcomes, n-1)
			}
			if got := strings.Count(r.growLogs.String(), "another invocation recorded a growth of the slot first"); got != n-1 {
				t.Errorf("%d deliveries lost the conditional write, want %d (the race was not forced)", got, n-1)
			}
			if s := r.volumeSize(0); s != 142 {
				t.Errorf("volume %d GiB, want 142", s)
			}
			if g := r.growth(0); len(g.History) != 1 || g.Pending != nil {
				t.Errorf("growth state %+v, want one growth and nothing pending", g)
			}
			if got := h.Calls("SendCommand"); got != 1 {
				t.Errorf("%d filesystem commands, want 1", got)
			}
			t.Logf("%d concurrent deliveries: outcomes %v, %d ModifyVolume, %d conditional pending writes refused", n, outcomes, h.Calls("ModifyVolume"), n-1)
		})
	}
}

// The pending growth's conditional write whose response is lost (the write took
// effect, the SDK retries it, the retry fails its own condition) is recognised as the
// invocation's own, by its token: the growth goes on, with one ModifyVolume.
func TestPendingWriteWithLostResponseGoesOn(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	r.launchAll(r.run(0))
	h.ResetCounts()
	// The first UpdateItem takes effect and is answered with throttling, which the
	// SDK retries.
	h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.Crash, Code: "ThrottlingException", Times: 1})
	t.Cleanup(h.ClearFaults)
	res := r.mustDeliver(r.alarmAction(0, 85, time.Now().Add(-time.Minute)))
	if res.Outcome != grow.OutcomeGrown || h.Calls("ModifyVolume") != 1 || r.volumeSize(0) != 142 {
		t.Fatalf("result %+v with %d ModifyVolume, volume %d GiB; want grown to 142 with one", res, h.Calls("ModifyVolume"), r.volumeSize(0))
	}
	if n := h.Calls("UpdateItem"); n != 3 {
		t.Errorf("%d UpdateItem calls, want 3 (the pending write, its retry refused by its own condition, the history)", n)
	}
	t.Logf("lost response on the pending write: %s with %d ModifyVolume, %d UpdateItem", res.Outcome, h.Calls("ModifyVolume"), h.Calls("UpdateItem"))
}

// Must show 5: an alarm named like ours whose dimensions do not name the slot's holder
// and the data mount changes nothing: no mutating call, a log line.
func TestAlarmNotOnTheHolderMutatesNothing(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	old := r.run(0)
	r.launchAll(old)
	h.TerminateInstance(t, old)
	if _, err := r.runReconcile(r.reconciler(), r.terminatedEvent(old)); err != nil {
		t.Fatal(err)
	}
	holder := r.run(0)
	r.launchAll(holder) // slot 0's holder is now `holder`; `old` held it before
	stranger := r.run(1)
	at := time.Now().Add(-time.Minute)
	alarm := func(instance, path string) []byte {
		return r.event("alarm-action.json", func(m map[string]any) {
			d := m["alarmData"].(map[string]any)
			r.alarmEdit(0, 95, at, instance)(d)
			dims := d["configuration"].(map[string]any)["metrics"].([]any)[0].(map[string]any)["metricStat"].(map[string]any)["metric"].(map[string]any)["dimensions"].(map[string]any)
			if path == "" {
				delete(dims, "path")
			} else {
				dims["path"] = path
			}
		})
	}
	tests := []struct {
		name, instance, path, wantLog string
	}{
		{"another running instance", stranger, growDataMount, "the alarm watches instance \\\"" + stranger + "\\\", but slot 0 is held by " + holder},
		{"the slot's previous holder", old, growDataMount, "but slot 0 is held by " + holder},
		{"an instance EC2 never knew", "i-0123456789abcdef0", growDataMount, "but slot 0 is held by " + holder},
		{"no instance", "", growDataMount, "but slot 0 is held by " + holder},
		{"the root filesystem", holder, "/", `watches path \"/\", not the data mount ` + growDataMount},
		{"no path", holder, "", `watches path \"\", not the data mount`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.ResetCounts()
			before := len(r.growLogs.String())
			res := r.mustDeliver(alarm(tt.instance, tt.path))
			if res.Outcome != grow.OutcomeIgnored {
				t.Errorf("result %+v, want ignored", res)
			}
			if calls := h.MutatingCalls(); len(calls) != 0 {
				t.Errorf("mutating calls %v, want none", calls)
			}
			if logged := r.growLogs.String()[before:]; !strings.Contains(logged, tt.wantLog) {
				t.Errorf("log %s lacks %q", logged, tt.wantLog)
			}
			t.Logf("%s: %s, %d AWS calls (%v), 0 mutating", tt.name, res.Outcome, sum(h.CallCounts()), h.CallCounts())
		})
	}
	if s := r.volumeSize(0); s != 100 || len(r.growth(0).History) != 0 {
		t.Fatalf("slot 0's volume is %d GiB with history %v, want untouched", s, r.growth(0).History)
	}
	// The same alarm on the holder and the mount grows the volume.
	if res := r.mustDeliver(alarm(holder, growDataMount)); res.Outcome != grow.OutcomeGrown {
		t.Fatalf("the alarm on the holder: %+v, want grown", res)
	}
}

// Must show 4: a disk still at 85 % after a growth to 142 GiB (the alarm stays in
// ALARM, so no new alarm action comes) is grown again by the reconciler once the first
// modification is completed, not while it is optimizing; growths go on while the disk
// stays full, and a fifth growth within 24 hours waits (EBS: four modifications in a
// rolling 24 hours) until the 24 hours have passed.
func TestStillFullDiskGrowsAgain(t *testing.T) {
	h := harness.Start(t)
	var optimizing atomic.Bool
	h.Override(harness.Override{Action: "DescribeVolumesModifications", Rewrite: func(_, b []byte) []byte {
		if !optimizing.Load() {
			return b
		}
		return bytes.ReplaceAll(b, []byte("<modificationState>completed<"), []byte("<modificationState>optimizing<"))
	}})
	r := newGrowRig(t, h, 3, nil)
	clk := &clock{}
	r.useClock(clk)
	r.launchAll(r.run(0))
	holder := r.lease(0).Holder

	// The alarm fires; the growth to 142 GiB is applied and stays optimizing (EBS
	// optimizes for hours); the filesystem grows (it can from optimizing on).
	optimizing.Store(true)
	if res := r.mustDeliver(r.alarmAction(0, 85, time.Now().Add(-time.Minute))); res.Outcome != grow.OutcomeGrown || res.ToGiB != 142 {
		t.Fatalf("alarm: %+v, want grown to 142 GiB", res)
	}
	// The disk is still 85 % full: the alarm stays in ALARM and the agent says so.
	r.setAlarm(0, cwtypes.StateValueAlarm)
	stillFull := func() {
		clk.advance(3 * time.Minute)
		r.putDiskUse(holder, 85, clk.now().Add(-30*time.Second))
	}
	reconcile := func() (int, []string) {
		t.Helper()
		h.ResetCounts()
		n, err := r.reconcileGrowth()
		if err != nil {
			t.Fatalf("reconcile: %v", err)
		}
		return n, mutating(h)
	}

	stillFull()
	if n, calls := reconcile(); countAction(calls, "ModifyVolume") != 0 || n != 0 {
		t.Fatalf("reconcile while the first modification is optimizing: %d growths, calls %v; want none", n, calls)
	}
	if !strings.Contains(r.growLogs.String(), "is optimizing: the next one waits until it is completed") {
		t.Errorf("no log line says the growth waits for the modification to complete")
	}

	optimizing.Store(false) // EBS finished optimizing: the modification is completed
	sizes := []int32{202, 287, 407}
	for i, want := range sizes {
		n, calls := reconcile()
		if countAction(calls, "ModifyVolume") != 1 || n != 1 || r.volumeSize(0) != want {
			t.Fatalf("growth %d: %d started, calls %v, volume %d GiB; want one ModifyVolume to %d GiB", i+2, n, calls, r.volumeSize(0), want)
		}
		stillFull()
	}
	g := r.growth(0)
	if len(g.History) != 4 || g.History[1].FromGiB != 142 || g.History[1].ToGiB != 202 || g.History[1].UsedPercent != 85 ||
		!strings.HasPrefix(g.History[1].Actor, "grow-full") || g.History[1].ModifiedAt == "" {
		t.Fatalf("history %+v, want 4 growths, the second 142 -> 202 GiB by the reconciler at 85%%", g.History)
	}

	// A fifth growth within 24 hours waits: recorded as pending with its start time,
	// and no ModifyVolume.
	n, calls := reconcile()
	p := r.growth(0).Pending
	if countAction(calls, "ModifyVolume") != 0 || p == nil || p.ToGiB != 577 || p.NotBefore == "" {
		t.Fatalf("fifth growth: %d started, calls %v, pending %+v; want it pending to 577 GiB with a not_before time", n, calls, p)
	}
	first, _ := time.Parse(time.RFC3339Nano, g.History[0].ModifiedAt)
	notBefore, _ := time.Parse(time.RFC3339Nano, p.NotBefore)
	if !notBefore.Equal(first.Add(24 * time.Hour)) {
		t.Errorf("not_before %s, want the first modification's start + 24 h (%s)", p.NotBefore, first.Add(24*time.Hour))
	}
	stillFull()
	if _, calls := reconcile(); len(calls) != 0 {
		t.Fatalf("reconcile while the growth waits: mutating calls %v, want none", calls)
	}

	// A day later the waiting growth starts.
	clk.advance(24 * time.Hour)
	n, calls = reconcile()
	if countAction(calls, "ModifyVolume") != 1 || r.volumeSize(0) != 577 || r.growth(0).Pending != nil || n != 1 {
		t.Fatalf("after 24 h: %d repaired, calls %v, volume %d GiB, pending %+v; want the growth to 577 GiB done", n, calls, r.volumeSize(0), r.growth(0).Pending)
	}
	t.Logf("100 -> 142 (alarm, optimizing: reconcile waits) -> 202 -> 287 -> 407 (reconcile, alarm still in ALARM) -> 5th waits until %s -> 577 GiB a day later", p.NotBefore)
}

// A growth capped at the volume type's maximum alerts as one at the configured maximum.
// The slot's volume is a gp2 (EBS: 16 TiB at most), made when the cluster was
// configured so; the configuration has since moved to gp3 with a 64 TiB cap, which the
// existing volume cannot reach: a growth stops at 16384 GiB, and a breach at 16384 GiB
// alerts instead of asking EC2 for a size it refuses for good.
func TestGrowthCappedAtTheTypesMaximum(t *testing.T) {
	h := harness.Start(t)
	topic, err := sns.NewFromConfig(h.DirectConfig()).CreateTopic(context.Background(), &sns.CreateTopicInput{Name: aws.String("slotkeeper-type-alerts")})
	if err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(topic.TopicArn)
	for _, tt := range []struct {
		name         string
		size         int32
		wantOutcome  string
		wantSize     int32
		wantModifies int
	}{
		{"capped growth", 15000, grow.OutcomeGrown, 16384, 1},
		{"at the type's maximum", 16384, grow.OutcomeAtMax, 16384, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The launch creates and records the slot's gp2 volume.
			r := newGrowRig(t, h, 3, map[string]string{"VOLUME_TYPE": "gp2", "VOLUME_SIZE_GIB": fmt.Sprint(tt.size), "ALERT_TOPIC_ARN": arn})
			r.launchAll(r.run(0))
			if out, err := r.ec2.DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{VolumeIds: []string{r.lease(0).VolumeID}}); err != nil ||
				out.Volumes[0].VolumeType != ec2types.VolumeTypeGp2 || aws.ToInt32(out.Volumes[0].Size) != tt.size {
				t.Fatalf("slot 0's volume: %+v, %v; want a gp2 of %d GiB", out, err, tt.size)
			}
			// Today's configuration: gp3 volumes, grown up to 64 TiB.
			cfg := r.cfg
			cfg.Volume.Type, cfg.Grow.MaxSizeGiB = "gp3", 65536
			awsCfg := h.AWSConfig()
			r.grow = grow.New(cfg, ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg), ssm.NewFromConfig(awsCfg),
				sns.NewFromConfig(awsCfg), awsapi.NewCloudWatch(awsCfg), obs.NewLogger(r.growLogs, slog.LevelDebug), r.growMetrics)
			r.grow.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond, Timeout: time.Second}
			r.grow.Remote.Poll, r.grow.Remote.Timeout = 20*time.Millisecond, 10*time.Second
			before := len(snsPublished(t, h, arn))
			h.ResetCounts()
			res := r.mustDeliver(r.alarmAction(0, 85, time.Now().Add(-time.Minute)))
			if res.Outcome != tt.wantOutcome || r.volumeSize(0) != tt.wantSize || h.Calls("ModifyVolume") != tt.wantModifies {
				t.Fatalf("result %+v, volume %d GiB, %d ModifyVolume; want %s at %d GiB with %d", res, r.volumeSize(0), h.Calls("ModifyVolume"),
					tt.wantOutcome, tt.wantSize, tt.wantModifies)
			}
			logs := r.growLogs.String()
			switch tt.wantOutcome {
			case grow.OutcomeGrown:
				if !strings.Contains(logs, `"message":"growth capped"`) || !strings.Contains(logs, "the largest gp2 volume EBS allows (16384 GiB)") {
					t.Errorf("no warning that the growth was capped at the type's maximum")
				}
			case grow.OutcomeAtMax:
				sent := snsPublished(t, h, arn)[before:]
				if len(sent) != 1 || !strings.Contains(sent[0][0], "disk at max size") || !strings.Contains(sent[0][1], "the largest gp2 volume EBS allows (16384 GiB)") {
					t.Fatalf("alerts %q, want one naming the gp2 maximum", sent)
				}
				if got := r.emf(grow.MetricGrowthAtMax); !slices.Equal(got, []float64{1}) {
					t.Errorf("GrowthAtMax %v, want [1]", got)
				}
			}
			t.Logf("%s: %s, volume %d GiB, %d ModifyVolume", tt.name, res.Outcome, r.volumeSize(0), h.Calls("ModifyVolume"))
		})
	}
}

// A modification that ends in EBS's "failed" state (a transient fault: the volume keeps
// its size, and AWS says to retry) does not block the disk's growth: the next pass
// that may modify the volume (the rate rules still apply; a failed start counts) modifies
// it again, alerts the operators once, and finishes the pending growth.
func TestFailedModificationIsRetried(t *testing.T) {
	h := harness.Start(t)
	topic, err := sns.NewFromConfig(h.DirectConfig()).CreateTopic(context.Background(), &sns.CreateTopicInput{Name: aws.String("slotkeeper-failed-mod")})
	if err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(topic.TopicArn)
	// The first ModifyVolume fails at EBS: its modification reads "failed" and the
	// volume stays at 100 GiB (moto applies every modification at once).
	var modifies atomic.Int32
	h.Override(harness.Override{Action: "ModifyVolume", Rewrite: func(_, b []byte) []byte { modifies.Add(1); return b }})
	h.Override(harness.Override{Action: "DescribeVolumesModifications", Rewrite: func(_, b []byte) []byte {
		if modifies.Load() != 1 {
			return b
		}
		return bytes.ReplaceAll(b, []byte("<modificationState>completed<"), []byte("<modificationState>failed<"))
	}})
	h.Override(harness.Override{Action: "DescribeVolumes", Rewrite: func(_, b []byte) []byte {
		if modifies.Load() != 1 {
			return b
		}
		return bytes.ReplaceAll(b, []byte("<size>142<"), []byte("<size>100<"))
	}})
	r := newGrowRig(t, h, 3, map[string]string{"ALERT_TOPIC_ARN": arn})
	clk := &clock{}
	r.useClock(clk)
	r.launchAll(r.run(0))

	res := r.mustDeliver(r.alarmAction(0, 85, time.Now().Add(-time.Minute)))
	if res.Outcome != grow.OutcomePending || r.growth(0).Pending == nil || modifies.Load() != 1 {
		t.Fatalf("alarm: %+v, pending %+v, %d ModifyVolume; want the growth pending after the failed modification", res, r.growth(0).Pending, modifies.Load())
	}
	before := len(snsPublished(t, h, arn))
	for i := 0; i < 8 && r.growth(0).Pending != nil; i++ {
		clk.advance(3 * time.Hour)
		if _, err := r.reconcileGrowth(); err != nil {
			t.Logf("reconcile %d: %v", i, err)
		}
	}
	if p := r.growth(0).Pending; p != nil || modifies.Load() != 2 || r.volumeSize(0) != 142 {
		t.Fatalf("after the reconciles: pending %+v, %d ModifyVolume, volume %d GiB; want the failed growth retried once, to 142 GiB", p, modifies.Load(), r.volumeSize(0))
	}
	sent := snsPublished(t, h, arn)[before:]
	if len(sent) != 1 || !strings.Contains(sent[0][0], "disk modification failed") {
		t.Fatalf("alerts %q, want one about the failed modification", sent)
	}
	t.Logf("failed modification retried: 2 ModifyVolume in all, volume 142 GiB, 1 alert %q", sent[0][0])
}

// A delivery that read the slot before another delivery finished a whole growth (its
// pending record written, the volume modified, the growth recorded and the record
// cleared) cannot record a pending growth from that stale read: the first pending
// record is conditioned on growth_seq as read, so the slow delivery's write is refused
// and it never starts a second modification for the same breach. (Under load this
// happened: 3 ModifyVolume for 4 concurrent deliveries of one alarm.)
func TestStalePendingWriteAfterAWholeGrowthIsRefused(t *testing.T) {
	h := harness.Start(t)
	r := newGrowRig(t, h, 3, nil)
	r.launchAll(r.run(0))
	store := lease.NewStore(dynamodb.NewFromConfig(h.AWSConfig()), r.cfg.Table, r.cfg.Cluster)
	ctx := context.Background()
	vol := r.lease(0).VolumeID

	before, err := store.Growth(ctx, 0) // the slow delivery's read
	if err != nil {
		t.Fatal(err)
	}
	// Another delivery does the whole growth meanwhile.
	if res := r.mustDeliver(r.alarmAction(0, 85, time.Now().Add(-time.Minute))); res.Outcome != grow.OutcomeGrown {
		t.Fatalf("the other delivery: %+v, want grown", res)
	}
	after, err := store.Growth(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if after.Pending != nil || after.Seq != before.Seq+1 {
		t.Fatalf("after the growth: pending %+v, growth_seq %d (was %d); want none pending and one more", after.Pending, after.Seq, before.Seq)
	}
	p := lease.PendingGrowth{VolumeID: vol, FromGiB: 100, ToGiB: 142, Token: "slow-delivery", Reason: "from the stale read"}
	if _, err := store.WritePending(ctx, 0, before.Pending, before.Seq, p); !errors.Is(err, lease.ErrFenced) {
		t.Fatalf("the stale pending write: %v, want lease.ErrFenced", err)
	}
	if _, err := store.WritePending(ctx, 0, after.Pending, after.Seq, p); err != nil {
		t.Fatalf("a pending write from a fresh read: %v", err)
	}
	t.Logf("growth_seq %d -> %d: the stale first pending write is refused, a fresh one lands", before.Seq, after.Seq)
}
