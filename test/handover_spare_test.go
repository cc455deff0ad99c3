package test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// spareCluster is six slots over three AZs (slots i and i+3 share an AZ) with brokers
// in slots 0, 1 and 2, InService and healthy; slots 3, 4 and 5 are spare (never used).
func spareCluster(t *testing.T) (*harness.Harness, *cluster, *kafkaCluster, []string) {
	t.Helper()
	h := harness.Start(t)
	k := newKafka(t, 3)
	var cp atomic.Pointer[cluster]
	stopsBrokers(h, &cp, k)
	c := newCluster(t, h, 6, nil)
	cp.Store(c)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	for s, id := range ids {
		if l := c.lease(s); l.State != lease.Bound || l.Holder != id {
			t.Fatalf("slot %d: %s by %s, want bound by %s", s, l.State, l.Holder, id)
		}
	}
	c.inGroup("InService", "Healthy", ids...)
	return h, c, k, ids
}

// The replacement of a leaving broker takes the leaving broker's slot, not a free one
// of the same AZ: a health replacement (the old holder Unhealthy in Terminating:Wait,
// the replacement launched at the same time) with the AZ's spare slot 4 free. The
// replacement waits for slot 1's handover and binds it with its volume and ENI; slot 4
// is never claimed (taking it would make the replacement node 4, a new empty broker,
// and leave broker 1's volume without a holder).
func TestReplacementTakesTheLeavingSlotNotASpare(t *testing.T) {
	h, c, k, ids := spareCluster(t)
	c.inGroup("Terminating:Wait", "Unhealthy", ids[1])
	vol := c.lease(1).VolumeID
	replacement := c.run(1)
	c.inGroup("Pending:Wait", "Healthy", replacement)
	term := c.terminate(k.client(t))
	h.ResetCounts()
	var lres launch.Result
	var terr, lerr error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, terr = runTerminate(t, term, c.terminateEvent(ids[1]), "terminate-old") }()
	go func() {
		defer wg.Done()
		lres, lerr = runLaunch(t, c.launch, c.launchEvent(replacement), "launch-replacement")
	}()
	wg.Wait()
	if terr != nil || lerr != nil {
		t.Fatalf("terminate: %v; launch: %v", terr, lerr)
	}
	l1, l4 := c.lease(1), c.lease(4)
	t.Logf("replacement %s: %s slot %d; slot 1 %s by %s (volume %s), slot 4 %s (version %d)",
		replacement, lres.Outcome, lres.Slot, l1.State, l1.Holder, l1.VolumeID, l4.State, l4.Version)
	if lres.Outcome != launch.OutcomeContinue || lres.Slot != 1 || l1.State != lease.Bound || l1.Holder != replacement || l1.VolumeID != vol {
		t.Errorf("the replacement took slot %d (%s); slot 1 is %s by %s with volume %s; want slot 1 bound to it with volume %s",
			lres.Slot, lres.Outcome, l1.State, l1.Holder, l1.VolumeID, vol)
	}
	if l4.State != lease.Free || l4.Version != 0 {
		t.Errorf("spare slot 4 is %s at version %d: a replacement claimed it", l4.State, l4.Version)
	}
	recs := c.records()
	if first(recs, replacement, "a holder of the AZ is leaving; waiting for its slot rather than claiming a free one") < 0 ||
		first(recs, replacement, "handover: the leaving holder released the slot") < 0 {
		t.Errorf("the replacement's log does not say it waited for the handover rather than take the free slot")
	}
	if got := c.completions(replacement); !slices.Equal(got, []string{"CONTINUE"}) {
		t.Errorf("replacement completions %v, want one CONTINUE", got)
	}
}

