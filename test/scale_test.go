package test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// Must show 3: a thousand slots against moto (instances, leases, ENIs, volumes, disk
// alarms). Claims (every claim reads every holder's state), reconcile and `slotctl
// status` work, and no EC2 describe names more than 200 ids or filter values in one
// request (EC2's limit: with more than 200 held slots every claim and reconcile used
// to fail). A foreign instance's terminated event still costs one read. Figures (AWS
// calls and wall time at 3, 30, 300 and 1,000 slots) come from BenchmarkScale.
func TestThousandSlots(t *testing.T) {
	h := harness.Start(t)
	values := recordValuesPerRequest(h)
	start := time.Now()
	s := newScale(t, h, 1000, 997) // slots 997, 998, 999 (one per AZ) are left free
	t.Logf("set-up: 997 bound slots in %s", time.Since(start).Round(time.Millisecond))

	// Claims: three instances launch at once, one per AZ, and take the free slots.
	h.ResetCounts()
	began := time.Now()
	ids := []string{s.run(0), s.run(1), s.run(2)}
	s.launchAll(ids...)
	claimCalls := sum(h.CallCounts())
	for _, sl := range []int{997, 998, 999} {
		l := s.lease(sl)
		if l.State != lease.Bound || !slices.Contains(ids, l.Holder) {
			t.Fatalf("slot %d: %+v, want bound to one of %v", sl, l, ids)
		}
		s.holders[sl] = l.Holder
	}
	for _, id := range ids {
		if got := s.completions(id); !slices.Equal(got, []string{"CONTINUE"}) {
			t.Errorf("%s completions %v", id, got)
		}
	}
	t.Logf("3 concurrent claims among 997 bound slots: %d AWS calls, %s", claimCalls, time.Since(began).Round(time.Millisecond))

	// Reconcile: one holder vanished; its slot is released, every other slot kept.
	h.TerminateInstance(t, s.holders[500])
	h.ResetCounts()
	began = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), scaleDeadline)
	defer cancel()
	rep, err := s.reconcile.Run(ctx, s.scheduleEvent())
	if err != nil || rep.Outcome != reconcile.OutcomeReconciled || !slices.Equal(rep.Released, []int{500}) ||
		rep.SlotsByState["bound"] != 999 || rep.SlotsByState["free"] != 1 {
		t.Fatalf("reconcile: %+v, %v; want slot 500 released, 999 bound", rep, err)
	}
	reconcileCalls := h.CallCounts()
	if n := reconcileCalls["DescribeInstances"]; n < 5 {
		t.Errorf("%d DescribeInstances for 1000 holders, want at least 5 (requests of at most 200)", n)
	}
	t.Logf("reconcile of 1000 slots (1 released): %d AWS calls %v, %s", sum(reconcileCalls), reconcileCalls, time.Since(began).Round(time.Millisecond))

	// A foreign instance's terminated event: one read, however many slots.
	foreign := h.RunInstance(t, s.w, s.w.Subnets[0].ID)
	h.TerminateInstance(t, foreign)
	h.ResetCounts()
	rep, err = s.reconcile.Run(ctx, s.terminatedEvent(foreign))
	if err != nil || rep.Outcome != reconcile.OutcomeIgnored || sum(h.CallCounts()) != 1 || len(h.MutatingCalls()) != 0 {
		t.Fatalf("foreign terminated event at 1000 slots: %+v, %v, calls %v; want ignored after one read", rep, err, h.CallCounts())
	}

	// slotctl status: every slot, every holder's state.
	h.ResetCounts()
	began = time.Now()
	code, sv, stderr := s.status()
	bound := 0
	for _, r := range sv.Slots {
		if r.State == string(lease.Bound) && r.HolderState == "running" && r.Volume != "" && r.SizeGiB == 100 {
			bound++
		}
	}
	if code != slotctl.ExitOK || len(sv.Slots) != 1000 || bound != 999 || len(sv.Problems) != 0 {
		t.Fatalf("slotctl status: exit %d, %d slots, %d bound with a running holder and a volume, problems %v\n%s", code, len(sv.Slots), bound, sv.Problems, stderr)
	}
	t.Logf("slotctl status of 1000 slots: %d AWS calls %v, %s", sum(h.CallCounts()), h.CallCounts(), time.Since(began).Round(time.Millisecond))

	most, seen := values.snapshot()
	for action, n := range most {
		if n > resources.MaxFilterValues {
			t.Errorf("a %s request carried %d values in one list, beyond EC2's %d", action, n, resources.MaxFilterValues)
		}
	}
	if most["DescribeInstances"] != resources.MaxFilterValues {
		t.Errorf("the largest DescribeInstances request named %d instances, want %d: the chunking was not exercised", most["DescribeInstances"], resources.MaxFilterValues)
	}
	t.Logf("the most values in one request, by action: %v (requests %v)", most, seen)
}
