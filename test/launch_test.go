package test

import (
	"context"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// Must show 1: three instances launched together in three AZs become brokers 0, 1, 2.
func TestLaunchThreeInstancesInThreeAZs(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)

	for i, id := range ids {
		s := i // slot i lives in subnet i: one slot per AZ
		az, tags := c.instance(id)
		want := map[string]string{
			"slotkeeper:cluster": c.cfg.Cluster, "slotkeeper:slot": strconv.Itoa(s),
			"slotkeeper:node-id": strconv.Itoa(s), "slotkeeper:lease": "1",
		}
		if !reflect.DeepEqual(tags, want) {
			t.Errorf("%s tags = %v, want %v", id, tags, want)
		}
		l := c.lease(s)
		if l.State != lease.Bound || l.Holder != id || l.Version != 1 || l.HolderAZ != az {
			t.Errorf("slot %d lease = %+v, want bound by %s at version 1 in %s", s, l, id, az)
		}
		enis, vols := c.enis(s), c.volumes(s)
		if len(enis) != 1 || enis[0].AttachedTo != id || enis[0].DeviceIndex != 1 || enis[0].AZ != az {
			t.Errorf("slot %d ENIs = %+v, want one attached to %s at device index 1 in %s", s, enis, id, az)
		}
		if len(vols) != 1 || vols[0].AttachedTo != id || vols[0].Device != "/dev/sdf" || vols[0].AZ != az || vols[0].Size != 100 {
			t.Errorf("slot %d volumes = %+v, want one 100 GiB attached to %s at /dev/sdf in %s", s, vols, id, az)
		}
		if l.ENIID != enis[0].ID || l.IP != enis[0].IP || l.VolumeID != vols[0].ID {
			t.Errorf("slot %d lease records %s/%s/%s, resources are %s/%s/%s", s, l.ENIID, l.IP, l.VolumeID, enis[0].ID, enis[0].IP, vols[0].ID)
		}
		if got := c.completions(id); !slices.Equal(got, []string{"CONTINUE"}) {
			t.Errorf("%s completions = %v, want one CONTINUE", id, got)
		}
	}
	if n := len(h.Completions()); n != 3 {
		t.Errorf("%d completions recorded, want 3", n)
	}
	t.Logf("three launches: %d AWS calls, %d conditional lease writes, %d mutating calls",
		sum(h.CallCounts()), h.Calls("PutItem")+h.Calls("UpdateItem"), len(mutating(h)))
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// Must show 2: the replacement of slot 1's instance gets the same ENI, IP and volume.
func TestReplacementKeepsENIAndVolume(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	before := c.lease(1)
	enis, vols := c.enis(1), c.volumes(1)

	// The holder dies; its lease is freed through the lease store.
	h.TerminateInstance(t, ids[1])
	if _, err := c.store.Release(context.Background(), before, "holder terminated"); err != nil {
		t.Fatal(err)
	}
	h.ResetCounts()

	replacement := c.run(1)
	c.launchAll(replacement)

	after := c.lease(1)
	if after.State != lease.Bound || after.Holder != replacement || after.Version != 3 || after.LastHolder != ids[1] {
		t.Fatalf("slot 1 lease = %+v, want bound by %s at version 3 (claim, release, claim), last holder %s", after, replacement, ids[1])
	}
	enis2, vols2 := c.enis(1), c.volumes(1)
	if len(enis2) != 1 || enis2[0].ID != enis[0].ID || enis2[0].IP != enis[0].IP || enis2[0].AttachedTo != replacement {
		t.Errorf("ENI after replacement %+v, want %s (%s) attached to %s", enis2, enis[0].ID, enis[0].IP, replacement)
	}
	if len(vols2) != 1 || vols2[0].ID != vols[0].ID || vols2[0].AttachedTo != replacement {
		t.Errorf("volume after replacement %+v, want %s attached to %s", vols2, vols[0].ID, replacement)
	}
	if n := h.Calls("CreateNetworkInterface") + h.Calls("CreateVolume"); n != 0 {
		t.Errorf("the replacement created %d ENIs/volumes, want none", n)
	}
	if _, tags := c.instance(replacement); tags["slotkeeper:slot"] != "1" || tags["slotkeeper:lease"] != "3" {
		t.Errorf("replacement tags %v", tags)
	}
	if got := c.completions(replacement); !slices.Equal(got, []string{"CONTINUE"}) {
		t.Errorf("completions %v", got)
	}
	t.Logf("replacement: ENI %s (%s) and volume %s kept; mutating calls %v", enis[0].ID, enis[0].IP, vols[0].ID, mutating(h))
}

// Must show 3 (correctness half; the write counts are in BenchmarkClaim30): thirty
// instances for thirty slots, ten per AZ, launched at once.
func TestThirtyConcurrentLaunches(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 30, nil)
	var ids []string
	for i := 0; i < 30; i++ {
		ids = append(ids, c.run(i%3))
	}
	start := time.Now()
	c.launchAll(ids...)
	elapsed := time.Since(start)

	seen := map[string]bool{}
	for s := 0; s < 30; s++ {
		l := c.lease(s)
		if l.State != lease.Bound || seen[l.Holder] {
			t.Fatalf("slot %d: %+v (holder already seen: %v)", s, l, seen[l.Holder])
		}
		seen[l.Holder] = true
		az, tags := c.instance(l.Holder)
		if tags["slotkeeper:slot"] != strconv.Itoa(s) || az != c.w.Subnets[s%3].AZ {
			t.Errorf("slot %d held by %s in %s with tags %v, want AZ %s", s, l.Holder, az, tags, c.w.Subnets[s%3].AZ)
		}
		if e, v := c.enis(s), c.volumes(s); len(e) != 1 || len(v) != 1 || e[0].AttachedTo != l.Holder || v[0].AttachedTo != l.Holder {
			t.Errorf("slot %d: ENIs %+v volumes %+v, want one each attached to %s", s, e, v, l.Holder)
		}
	}
	for _, id := range ids {
		if got := c.completions(id); !slices.Equal(got, []string{"CONTINUE"}) {
			t.Errorf("%s completions %v", id, got)
		}
	}
	claims := 0 // the launches' own count of conditional claim writes (metric ClaimWrites)
	for _, m := range regexp.MustCompile(`"ClaimWrites":(\d+)`).FindAllStringSubmatch(c.metrics.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		claims += n
	}
	t.Logf("30 concurrent launches in %s: %d claim writes (%.2f per claim), %d AWS calls in all",
		elapsed.Round(time.Millisecond), claims, float64(claims)/30, sum(h.CallCounts()))
}

