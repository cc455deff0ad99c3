package test

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// Must show 1: the terminated rule sees every instance of the account and region. A
// foreign instance's terminated event costs one read of the leases (holders only) and
// changes nothing; so does one of the broker group's own instances that never held a
// slot. The event of an instance that holds a slot, or held one last, runs the pass.
func TestReconcileForeignTerminatedEvent(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	foreign := h.RunInstance(t, c.w, c.w.Subnets[0].ID)                                                                      // not in the group at all
	groupie := h.RunInstanceTagged(t, c.w, c.w.Subnets[1].ID, map[string]string{"aws:autoscaling:groupName": c.cfg.ASGName}) // in the group, never a broker
	for _, id := range []string{foreign, groupie} {
		h.TerminateInstance(t, id)
	}
	before := map[int]lease.Lease{0: c.lease(0), 1: c.lease(1), 2: c.lease(2)}
	r := c.reconciler()

	for name, id := range map[string]string{"foreign instance": foreign, "group instance that never held a slot": groupie,
		"instance EC2 never knew": "i-0fedcba9876543210"} {
		h.ResetCounts()
		logStart := len(c.logs.String())
		rep, err := c.runReconcile(r, c.terminatedEvent(id))
		if err != nil || rep.Outcome != reconcile.OutcomeIgnored {
			t.Fatalf("%s: %+v, %v; want ignored", name, rep, err)
		}
		calls := h.CallCounts()
		if n := sum(calls); n > 1 || len(h.MutatingCalls()) != 0 {
			t.Errorf("%s: %d AWS calls %v and mutating calls %v; want at most 1 and none", name, n, calls, h.MutatingCalls())
		}
		if !strings.Contains(c.logs.String()[logStart:], "holds no slot of cluster "+c.cfg.Cluster+" and held none last") {
			t.Errorf("%s: no log line says why the event was ignored", name)
		}
		t.Logf("%s %s terminated: %s, AWS calls %v, 0 mutating", name, id, rep.Outcome, calls)
	}
	for s, l := range before {
		if got := c.lease(s); !reflectEqualLease(got, l) {
			t.Errorf("slot %d's lease changed: %+v", s, got)
		}
	}

	// A holder's terminated event runs the pass, which frees its slot.
	h.TerminateInstance(t, ids[1])
	h.ResetCounts()
	rep, err := c.runReconcile(r, c.terminatedEvent(ids[1]))
	if err != nil || rep.Outcome != reconcile.OutcomeReconciled || !slices.Equal(rep.Released, []int{1}) {
		t.Fatalf("holder's terminated event: %+v, %v; want slot 1 released", rep, err)
	}
	// A redelivery of it comes after the release: the instance is the slot's last
	// holder, still one of ours, and the pass finds nothing more to do.
	h.ResetCounts()
	rep, err = c.runReconcile(r, c.terminatedEvent(ids[1]))
	if err != nil || rep.Outcome != reconcile.OutcomeReconciled || len(rep.Released) != 0 || len(h.MutatingCalls()) != 0 {
		t.Fatalf("redelivered terminated event of the last holder: %+v, %v, mutating %v", rep, err, h.MutatingCalls())
	}
}

