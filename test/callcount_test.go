package test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// pathCalls is what one invocation of a path called, in order.
type pathCalls struct {
	Path  string
	Calls []string
}

// writes counts the calls that change something (the emulator's mutating actions).
func (p pathCalls) writes() int {
	n := 0
	for _, c := range p.Calls {
		if isWrite(c) {
			n++
		}
	}
	return n
}

func isWrite(action string) bool {
	for _, prefix := range []string{"Create", "Delete", "Attach", "Detach", "Modify", "Put", "Update", "Complete", "Record", "Send", "Change"} {
		if strings.HasPrefix(action, prefix) {
			return true
		}
	}
	return false
}

// The paths measureCalls walks, in order.
const (
	pathLaunchFirstCold     = "launch, first use, cold start"
	pathLaunchFirst         = "launch, first use"
	pathTerminatePlanned    = "terminate, planned"
	pathLaunchReattach      = "launch, reattach"
	pathTerminateUnplanned  = "terminate, unplanned (unhealthy holder)"
	pathReconcileNothing    = "reconcile, nothing to do"
	pathGrow                = "grow"
	pathLaunchReattachAgain = "launch, reattach after the unplanned termination"
)

// measureCalls walks the life of a 3-slot deployment (one slot per AZ, every function
// wired as in Lambda, the alarm and DNS followers and drainer included) and returns
// the AWS calls of each invocation: three first launches (the first in a cold
// container, which looks the slot subnets up), a planned termination (scale-in of
// slot 1's broker), its replacement reattaching slot 1's ENI and volume, the
// unplanned termination of an unhealthy holder (slot 2), its replacement, the growth
// of slot 0's volume, and a scheduled reconcile with nothing to repair. Each broker's
// first boot removes its volume's never-formatted mark, as the user data does.
func measureCalls(tb testing.TB, h *harness.Harness, cluster string, eni bool) []pathCalls {
	tb.Helper()
	d := newDeployment(tb, h, cluster, deploymentOptions{env: map[string]string{"ENI": fmt.Sprint(eni)}})
	// Heartbeats beyond the first (and the stamp renewals that go with them) come from a
	// timer, not from the path: the terminate keeps the configured interval (60 s), as
	// in Lambda, so that a slow run of this machine does not add one.
	d.terminate.HeartbeatInterval = d.cfg.HeartbeatInterval
	var out []pathCalls
	measure := func(path string, fn func()) {
		h.ResetCounts()
		fn()
		out = append(out, pathCalls{Path: path, Calls: h.Sequence()})
	}
	var ids []string
	for i := range 3 {
		id := d.run(i)
		path := pathLaunchFirst
		if i == 0 {
			path = pathLaunchFirstCold
		}
		measure(path, func() { d.must(d.launch, d.launchEvent(id), launch.OutcomeContinue) })
		d.formatted(i)
		ids = append(ids, id)
	}
	d.join(ids...)
	measure(pathTerminatePlanned, func() { d.must(d.terminate, d.terminateEvent(ids[1]), terminate.OutcomeReleased) })
	h.TerminateInstance(tb, ids[1]) // CONTINUE: the group terminates it
	repl := d.run(1)
	measure(pathLaunchReattach, func() { d.must(d.launch, d.launchEvent(repl), launch.OutcomeContinue) })

	// A health check finds slot 2's broker unhealthy: the group terminates it.
	h.SetGroupInstance(ids[2], harness.GroupInstance{Group: d.cfg.ASGName, AZ: d.st.World.Subnets[2].AZ,
		LifecycleState: "Terminating:Wait", HealthStatus: "Unhealthy"})
	measure(pathTerminateUnplanned, func() {
		res := d.must(d.terminate, d.terminateEvent(ids[2]), terminate.OutcomeReleased)
		if res["planned"] != false {
			tb.Fatalf("the unhealthy holder's termination: %v, want unplanned", res)
		}
	})
	h.TerminateInstance(tb, ids[2])
	repl2 := d.run(2)
	measure(pathLaunchReattachAgain, func() { d.must(d.launch, d.launchEvent(repl2), launch.OutcomeContinue) })

	measure(pathGrow, func() {
		d.must(d.grow, demo.AlarmEvent(d.cfg.Cluster, 0, ids[0], d.cfg.Grow.DataMount, 84.9, 86.3, float64(d.cfg.Grow.ThresholdPercent)), "grown")
	})
	d.must(d.reconcile, demo.ScheduleEvent(), "reconciled") // the terminated instances' state settles
	measure(pathReconcileNothing, func() {
		res := d.must(d.reconcile, demo.ScheduleEvent(), "reconciled")
		if res["released"] != nil || fmt.Sprint(res["repairs"]) != "map[alarm:0 dns:0 grow:0]" {
			tb.Fatalf("a reconcile with nothing to do did something: %v", res)
		}
	})
	return out
}