// Must show 5: an instance in an AZ whose slots are all held by running brokers.
func TestNoFreeSlotAbandons(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	first := c.run(0)
	c.launchAll(first)
	h.ResetCounts()

	extra := c.run(0) // same AZ: slot 0 is its only slot, and it is taken
	if err := c.invoke(c.launchEvent(extra)); err != nil {
		t.Fatal(err)
	}
	if got := c.completions(extra); !slices.Equal(got, []string{"ABANDON"}) {
		t.Fatalf("completions %v, want one ABANDON", got)
	}
	if got := mutating(h); !slices.Equal(got, []string{"CompleteLifecycleAction"}) {
		t.Errorf("mutating calls %v, want only the completion", got)
	}
	for s := 0; s < 3; s++ {
		if l := c.lease(s); l.Holder == extra || l.LastHolder == extra {
			t.Errorf("slot %d lease mentions the abandoned instance: %+v", s, l)
		}
		for _, e := range c.enis(s) {
			if e.AttachedTo == extra {
				t.Errorf("ENI %s attached to the abandoned instance", e.ID)
			}
		}
		for _, v := range c.volumes(s) {
			if v.AttachedTo == extra {
				t.Errorf("volume %s attached to the abandoned instance", v.ID)
			}
		}
	}
	if _, tags := c.instance(extra); len(tags) != 0 {
		t.Errorf("abandoned instance tagged %v", tags)
	}
	if !strings.Contains(c.logs.String(), "no claimable slot in the availability zone us-east-1a") {
		t.Errorf("the log does not say why it abandoned")
	}
}