// A scale-out and a replacement launch together in the AZ of a leaving holder that has
// a spare slot: one waits for the handover, the other takes the spare slot, and both
// go in service; neither waits for the other forever, nothing is abandoned. The
// leaving slot keeps its volume. Run several times: which of the two waits depends on
// their ids.
func TestScaleOutAndReplacementInOneAZ(t *testing.T) {
	for run := range 3 {
		h, c, k, ids := spareCluster(t)
		c.inGroup("Terminating:Wait", "Unhealthy", ids[1])
		vol := c.lease(1).VolumeID
		a, b := c.run(1), c.run(1)
		c.inGroup("Pending:Wait", "Healthy", a, b)
		term := c.terminate(k.client(t))
		h.ResetCounts()
		res := map[string]launch.Result{}
		var mu sync.Mutex
		var errs []error
		var wg sync.WaitGroup
		wg.Add(3)
		go func() {
			defer wg.Done()
			if _, err := runTerminate(t, term, c.terminateEvent(ids[1]), "terminate-old"); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
		for _, id := range []string{a, b} {
			go func() {
				defer wg.Done()
				r, err := runLaunch(t, c.launch, c.launchEvent(id), "launch-"+id)
				mu.Lock()
				res[id] = r
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("run %d: %v", run, errs)
		}
		l1, l4 := c.lease(1), c.lease(4)
		t.Logf("run %d: %s → %s slot %d, %s → %s slot %d; slot 1 %s by %s (volume %s), slot 4 %s by %s",
			run, a, res[a].Outcome, res[a].Slot, b, res[b].Outcome, res[b].Slot, l1.State, l1.Holder, l1.VolumeID, l4.State, l4.Holder)
		got := []int{res[a].Slot, res[b].Slot}
		slices.Sort(got)
		if res[a].Outcome != launch.OutcomeContinue || res[b].Outcome != launch.OutcomeContinue || !slices.Equal(got, []int{1, 4}) {
			t.Errorf("run %d: results %+v, want both CONTINUE, one in slot 1 and one in slot 4", run, res)
		}
		if l1.State != lease.Bound || l1.VolumeID != vol || l4.State != lease.Bound || l1.Holder == l4.Holder {
			t.Errorf("run %d: slot 1 %s by %s with volume %s (want %s), slot 4 %s by %s", run, l1.State, l1.Holder, l1.VolumeID, vol, l4.State, l4.Holder)
		}
		for _, cl := range h.Completions() {
			if cl.Result != "CONTINUE" {
				t.Errorf("run %d: completion %+v: nothing may be abandoned", run, cl)
			}
		}
	}
}

// At the handover's bound a launch does not fall back to the free slot: it fails, to
// be delivered again (and, once the lifecycle action expires, the hook's default
// ABANDON applies); the free slot stays free.
func TestHandoverBoundDoesNotFallBackToASpare(t *testing.T) {
	h, c, _, ids := spareCluster(t)
	// A termination is draining slot 1 (and takes its time).
	if _, err := c.store.Drain(context.Background(), c.lease(1), "terminating"); err != nil {
		t.Fatal(err)
	}
	c.inGroup("Terminating:Wait", "Healthy", ids[1])
	replacement := c.run(1)
	c.inGroup("Pending:Wait", "Healthy", replacement)
	c.launch.HandoverMaxWait = 300 * time.Millisecond
	c.launch.HeartbeatInterval = 50 * time.Millisecond
	h.ResetCounts()
	_, err := runLaunch(t, c.launch, c.launchEvent(replacement), "handover-bound")
	t.Logf("launch: %v", err)
	if err == nil || !strings.Contains(err.Error(), "has not released it") {
		t.Fatalf("launch: %v, want a retryable error naming the handover", err)
	}
	if l4 := c.lease(4); l4.State != lease.Free || l4.Version != 0 {
		t.Errorf("spare slot 4 is %s at version %d: the launch fell back to it", l4.State, l4.Version)
	}
	if got := mutating(h); len(got) != 0 {
		t.Errorf("mutating calls %v, want none (heartbeats aside)", got)
	}
	if got := c.completions(replacement); len(got) != 0 {
		t.Errorf("completions %v, want none: the event is retried", got)
	}
}