// Must show 2: one slot whose detach keeps failing (its ENI stays "in-use" after the
// detach, as a stuck attachment does) does not stop the pass: every other dead holder's
// slot is released, the repairers (disk alarms, DNS) run, the slot metrics are emitted,
// and the failing slot is reported (report, error log, RepairFailures). The pass is a
// partial success; once the ENI comes free the next pass releases the slot.
func TestReconcileIsolatesAFailingSlot(t *testing.T) {
	h := harness.Start(t)
	var mu sync.Mutex
	stuck := ""
	h.Override(harness.Override{Action: "DescribeNetworkInterfaces", Rewrite: func(req, resp []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		if stuck == "" || !bytes.Contains(req, []byte(stuck)) {
			return resp
		}
		return bytes.ReplaceAll(resp, []byte("<status>available</status>"), []byte("<status>in-use</status>"))
	}})
	c := newDNSCluster(t, h, 5, map[string]string{"GROW_FUNCTION_ARN": growFunctionARN})
	alarms := grow.NewAlarms(c.cfg, awsapi.NewCloudWatch(h.AWSConfig()), obs.NewLogger(c.logs, slog.LevelDebug))
	c.launch.Followers = []launch.Follower{alarms, c.syncer}
	ids := make([]string, 5)
	for i := range ids {
		ids[i] = c.run(i % 3)
	}
	c.launchAll(ids...)
	held := map[string]int{}
	for s := range 5 {
		held[c.lease(s).Holder] = s
	}
	dead := []int{1, 2, 3}
	for _, s := range dead {
		h.TerminateInstance(t, c.lease(s).Holder) // no lifecycle hook: the instance is simply gone
	}
	mu.Lock()
	stuck = c.lease(2).ENIID
	mu.Unlock()

	r := c.reconciler()
	r.Poll.Timeout = time.Second
	r.Repairers = []reconcile.Repairer{alarms, c.syncer}
	h.ResetCounts()
	metricsStart := len(c.metrics.String())
	rep, err := c.runReconcile(r, c.scheduleEvent())
	if err != nil {
		t.Fatalf("reconcile: %v, want a partial success", err)
	}
	first := rep
	if rep.Outcome != reconcile.OutcomePartial || !slices.Equal(rep.Released, []int{1, 3}) {
		t.Fatalf("report %+v, want partial with slots 1 and 3 released", rep)
	}
	if len(rep.Failures) != 1 || rep.Failures[0].Slot != 2 || rep.Failures[0].Repair != "release" || !strings.Contains(rep.Failures[0].Error, stuck) {
		t.Fatalf("failures %+v, want slot 2's release, naming ENI %s", rep.Failures, stuck)
	}
	if l := c.lease(2); l.State != lease.Bound {
		t.Errorf("slot 2 is %s, want it left bound for the next pass", l.State)
	}
	for _, s := range []int{1, 3} {
		if l := c.lease(s); l.State != lease.Free {
			t.Errorf("slot %d is %s, want free", s, l.State)
		}
		if e := c.enis(s); e[0].AttachedTo != "" {
			t.Errorf("slot %d's ENI is still attached to %s", s, e[0].AttachedTo)
		}
	}
	metrics := c.metrics.String()[metricsStart:]
	if got := emfValues(t, metrics, reconcile.MetricRepairFailures); !slices.Equal(got["Repair=release"], []float64{1}) {
		t.Errorf("RepairFailures %v, want 1 for release", got)
	}
	if got := emfValues(t, metrics, "Slots"); !slices.Equal(got["State=bound"], []float64{3}) || !slices.Equal(got["State=free"], []float64{2}) {
		t.Errorf("Slots by state %v, want 3 bound (0, 2, 4) and 2 free", got)
	}
	if got := emfValues(t, metrics, "SlotsReleased"); !slices.Equal(got[""], []float64{2}) {
		t.Errorf("SlotsReleased %v, want 2", got)
	}
	if got := emfValues(t, metrics, "Invocations"); !slices.Equal(got["Outcome=partial"], []float64{1}) {
		t.Errorf("Invocations %v, want one partial", got)
	}
	failLogs := slices.DeleteFunc(strings.Split(c.logs.String(), "\n"), func(line string) bool {
		return !strings.Contains(line, `"message":"repair failed; the rest of the pass goes on"`)
	})
	if len(failLogs) != 1 || !strings.Contains(failLogs[0], `"level":"ERROR"`) || !strings.Contains(failLogs[0], `"slot":2`) || !strings.Contains(failLogs[0], `"repair":"release"`) {
		t.Errorf("failure log lines %q, want one error naming slot 2's release", failLogs)
	}
	// The repairs of the other paths ran: the bootstrap record holds the running
	// bound brokers only (slots 0 and 4), and their alarms watch them.
	var boot []string
	for _, rec := range c.zone() {
		if rec.Name == c.name("bootstrap") {
			boot = rec.Values
		}
	}
	want := []string{c.lease(0).IP, c.lease(4).IP}
	slices.Sort(want)
	if !slices.Equal(boot, want) {
		t.Errorf("bootstrap record %v, want the running brokers %v", boot, want)
	}

	// The ENI comes free: the next pass releases slot 2.
	mu.Lock()
	stuck = ""
	mu.Unlock()
	rep, err = c.runReconcile(r, c.scheduleEvent())
	if err != nil || rep.Outcome != reconcile.OutcomeReconciled || !slices.Equal(rep.Released, []int{2}) {
		t.Fatalf("next pass: %+v, %v; want slot 2 released", rep, err)
	}
	t.Logf("pass with slot 2 stuck: %s, released %v, failures %+v, repairs %v; next pass: %s, released %v",
		first.Outcome, first.Released, first.Failures, first.Repairs, rep.Outcome, rep.Released)
}