// A slot's resources attached to a live instance are never taken from it: the
// launch abandons and gives its claim back instead.
func TestNeverTakesAVolumeFromALiveInstance(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	first := c.run(0)
	c.launchAll(first)
	// An operator frees the lease by hand while the broker still runs.
	if _, err := c.store.Release(context.Background(), c.lease(0), "operator"); err != nil {
		t.Fatal(err)
	}
	h.ResetCounts()
	next := c.run(0)
	if err := c.invoke(c.launchEvent(next)); err != nil {
		t.Fatal(err)
	}
	if got := c.completions(next); !slices.Equal(got, []string{"ABANDON"}) {
		t.Fatalf("completions %v, want ABANDON", got)
	}
	for _, a := range mutating(h) {
		if strings.HasPrefix(a, "Detach") || strings.HasPrefix(a, "Attach") {
			t.Errorf("%s called: the live broker's resources were touched", a)
		}
	}
	if e, v := c.enis(0), c.volumes(0); e[0].AttachedTo != first || v[0].AttachedTo != first {
		t.Errorf("resources moved: ENI on %s, volume on %s, want both on %s", e[0].AttachedTo, v[0].AttachedTo, first)
	}
	if l := c.lease(0); l.State != lease.Free || l.LastHolder != next {
		t.Errorf("the claim was not given back: %+v", l)
	}
}

// Must show 6: events that are not ours, or not events at all, cause no mutation.
func TestBadInputMutatesNothing(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	id := c.run(0)
	ev := c.launchEvent(id)
	edit := func(f func(d, m map[string]any)) []byte {
		return c.event("launch-lifecycle.json", func(m map[string]any) {
			d := m["detail"].(map[string]any)
			d["AutoScalingGroupName"], d["EC2InstanceId"] = c.cfg.ASGName, id
			f(d, m)
		})
	}
	tests := []struct {
		name    string
		payload []byte
		wantErr string // "" = a logged no-op
		wantLog string
	}{
		{"foreign ASG", edit(func(d, _ map[string]any) { d["AutoScalingGroupName"] = "web-frontend" }), "", `Auto Scaling group \"web-frontend\" is not`},
		{"terminate transition", edit(func(d, m map[string]any) {
			d["LifecycleTransition"] = "autoscaling:EC2_INSTANCE_TERMINATING"
		}), "", "transition"},
		{"terminate detail type", edit(func(_, m map[string]any) { m["detail-type"] = "EC2 Instance-terminate Lifecycle Action" }), "", "detail-type"},
		{"state-change event", c.event("state-change-running.json", nil), "", "source"},
		{"scheduled event", c.event("schedule.json", nil), "", "source"},
		{"missing instance id", edit(func(d, _ map[string]any) { delete(d, "EC2InstanceId") }), "EC2InstanceId", "rejecting"},
		{"missing token", edit(func(d, _ map[string]any) { delete(d, "LifecycleActionToken") }), "LifecycleActionToken", "rejecting"},
		{"truncated", ev[:len(ev)-40], "malformed", "rejecting"},
		{"not JSON", []byte(`Instance launched!`), "malformed", "rejecting"},
		{"JSON array", []byte(`[1,2]`), "malformed", "rejecting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.ResetCounts()
			before := len(c.logs.String())
			err := c.invoke(tt.payload)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("want a no-op, got error %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one mentioning %q", err, tt.wantErr)
			}
			if got := h.MutatingCalls(); len(got) != 0 {
				t.Errorf("mutating calls %v, want none", got)
			}
			if n := sum(h.CallCounts()); n != 0 {
				t.Errorf("%d AWS calls, want none", n)
			}
			if logged := c.logs.String()[before:]; !strings.Contains(logged, tt.wantLog) {
				t.Errorf("log %q lacks %q", logged, tt.wantLog)
			}
		})
	}
}

// Long waits extend the lifecycle action with heartbeats.
func TestHeartbeatsDuringLongWaits(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	c.launch.HeartbeatInterval = 100 * time.Millisecond
	h.Inject(harness.Fault{Action: "AttachVolume", Kind: harness.Latency, Latency: 700 * time.Millisecond})
	id := c.run(2)
	c.launchAll(id)
	n := 0
	for _, hb := range h.Heartbeats() {
		if hb.InstanceID == id && hb.Hook == "slotkeeper-launch" && hb.Token == "token-"+id {
			n++
		}
	}
	if n < 3 {
		t.Fatalf("%d heartbeats during a 700 ms attach with a 100 ms interval, want at least 3", n)
	}
	if got := c.completions(id); !slices.Equal(got, []string{"CONTINUE"}) {
		t.Fatalf("completions %v", got)
	}
	t.Logf("%d heartbeats sent during a 700 ms AttachVolume", n)
}