// Must show 1: the AWS calls of each path, pinned. A launch's calls are pinned in their
// order (each create or attach after a check of the lease: a consistent read or a
// fenced write); the others (whose detaches run at the same time) by count per action.
// A path that makes one call more, or another call, fails here.
func TestCallCountsPerPath(t *testing.T) {
	seq := func(s string) []string { return strings.Fields(s) }
	launchFirstENI := seq(`RecordLifecycleActionHeartbeat Query DescribeInstances UpdateItem Query
		DescribeNetworkInterfaces CreateNetworkInterface DescribeVolumes CreateVolume UpdateItem
		AttachNetworkInterface AttachVolume DescribeInstances UpdateItem CreateTags
		PutMetricAlarm ListResourceRecordSets ChangeResourceRecordSets CompleteLifecycleAction`)
	launchReattachENI := seq(`RecordLifecycleActionHeartbeat Query DescribeInstances UpdateItem Query
		DescribeNetworkInterfaces DescribeVolumes AttachNetworkInterface AttachVolume DescribeInstances UpdateItem CreateTags
		PutMetricAlarm ListResourceRecordSets ChangeResourceRecordSets CompleteLifecycleAction`)
	launchFirstInstance := seq(`RecordLifecycleActionHeartbeat Query DescribeInstances UpdateItem Query
		DescribeVolumes CreateVolume UpdateItem AttachVolume DescribeInstances UpdateItem CreateTags
		PutMetricAlarm ListResourceRecordSets ChangeResourceRecordSets CompleteLifecycleAction`)
	launchReattachInstance := seq(`RecordLifecycleActionHeartbeat Query DescribeInstances UpdateItem Query
		DescribeVolumes AttachVolume DescribeInstances UpdateItem CreateTags
		PutMetricAlarm ListResourceRecordSets ChangeResourceRecordSets CompleteLifecycleAction`)
	cold := func(s []string) []string { // the slot subnets' AZs, once per container
		return slices.Insert(slices.Clone(s), 3, "DescribeSubnets")
	}
	counts := func(s string) map[string]int {
		m := map[string]int{}
		for _, a := range strings.Fields(s) {
			m[a]++
		}
		return m
	}
	terminateENI := counts(`RecordLifecycleActionHeartbeat Query DescribeInstances DescribeAutoScalingInstances
		DescribeScalingActivities UpdateItem GetItem GetItem UpdateItem UpdateItem ListResourceRecordSets
		ChangeResourceRecordSets SendCommand GetCommandInvocation GetItem UpdateItem DescribeInstances DetachVolume
		DetachNetworkInterface DescribeVolumes DescribeNetworkInterfaces UpdateItem GetItem UpdateItem CompleteLifecycleAction`)
	terminateInstance := maps.Clone(terminateENI)
	delete(terminateInstance, "DetachNetworkInterface")
	delete(terminateInstance, "DescribeNetworkInterfaces")
	grow := counts(`GetItem DescribeVolumes DescribeVolumesModifications UpdateItem ModifyVolume
		DescribeVolumesModifications GetItem SendCommand GetCommandInvocation GetItem UpdateItem`)
	reconcile := counts(`Query DescribeInstances DescribeVolumes DescribeSubnets DescribeNetworkInterfaces Query
		DescribeAlarms DescribeAlarms Query DescribeInstances ListResourceRecordSets`)

	// The ceilings the replacement's critical path must stay under, alarm and DNS
	// included, whatever the pins above say.
	ceilings := map[string]int{
		pathLaunchFirstCold: 20, pathLaunchFirst: 20,
		pathLaunchReattach: 16, pathLaunchReattachAgain: 16,
	}

	type want struct {
		seq    []string       // exact order
		counts map[string]int // or counts per action
	}
	modes := []struct {
		name string
		eni  bool
		want map[string]want
	}{
		{"ENI mode", true, map[string]want{
			pathLaunchFirstCold: {seq: cold(launchFirstENI)}, pathLaunchFirst: {seq: launchFirstENI},
			pathLaunchReattach: {seq: launchReattachENI}, pathLaunchReattachAgain: {seq: launchReattachENI},
			pathTerminatePlanned: {counts: terminateENI}, pathTerminateUnplanned: {counts: terminateENI},
			pathGrow: {counts: grow}, pathReconcileNothing: {counts: reconcile},
		}},
		{"instance mode", false, map[string]want{
			pathLaunchFirstCold: {seq: cold(launchFirstInstance)}, pathLaunchFirst: {seq: launchFirstInstance},
			pathLaunchReattach: {seq: launchReattachInstance}, pathLaunchReattachAgain: {seq: launchReattachInstance},
			pathTerminatePlanned: {counts: terminateInstance}, pathTerminateUnplanned: {counts: terminateInstance},
			pathGrow: {counts: grow}, pathReconcileNothing: {counts: reconcile},
		}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			h := harness.Start(t)
			got := measureCalls(t, h, "calls"+strings.ToLower(m.name[:1]), m.eni)
			var table strings.Builder
			for _, p := range got {
				w, ok := m.want[p.Path]
				if !ok {
					t.Errorf("%s: no pinned calls", p.Path)
					continue
				}
				fmt.Fprintf(&table, "\n  %-50s %3d calls, %2d writes: %s", p.Path, len(p.Calls), p.writes(), strings.Join(p.Calls, " "))
				if limit, ok := ceilings[p.Path]; ok && len(p.Calls) > limit {
					t.Errorf("%s: %d AWS calls, more than the %d allowed", p.Path, len(p.Calls), limit)
				}
				switch {
				case w.seq != nil && !slices.Equal(p.Calls, w.seq):
					t.Errorf("%s: %d calls\n  %s\nwant %d\n  %s", p.Path, len(p.Calls), strings.Join(p.Calls, " "), len(w.seq), strings.Join(w.seq, " "))
				case w.counts != nil && !maps.Equal(counts(strings.Join(p.Calls, " ")), w.counts):
					t.Errorf("%s: %d calls %v, want %v", p.Path, len(p.Calls), counts(strings.Join(p.Calls, " ")), w.counts)
				}
			}
			t.Logf("%s:%s", m.name, table.String())
		})
	}
}
