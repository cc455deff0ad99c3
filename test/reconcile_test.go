package test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// runReconcile runs one reconcile with payload and returns its report.
func (c *cluster) runReconcile(r *reconcile.Handler, payload []byte) (reconcile.Report, error) {
	return r.Run(context.Background(), payload)
}

// Must show 3 (issue 3): an instance that vanished without a hook has its slot freed
// exactly once, even by two reconciles at the same time; running holders keep theirs.
func TestReconcileFreesAVanishedHolderExactlyOnce(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	before0, before2 := c.lease(0), c.lease(2)
	h.TerminateInstance(t, ids[1]) // no lifecycle hook: the instance is simply gone
	h.ResetCounts()

	var wg sync.WaitGroup
	reports := make([]reconcile.Report, 2)
	errs := make([]error, 2)
	for i := range reports {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := c.scheduleEvent()
			if i == 1 {
				payload = c.terminatedEvent(ids[1])
			}
			reports[i], errs[i] = c.runReconcile(c.reconciler(), payload)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	released := 0
	for _, r := range reports {
		released += len(r.Released)
	}
	l := c.lease(1)
	if released != 1 || l.State != lease.Free || l.Version != 2 || l.LastHolder != ids[1] {
		t.Fatalf("released %d times in all (reports %+v); lease %+v, want exactly one release to free at version 2", released, reports, l)
	}
	releases := 0
	for _, tr := range l.History {
		if tr.To == lease.Free {
			releases++
		}
	}
	if releases != 1 {
		t.Errorf("history records %d releases: %+v", releases, l.History)
	}
	if e := c.enis(1); e[0].AttachedTo != "" {
		t.Errorf("the dead holder's ENI is still attached: %+v", e)
	}
	if a, b := c.lease(0), c.lease(2); !reflectEqualLease(a, before0) || !reflectEqualLease(b, before2) {
		t.Errorf("running holders' leases changed:\n%+v\n%+v", a, b)
	}
	for _, call := range h.MutatingCalls() {
		if call != "UpdateItem" && call != "DetachNetworkInterface" && call != "DetachVolume" {
			t.Errorf("unexpected mutating call %s", call)
		}
	}
	// The replacement then gets the slot back with its ENI and volume.
	replacement := c.run(1)
	c.launchAll(replacement)
	if l := c.lease(1); l.Holder != replacement || l.State != lease.Bound {
		t.Errorf("replacement lease %+v", l)
	}
}

func reflectEqualLease(a, b lease.Lease) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// Must show 4 (issue 3): orphaned volumes and ENIs are reported, never deleted.
func TestReconcileReportsOrphansAndDeletesNothing(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	id := c.run(0)
	c.launchAll(id)
	ctx := context.Background()
	tags := func(s string) []ec2types.TagSpecification {
		return []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeVolume, Tags: []ec2types.Tag{
			{Key: aws.String("slotkeeper:cluster"), Value: aws.String(c.cfg.Cluster)},
			{Key: aws.String("slotkeeper:slot"), Value: aws.String(s)},
		}}}
	}
	var orphans []string
	for _, s := range []string{"7", "0"} { // a slot the cluster does not have; a second volume for slot 0
		v, err := c.ec2.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(c.w.Subnets[0].AZ), Size: aws.Int32(5), TagSpecifications: tags(s)})
		if err != nil {
			t.Fatal(err)
		}
		orphans = append(orphans, aws.ToString(v.VolumeId))
	}
	h.ResetCounts()
	rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	var reported []string
	for _, o := range rep.Orphans {
		reported = append(reported, o.ID)
	}
	slices.Sort(reported)
	slices.Sort(orphans)
	if !slices.Equal(reported, orphans) {
		t.Fatalf("orphans reported %v, want %v (report %+v)", reported, orphans, rep)
	}
	if got := h.MutatingCalls(); len(got) != 0 {
		t.Errorf("reconcile of a healthy cluster with orphans made mutating calls %v", got)
	}
	for _, v := range orphans {
		out, err := c.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{v}})
		if err != nil || len(out.Volumes) != 1 {
			t.Errorf("orphan %s is gone: %v", v, err)
		}
	}
	if !strings.Contains(c.metrics.String(), `"Orphans"`) {
		t.Errorf("no Orphans metric emitted")
	}
	if rep.SlotsByState["bound"] != 1 || rep.SlotsByState["free"] != 2 {
		t.Errorf("slots by state %v", rep.SlotsByState)
	}
}