// scenario sets up a cluster up to the launch under test and returns the event to
// deliver and the roles of the instances involved.
type scenario struct {
	name  string
	setup func(t *testing.T, c *cluster) (payload []byte, roles map[string]string)
}

var scenarios = []scenario{
	{"first launch", func(t *testing.T, c *cluster) ([]byte, map[string]string) {
		id := c.run(1)
		return c.launchEvent(id), map[string]string{id: "new"}
	}},
	{"replacement after termination", func(t *testing.T, c *cluster) ([]byte, map[string]string) {
		old := c.run(1)
		c.launchAll(old)
		c.h.TerminateInstance(t, old)
		if _, err := c.store.Release(context.Background(), c.lease(1), "holder terminated"); err != nil {
			t.Fatal(err)
		}
		id := c.run(1)
		return c.launchEvent(id), map[string]string{old: "old", id: "new"}
	}},
	{"takeover from a stopped ex-holder", func(t *testing.T, c *cluster) ([]byte, map[string]string) {
		old := c.run(1)
		c.launchAll(old)
		if _, err := c.ec2.StopInstances(context.Background(), &ec2.StopInstancesInput{InstanceIds: []string{old}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.store.Release(context.Background(), c.lease(1), "operator released a stopped broker"); err != nil {
			t.Fatal(err)
		}
		id := c.run(1)
		return c.launchEvent(id), map[string]string{old: "old", id: "new"}
	}},
}

// Must show 4: a crash after each mutating call of the launch path in turn, then the
// event delivered again, ends in exactly the fault-free state. So do duplicate
// deliveries (in sequence and at once) and throttling of every call.
func TestLaunchConvergesAfterCrashesDuplicatesAndThrottling(t *testing.T) {
	h := harness.Start(t)
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			// The fault-free run: its end state and its mutating calls, in order.
			c := newCluster(t, h, 3, nil)
			payload, roles := sc.setup(t, c)
			h.ResetCounts()
			if err := c.invoke(payload); err != nil {
				t.Fatal(err)
			}
			calls := mutating(h)
			want := c.snapshot(roles)
			if want.Completions["new"][0] != "CONTINUE" || want.Slots[1].Holder != "new" || want.Slots[1].State != "bound" {
				t.Fatalf("fault-free run did not bind slot 1 to the new instance: %+v", want)
			}
			t.Logf("fault-free mutating calls: %v", calls)

			check := func(t *testing.T, c *cluster, roles map[string]string) {
				t.Helper()
				if got := c.snapshot(roles); !reflect.DeepEqual(got, want) {
					t.Errorf("end state differs from the fault-free run\n got: %+v\nwant: %+v", got, want)
				}
			}
			for i, action := range calls {
				skip := 0
				for _, a := range calls[:i] {
					if a == action {
						skip++
					}
				}
				t.Run(fmt.Sprintf("crash after %s #%d", action, skip+1), func(t *testing.T) {
					c := newCluster(t, h, 3, nil)
					payload, roles := sc.setup(t, c)
					h.Inject(harness.Fault{Action: action, Kind: harness.Crash, Skip: skip, Times: 1})
					defer h.ClearFaults()
					// The first delivery either fails with the crash, or sees past it (a
					// failed attach re-checks and finds the attachment done).
					if err := c.invoke(payload); err != nil && !strings.Contains(err.Error(), "InjectedCrash") {
						t.Fatalf("first delivery: err = %v, want the injected crash or success", err)
					} else {
						t.Logf("first delivery: %v", err)
					}
					if err := c.invoke(payload); err != nil {
						t.Fatalf("redelivery: %v", err)
					}
					if err := c.invoke(payload); err != nil { // and once more, late
						t.Fatalf("second redelivery: %v", err)
					}
					check(t, c, roles)
				})
			}
			t.Run("duplicate deliveries in sequence", func(t *testing.T) {
				c := newCluster(t, h, 3, nil)
				payload, roles := sc.setup(t, c)
				for i := 0; i < 3; i++ {
					if err := c.invoke(payload); err != nil {
						t.Fatal(err)
					}
				}
				check(t, c, roles)
			})
			t.Run("duplicate deliveries at once", func(t *testing.T) {
				c := newCluster(t, h, 3, nil)
				payload, roles := sc.setup(t, c)
				var wg sync.WaitGroup
				errs := make([]error, 3)
				for i := range errs {
					wg.Add(1)
					go func() { defer wg.Done(); errs[i] = c.invoke(payload) }()
				}
				wg.Wait()
				// A racing duplicate may lose and ask for redelivery; redeliver as Lambda would.
				for _, err := range errs {
					if err != nil {
						t.Logf("a concurrent duplicate failed and is redelivered: %v", err)
						if err := c.invoke(payload); err != nil {
							t.Fatal(err)
						}
					}
				}
				check(t, c, roles)
			})
			t.Run("throttling on every call", func(t *testing.T) {
				c := newCluster(t, h, 3, nil)
				payload, roles := sc.setup(t, c)
				h.ResetCounts()
				h.Inject(harness.Fault{Action: "*", Kind: harness.Throttle, Every: 2})
				defer h.ClearFaults()
				if err := c.invoke(payload); err != nil {
					t.Fatal(err)
				}
				check(t, c, roles)
				t.Logf("with every call throttled once: %d calls reached the proxy", sum(h.CallCounts()))
			})
		})
	}
}

