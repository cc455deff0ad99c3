package test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// The consistent read of the leases right after a claim is the check that the lease
// is still this instance's before its first create or attach (no fence GetItem
// follows it). A claim taken away between its write and that read (here the slot is
// released behind the launch's back, right after the claim landed) stops the launch
// before it creates or attaches anything; the redelivery claims the slot again and
// binds it.
func TestClaimLostBeforeTheFirstCreateStopsTheLaunch(t *testing.T) {
	h := harness.Start(t)
	var mu sync.Mutex
	var steal func()
	h.Override(harness.Override{Action: "UpdateItem", Rewrite: func(_, resp []byte) []byte {
		mu.Lock()
		f := steal
		steal = nil
		mu.Unlock()
		if f != nil {
			f() // the claim has taken effect in moto; its answer is still on its way
		}
		return resp
	}})
	c := newCluster(t, h, 3, nil)
	id := c.run(1)
	var stolen lease.Lease
	mu.Lock()
	steal = func() {
		l := c.lease(1)
		if l.Holder != id || l.State != lease.Claimed {
			t.Errorf("the first UpdateItem left %+v, want slot 1 claimed by %s", l, id)
			return
		}
		var err error
		if stolen, err = c.store.Release(context.Background(), l, "taken away behind the launch's back"); err != nil {
			t.Errorf("releasing the claim: %v", err)
		}
	}
	mu.Unlock()

	h.ResetCounts()
	err := c.invoke(c.launchEvent(id))
	if err == nil || !strings.Contains(err.Error(), "no longer held") {
		t.Fatalf("launch after its claim was taken away: %v, want an error saying the claim is no longer held", err)
	}
	if stolen.State != lease.Free {
		t.Fatalf("the claim was not taken away: %+v", stolen)
	}
	for _, call := range h.MutatingCalls() {
		if strings.HasPrefix(call, "Create") || strings.HasPrefix(call, "Attach") {
			t.Errorf("the launch called %s after losing its claim (mutating calls %v)", call, h.MutatingCalls())
		}
	}
	if l := c.lease(1); l.State != lease.Free || l.Version != stolen.Version {
		t.Errorf("the launch changed the lease after losing its claim: %+v, want it as released: %+v", l, stolen)
	}
	t.Logf("claim lost after its write: %v; mutating calls %v", err, h.MutatingCalls())

	// The redelivery claims the slot again and makes the instance its broker.
	if err := c.invoke(c.launchEvent(id)); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	l := c.lease(1)
	if l.State != lease.Bound || l.Holder != id || l.Version <= stolen.Version || l.VolumeID == "" || l.ENIID == "" {
		t.Errorf("after the redelivery: %+v, want slot 1 bound to %s with its ENI and volume", l, id)
	}
	if got := h.Completions(); !slices.ContainsFunc(got, func(c harness.LifecycleCall) bool { return c.InstanceID == id && c.Result == "CONTINUE" }) {
		t.Errorf("completions %+v, want CONTINUE for %s", got, id)
	}
}