// A claim never bound, past the TTL, by a claimer no longer running, is released; a
// fresh claim is not.
func TestReconcileReleasesStaleClaims(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, map[string]string{"CLAIM_TTL": "1m"})
	old, fresh := c.run(0), c.run(1)
	stale, err := c.store.Claim(context.Background(), c.lease(0), old, "us-east-1a", "test: a launch that died after claiming")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.store.Claim(context.Background(), c.lease(1), fresh, "us-east-1b", "test: a launch in progress"); err != nil {
		t.Fatal(err)
	}
	h.TerminateInstance(t, old)
	r := c.reconciler()
	rep, err := c.runReconcile(r, c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Released, []int{0}) {
		t.Fatalf("released %v, want [0]", rep.Released)
	}
	if l := c.lease(0); l.State != lease.Free || l.Version != stale.Version+1 {
		t.Errorf("stale claim not released: %+v", l)
	}
	if l := c.lease(1); l.State != lease.Claimed || l.Holder != fresh {
		t.Errorf("a claim in progress was touched: %+v", l)
	}
}

// Foreign and malformed triggers change nothing.
func TestReconcileIgnoresForeignEvents(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	r := c.reconciler()
	for name, p := range map[string][]byte{
		"running state change": c.event("state-change-running.json", nil),
		"launch action":        c.launchEvent("i-0123456789abcdef0"),
		"truncated":            c.scheduleEvent()[:20],
		"no instance id":       []byte(`{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","detail":{"state":"terminated"}}`),
	} {
		h.ResetCounts()
		_, err := c.runReconcile(r, p)
		if n := len(h.MutatingCalls()) + len(h.CallCounts()); n != 0 {
			t.Errorf("%s: %d AWS calls (%v)", name, n, h.CallCounts())
		}
		if strings.HasPrefix(name, "truncated") || strings.HasPrefix(name, "no instance") {
			if err == nil {
				t.Errorf("%s: want an error", name)
			}
		} else if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Must show 5 (issue 3), reconcile side: a crash after each of its mutating calls,
// then the next run, converges to the fault-free state.
func TestReconcileConvergesAfterCrashes(t *testing.T) {
	h := harness.Start(t)
	setup := func(t *testing.T) (*cluster, map[string]string) {
		c := newCluster(t, h, 3, nil)
		ids := []string{c.run(0), c.run(1), c.run(2)}
		c.launchAll(ids...)
		h.TerminateInstance(t, ids[1])
		return c, map[string]string{ids[0]: "b0", ids[1]: "gone", ids[2]: "b2"}
	}
	c, roles := setup(t)
	h.ResetCounts()
	if _, err := c.runReconcile(c.reconciler(), c.scheduleEvent()); err != nil {
		t.Fatal(err)
	}
	calls := mutating(h)
	want := c.snapshot(roles)
	t.Logf("fault-free reconcile mutating calls: %v", calls)
	for i, action := range calls {
		t.Run(fmt.Sprintf("crash after %s #%d", action, i+1), func(t *testing.T) {
			c, roles := setup(t)
			skip := 0
			for _, a := range calls[:i] {
				if a == action {
					skip++
				}
			}
			h.Inject(harness.Fault{Action: action, Kind: harness.Crash, Skip: skip, Times: 1})
			defer h.ClearFaults()
			_, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
			t.Logf("first run: %v", err)
			for run := 0; run < 2; run++ {
				if _, err := c.runReconcile(c.reconciler(), c.scheduleEvent()); err != nil {
					t.Fatalf("run %d: %v", run+2, err)
				}
			}
			if got := c.snapshot(roles); !reflect.DeepEqual(got, want) {
				t.Errorf("end state differs\n got: %+v\nwant: %+v", got, want)
			}
		})
	}
}

// Reconcile checks Kafka: every bound slot's broker registered, and the counts of
// under-replicated and offline partitions, as metrics.
func TestReconcileReportsKafkaHealth(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	k := newKafka(t, 3)
	k.Unregister(2)           // broker 2 (slot 2) is bound but not in the cluster
	k.SetISR("orders", 1, 0)  // one replica in sync: under-replicated
	k.SetOffline("orders", 2) // no leader: offline
	r := c.reconciler()
	r.Kafka = k.client(t)
	rep, err := c.runReconcile(r, c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Kafka == nil || rep.Kafka.UnderReplicated != 1 || rep.Kafka.Offline != 1 {
		t.Fatalf("kafka health %+v, want 1 under-replicated and 1 offline", rep.Kafka)
	}
	if !slices.Equal(rep.Unregistered, []int32{2}) {
		t.Errorf("unregistered brokers %v, want [2]", rep.Unregistered)
	}
	for _, m := range []string{`"UnderReplicatedPartitions":1`, `"OfflinePartitions":1`, `"UnregisteredBrokers":1`} {
		if !strings.Contains(c.metrics.String(), m) {
			t.Errorf("metrics lack %s", m)
		}
	}
}