// The ENI of a slot in instance mode is not used: only the volume moves.
func TestInstanceModeAttachesNoENI(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, map[string]string{"ENI": "false", "SECURITY_GROUPS": ""})
	id := c.run(0)
	c.launchAll(id)
	if e := c.enis(0); len(e) != 0 {
		t.Errorf("instance mode created ENIs %+v", e)
	}
	l := c.lease(0)
	out, err := c.ec2.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	if ip := aws.ToString(out.Reservations[0].Instances[0].PrivateIpAddress); l.State != lease.Bound || l.IP != ip || l.ENIID != "" {
		t.Errorf("lease %+v, want bound with the instance's primary IP %s", l, ip)
	}
}

// follower records what it is told and fails the first `fail` times.
type follower struct {
	mu    sync.Mutex
	fail  int
	calls []launch.Bound
}

func (f *follower) Name() string { return "test" }

func (f *follower) SlotBound(_ context.Context, b launch.Bound) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, b)
	if len(f.calls) <= f.fail {
		return fmt.Errorf("follower unavailable")
	}
	return nil
}

// Followers hear of every bind before CONTINUE; in instance mode (the slot's address
// is the new holder's), a failing follower holds the completion back until a
// redelivery succeeds. ENI mode: TestFollowerFailureDoesNotBlockContinueInENIMode.
func TestFollowersAreToldBeforeContinue(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, map[string]string{"ENI": "false", "SECURITY_GROUPS": ""})
	f := &follower{fail: 1}
	c.launch.Followers = []launch.Follower{f}
	id := c.run(2)
	if err := c.invoke(c.launchEvent(id)); err == nil || !strings.Contains(err.Error(), "follower unavailable") {
		t.Fatalf("first delivery: %v, want the follower's error", err)
	}
	if got := c.completions(id); len(got) != 0 {
		t.Fatalf("completed %v although a follower failed", got)
	}
	if err := c.invoke(c.launchEvent(id)); err != nil {
		t.Fatal(err)
	}
	if got := c.completions(id); !slices.Equal(got, []string{"CONTINUE"}) {
		t.Fatalf("completions %v", got)
	}
	l := c.lease(2)
	if len(f.calls) != 2 || f.calls[1].Lease.Slot != 2 || f.calls[1].Lease.Holder != id || f.calls[1].NodeID != 2 ||
		f.calls[1].Lease.IP != l.IP || f.calls[1].AZ != "us-east-1c" || f.calls[1].Lease.State != lease.Bound {
		t.Fatalf("follower calls %+v, want two for slot 2 bound to %s", f.calls, id)
	}
}
