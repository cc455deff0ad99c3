package test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// Must show 1: after three launches, three broker records and a bootstrap record with
// three IPs.
func TestDNSThreeLaunches(t *testing.T) {
	h := harness.Start(t)
	c := newDNSCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)

	for s := range 3 {
		l := c.lease(s)
		if l.State != lease.Bound || l.IP == "" || l.IP != c.enis(s)[0].IP {
			t.Fatalf("slot %d lease %+v, want bound with its ENI's IP", s, l)
		}
		if got := c.broker(s); !slices.Equal(got, []string{l.IP}) {
			t.Errorf("broker-%d = %v, want [%s] (the slot's ENI IP)", s, got, l.IP)
		}
	}
	if got, want := c.bootstrap(), c.ips(0, 1, 2); !slices.Equal(got, want) {
		t.Errorf("bootstrap = %v, want %v", got, want)
	}
	var records []string
	for _, r := range c.zone() {
		if r.Type == "A" {
			records = append(records, r.String())
		}
	}
	if len(records) != 4 {
		t.Errorf("zone holds %d A records, want 4: %v", len(records), records)
	}
	t.Logf("three concurrent launches: %d ChangeResourceRecordSets, %d ListResourceRecordSets; records %v",
		h.Calls("ChangeResourceRecordSets"), h.Calls("ListResourceRecordSets"), records)

	// Nothing differs now: a sync reads and changes nothing.
	h.ResetCounts()
	if err := c.syncer.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := h.MutatingCalls(); len(got) != 0 {
		t.Errorf("a sync with nothing to change made %v", got)
	}
}

// Thirty slots bound at once: thirty syncs race, each computed from the leases it read;
// the records end holding every slot.
func TestDNSThirtyConcurrentLaunches(t *testing.T) {
	h := harness.Start(t)
	c := newDNSCluster(t, h, 30, nil)
	var ids []string
	for i := range 30 {
		ids = append(ids, c.run(i%3))
	}
	c.launchAll(ids...)
	all := make([]int, 30)
	for s := range all {
		all[s] = s
		if got := c.broker(s); !slices.Equal(got, []string{c.lease(s).IP}) {
			t.Errorf("broker-%d = %v, want [%s]", s, got, c.lease(s).IP)
		}
	}
	if got, want := c.bootstrap(), c.ips(all...); !slices.Equal(got, want) {
		t.Errorf("bootstrap holds %d IPs, want %d:\n%v\n%v", len(got), len(want), got, want)
	}
	t.Logf("30 concurrent launches: %d ChangeResourceRecordSets, %d ListResourceRecordSets; bootstrap holds %d distinct IPs",
		h.Calls("ChangeResourceRecordSets"), h.Calls("ListResourceRecordSets"), len(c.bootstrap()))
}

// A write computed from leases read before a drain lands after the drain's own sync
// (its request held back in flight by the harness): the re-check that follows every
// write (Syncer.Sync) undoes it. Without the re-check the bootstrap record would keep
// the draining slot.
func TestDNSStaleWriteIsUndone(t *testing.T) {
	h := harness.Start(t)
	c := newDNSCluster(t, h, 3, nil)
	c.launchAll(c.run(0), c.run(1), c.run(2))
	ctx := context.Background()
	// Drift, so that the stale sync below has something to write.
	c.change(r53types.ChangeActionDelete, c.name("bootstrap"), r53types.RRTypeA, 60, c.ips(0, 1, 2)...)

	h.ResetCounts()
	h.Inject(harness.Fault{Action: "ChangeResourceRecordSets", Kind: harness.Latency, Latency: 3 * time.Second, Times: 1})
	defer h.ClearFaults()
	type result struct {
		repairs int
		err     error
	}
	stale := make(chan result, 1)
	go func() {
		n, err := c.syncer.Reconcile(ctx, nil) // reads three bound slots; its write is held back
		stale <- result{n, err}
	}()
	for deadline := time.Now().Add(30 * time.Second); h.Calls("ChangeResourceRecordSets") == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first sync never sent its change")
		}
	}
	// Slot 0 drains; its sync reads, writes and checks while the first write is held.
	if _, err := c.store.Drain(ctx, c.lease(0), "planned termination"); err != nil {
		t.Fatal(err)
	}
	if err := c.syncer.SlotDraining(ctx, c.lease(0)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stale:
		t.Skip("the held-back write landed before the drain's sync was done (a very slow machine): the race was not staged")
	default:
	}
	r := <-stale
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got, want := c.bootstrap(), c.ips(1, 2); !slices.Equal(got, want) {
		t.Errorf("bootstrap = %v, want %v (slot 0 is draining)", got, want)
	}
	if r.repairs != 2 {
		t.Errorf("the stale sync changed %d records, want 2 (its stale write, then the correction)", r.repairs)
	}
	t.Logf("stale write undone: %d ChangeResourceRecordSets in all, the stale sync made %d changes; bootstrap %v",
		h.Calls("ChangeResourceRecordSets"), r.repairs, c.bootstrap())
}

// Must show 2: in instance mode, after a replacement the broker record holds the new
// instance's IP.
func TestDNSInstanceModeFollowsReplacement(t *testing.T) {
	h := harness.Start(t)
	c := newDNSCluster(t, h, 3, map[string]string{"ENI": "false"})
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	old := c.primaryIP(ids[1])
	if got := c.broker(1); !slices.Equal(got, []string{old}) {
		t.Fatalf("broker-1 = %v, want the holder's primary IP %s", got, old)
	}
	if n := len(c.enis(1)); n != 0 {
		t.Fatalf("instance mode created %d ENIs for slot 1", n)
	}

	// The holder dies: the terminated event takes it out of bootstrap; its broker
	// record keeps the last IP until the slot is bound again.
	h.TerminateInstance(t, ids[1])
	if _, err := c.deliver(c.stateEvent(ids[1], "terminated")); err != nil {
		t.Fatal(err)
	}
	if got := c.broker(1); !slices.Equal(got, []string{old}) {
		t.Errorf("broker-1 after the holder died = %v, want the last IP %s kept", got, old)
	}
	if got, want := c.bootstrap(), sorted(c.primaryIP(ids[0]), c.primaryIP(ids[2])); !slices.Equal(got, want) {
		t.Errorf("bootstrap after the holder died = %v, want %v", got, want)
	}

	replacement := c.run(1)
	c.launchAll(replacement)
	neu := c.primaryIP(replacement)
	if l := c.lease(1); l.Holder != replacement || l.State != lease.Bound {
		t.Fatalf("slot 1 lease %+v, want bound by %s", l, replacement)
	}
	if neu == old {
		t.Fatalf("moto gave the replacement the old IP %s; the test cannot tell them apart", old)
	}
	if got := c.broker(1); !slices.Equal(got, []string{neu}) {
		t.Errorf("broker-1 after the replacement = %v, want the new instance's IP %s", got, neu)
	}
	if got, want := c.bootstrap(), sorted(c.primaryIP(ids[0]), neu, c.primaryIP(ids[2])); !slices.Equal(got, want) {
		t.Errorf("bootstrap after the replacement = %v, want %v", got, want)
	}
	t.Logf("instance mode: broker-1 %s -> %s; bootstrap %v", old, neu, c.bootstrap())
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}

// Must show 3: a draining or terminated slot leaves the bootstrap record (so does a
// holder reported stopping, before EC2 shows it); a re-bound slot returns to it. Broker
// records (ENI mode) never change.
func TestDNSBootstrapFollowsSlots(t *testing.T) {
	h := harness.Start(t)
	c := newDNSCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	ctx := context.Background()
	brokers := map[int]string{0: c.lease(0).IP, 1: c.lease(1).IP, 2: c.lease(2).IP}

	steps := []struct {
		name      string
		do        func(t *testing.T)
		bootstrap []int // slots whose IPs bootstrap holds
	}{
		{"slot 0 drains (terminate path)", func(t *testing.T) {
			if _, err := c.store.Drain(ctx, c.lease(0), "planned termination"); err != nil {
				t.Fatal(err)
			}
			if err := c.syncer.SlotDraining(ctx, c.lease(0)); err != nil {
				t.Fatal(err)
			}
		}, []int{1, 2}},
		{"slot 2's holder reported stopping while EC2 still says running", func(t *testing.T) {
			res, err := c.deliver(c.stateEvent(ids[2], "stopping"))
			if err != nil || res.Outcome != dns.OutcomeSynced || res.Slot != 2 || res.Changes != 1 {
				t.Fatalf("result %+v, %v; want synced, slot 2, 1 change", res, err)
			}
		}, []int{1}},
		{"slot 2's holder running again", func(t *testing.T) {
			if _, err := c.deliver(c.stateEvent(ids[2], "running")); err != nil {
				t.Fatal(err)
			}
		}, []int{1, 2}},
		{"slot 1's holder terminated, lease still bound", func(t *testing.T) {
			h.TerminateInstance(t, ids[1])
			if _, err := c.deliver(c.stateEvent(ids[1], "terminated")); err != nil {
				t.Fatal(err)
			}
			if l := c.lease(1); l.State != lease.Bound {
				t.Fatalf("slot 1 lease %s, want still bound", l.State)
			}
		}, []int{2}},
		{"slot 0's holder gone, lease released", func(t *testing.T) {
			h.TerminateInstance(t, ids[0])
			if _, err := c.store.Release(ctx, c.lease(0), "terminated"); err != nil {
				t.Fatal(err)
			}
			if err := c.syncer.Sync(ctx); err != nil {
				t.Fatal(err)
			}
		}, []int{2}},
		{"slot 0 re-bound by a replacement", func(t *testing.T) { c.launchAll(c.run(0)) }, []int{0, 2}},
		{"slot 1 re-bound by a replacement", func(t *testing.T) { c.launchAll(c.run(1)) }, []int{0, 1, 2}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			h.ResetCounts()
			st.do(t)
			if got, want := c.bootstrap(), c.ips(st.bootstrap...); !slices.Equal(got, want) {
				t.Errorf("bootstrap = %v, want %v (slots %v)", got, want, st.bootstrap)
			}
			for s, ip := range brokers {
				if got := c.broker(s); !slices.Equal(got, []string{ip}) {
					t.Errorf("broker-%d = %v, want [%s] for the slot's life", s, got, ip)
				}
			}
			t.Logf("bootstrap %v; Route 53 changes %d", c.bootstrap(), h.Calls("ChangeResourceRecordSets"))
		})
	}

	// No slot bound: no bootstrap record at all; broker records stay.
	for s := range 3 {
		l := c.lease(s)
		if _, err := c.store.Drain(ctx, l, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.syncer.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.bootstrap(); got != nil {
		t.Errorf("bootstrap with every slot draining = %v, want no record", got)
	}
	if got := c.broker(1); !slices.Equal(got, []string{brokers[1]}) {
		t.Errorf("broker-1 = %v, want kept", got)
	}
}

// The Syncer wired where production wires it: a terminate drainer (the leaving slot
// leaves bootstrap before the broker stops) and a reconcile repairer (drift repaired
// on the schedule).
func TestDNSWiredIntoTerminateAndReconcile(t *testing.T) {
	h := harness.Start(t)
	c := newDNSCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	broker1 := c.lease(1).IP

	term := c.terminate(nil)
	term.Drainers = []terminate.Drainer{c.syncer}
	if err := invokeWith(term, c.terminateEvent(ids[1])); err != nil {
		t.Fatal(err)
	}
	if l := c.lease(1); l.State != lease.Free {
		t.Fatalf("slot 1 lease %s after the planned termination, want free", l.State)
	}
	if got, want := c.bootstrap(), c.ips(0, 2); !slices.Equal(got, want) {
		t.Errorf("bootstrap after the planned termination of slot 1 = %v, want %v", got, want)
	}
	if got := c.broker(1); !slices.Equal(got, []string{broker1}) {
		t.Errorf("broker-1 = %v, want [%s] kept for the slot's next holder", got, broker1)
	}

	c.change(r53types.ChangeActionUpsert, c.name("broker-0"), r53types.RRTypeA, 60, "10.9.9.9")
	rec := c.reconciler()
	rec.Repairers = []reconcile.Repairer{c.syncer}
	h.ResetCounts()
	if err := invokeWith(rec, c.event("schedule.json", nil)); err != nil {
		t.Fatal(err)
	}
	if got := c.broker(0); !slices.Equal(got, []string{c.lease(0).IP}) {
		t.Errorf("broker-0 after reconcile = %v, want [%s]", got, c.lease(0).IP)
	}
	t.Logf("terminate drained slot 1 out of bootstrap %v; reconcile repaired broker-0 with %d ChangeResourceRecordSets",
		c.bootstrap(), h.Calls("ChangeResourceRecordSets"))
}

// Must show 4: drift is repaired by Reconcile; records that are not slotkeeper's are
// untouched.
func TestDNSReconcileRepairsDrift(t *testing.T) {
	h := harness.Start(t)
	c := newDNSCluster(t, h, 4, nil) // slot 3 is never bound
	c.launchAll(c.run(0), c.run(1), c.run(2))
	a, txt, aaaa := r53types.RRTypeA, r53types.RRTypeTxt, r53types.RRTypeAaaa
	up, del := r53types.ChangeActionUpsert, r53types.ChangeActionDelete

	// Records that are not slotkeeper's: other names, other types at its names, names
	// beside and past the cluster's in the listing order.
	c.change(up, c.name("other"), a, 300, "10.1.0.1")
	c.change(up, c.name("bootstrap"), txt, 300, `"owner=platform-team"`)
	c.change(up, c.name("broker-0"), aaaa, 60, "fd00::1")
	c.change(up, c.name("broker-7"), a, 60, "10.1.0.7")  // beyond SLOT_COUNT
	c.change(up, c.name("broker-01"), a, 60, "10.1.0.8") // not a slot name
	c.change(up, c.cfg.Cluster+"-other."+dnsZone+".", a, 60, "10.1.0.9")
	c.change(up, "zz."+dnsZone+".", a, 60, "10.1.0.10")
	// 300 more under the cluster's name, sorted before its records, so that listing
	// them takes two pages.
	c.fill(300, "a-%03d")
	foreign := func() []string {
		var out []string
		for _, r := range c.zone() {
			if r.Type == "A" && dns.NewNames(c.cfg).Owns(r.Name) {
				continue
			}
			out = append(out, r.String())
		}
		return out
	}
	before := foreign()

	// Drift, by hand.
	c.change(del, c.name("broker-0"), a, 60, c.lease(0).IP)
	c.change(up, c.name("broker-1"), a, 60, "10.9.9.9")
	c.change(up, c.name("bootstrap"), a, 300, c.lease(2).IP)
	c.change(up, c.name("broker-3"), a, 60, "10.9.9.3")
	drifted := c.zone()

	h.ResetCounts()
	repairs, err := c.syncer.Reconcile(context.Background(), c.leases())
	if err != nil {
		t.Fatal(err)
	}
	if repairs != 4 {
		t.Errorf("repairs = %d, want 4 (broker-0 restored, broker-1 and bootstrap corrected, broker-3 removed)", repairs)
	}
	for s := range 3 {
		if got := c.broker(s); !slices.Equal(got, []string{c.lease(s).IP}) {
			t.Errorf("broker-%d = %v, want [%s]", s, got, c.lease(s).IP)
		}
	}
	if got := c.broker(3); got != nil {
		t.Errorf("broker-3 (never bound) = %v, want no record", got)
	}
	if got, want := c.bootstrap(), c.ips(0, 1, 2); !slices.Equal(got, want) {
		t.Errorf("bootstrap = %v, want %v", got, want)
	}
	if after := foreign(); !slices.Equal(after, before) {
		t.Errorf("records that are not slotkeeper's changed:\nbefore %v\nafter  %v", before, after)
	}
	if n := h.Calls("ChangeResourceRecordSets"); n != 1 {
		t.Errorf("%d ChangeResourceRecordSets, want the repairs in one", n)
	}
	if n := h.Calls("ListResourceRecordSets"); n != 4 {
		t.Errorf("%d ListResourceRecordSets, want 4 (two pages, before and after the change)", n)
	}
	var drift []string
	for _, r := range drifted {
		if dns.NewNames(c.cfg).Owns(r.Name) && r.Type == "A" {
			drift = append(drift, r.String())
		}
	}
	t.Logf("drifted: %v", drift)
	t.Logf("repaired with %d ChangeResourceRecordSets and %d ListResourceRecordSets, %d repairs; %d other record sets untouched",
		h.Calls("ChangeResourceRecordSets"), h.Calls("ListResourceRecordSets"), repairs, len(before))

	// A second reconcile finds nothing to repair and calls nothing that mutates.
	h.ResetCounts()
	if repairs, err := c.syncer.Reconcile(context.Background(), c.leases()); err != nil || repairs != 0 {
		t.Errorf("second reconcile: %d repairs, %v; want 0", repairs, err)
	}
	if got := h.MutatingCalls(); len(got) != 0 {
		t.Errorf("second reconcile made %v", got)
	}
}

// Must show 5: throttling (and a batch Route 53 rejects because a record to delete is
// already gone) is retried, and the records end right.
func TestDNSRoute53ThrottlingAndRejections(t *testing.T) {
	h := harness.Start(t)
	tests := []struct {
		name        string
		code        string
		times       int
		wantChanges int // ChangeResourceRecordSets calls, faulted ones included
		wantLists   int // ListResourceRecordSets calls
	}{
		// The SDK's standard retryer (6 attempts in the harness, 8 in production)
		// absorbs these; the Syncer sees one success.
		{"Throttling x3", "Throttling", 3, 4, 2},
		{"PriorRequestNotComplete x3", "PriorRequestNotComplete", 3, 4, 2},
		// Past the SDK's attempts: the Syncer backs off and goes round again.
		{"Throttling x8, past the SDK's retries", "Throttling", 8, 9, 3},
		// Route 53's answer to a DELETE of a record someone already removed (moto does
		// not produce it; see TestMotoRoute53Semantics): not retried by the SDK; the
		// Syncer re-reads and sends the batch again.
		{"InvalidChangeBatch x1", "InvalidChangeBatch", 1, 2, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newDNSCluster(t, h, 4, nil)
			c.launch.Followers = nil // records are written by the Sync below only
			c.launchAll(c.run(0), c.run(1), c.run(2))
			c.change(r53types.ChangeActionUpsert, c.name("broker-3"), r53types.RRTypeA, 60, "10.9.9.3") // to be deleted

			h.ResetCounts()
			h.Inject(harness.Fault{Action: "ChangeResourceRecordSets", Kind: harness.Throttle, Code: tt.code, Times: tt.times})
			defer h.ClearFaults()
			if err := c.syncer.Sync(context.Background()); err != nil {
				t.Fatalf("sync: %v", err)
			}
			for s := range 3 {
				if got := c.broker(s); !slices.Equal(got, []string{c.lease(s).IP}) {
					t.Errorf("broker-%d = %v, want [%s]", s, got, c.lease(s).IP)
				}
			}
			if got := c.broker(3); got != nil {
				t.Errorf("broker-3 = %v, want deleted", got)
			}
			if got, want := c.bootstrap(), c.ips(0, 1, 2); !slices.Equal(got, want) {
				t.Errorf("bootstrap = %v, want %v", got, want)
			}
			changes, lists := h.Calls("ChangeResourceRecordSets"), h.Calls("ListResourceRecordSets")
			if changes != tt.wantChanges || lists != tt.wantLists {
				t.Errorf("%d ChangeResourceRecordSets and %d ListResourceRecordSets, want %d and %d",
					changes, lists, tt.wantChanges, tt.wantLists)
			}
			t.Logf("%s: %d ChangeResourceRecordSets (%d faulted), %d ListResourceRecordSets", tt.name, changes, tt.times, lists)
		})
	}

	// Bounded: a rejection that never ends gives up after Rounds rounds, with an error.
	t.Run("never ends", func(t *testing.T) {
		c := newDNSCluster(t, h, 1, nil)
		c.launch.Followers = nil
		c.launchAll(c.run(0))
		h.ResetCounts()
		h.Inject(harness.Fault{Action: "ChangeResourceRecordSets", Kind: harness.Throttle, Code: "InvalidChangeBatch"})
		defer h.ClearFaults()
		err := c.syncer.Sync(context.Background())
		if err == nil || !strings.Contains(err.Error(), "after 5 rounds") {
			t.Fatalf("error %v, want one after 5 rounds", err)
		}
		if n := h.Calls("ChangeResourceRecordSets"); n != 5 {
			t.Errorf("%d ChangeResourceRecordSets, want 5 (one per round)", n)
		}
		t.Logf("gave up: %v", err)
	})
}

// Must show 6: foreign or malformed events make no mutating call; so does an event
// that changes nothing.
func TestDNSEventsWithoutEffect(t *testing.T) {
	h := harness.Start(t)
	c := newDNSCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	stranger := c.run(0) // runs, holds no slot
	other := newDNSCluster(t, h, 1, nil)
	otherHolder := other.run(0)
	other.launchAll(otherHolder)
	edit := func(f func(m, d map[string]any)) []byte {
		return c.event("state-change-running.json", func(m map[string]any) {
			d := m["detail"].(map[string]any)
			d["instance-id"] = ids[0]
			f(m, d)
		})
	}
	disabled := c.cfg
	disabled.DNS = config.DNSConfig{}
	_, disabledHandler := c.wire(disabled)
	sample := c.stateEvent(ids[1], "stopping")

	tests := []struct {
		name    string
		handler *dns.Handler
		payload []byte
		wantErr string // "" = no error
		outcome string
		wantLog string
	}{
		{"instance holding no slot", nil, c.stateEvent(stranger, "terminated"), "", dns.OutcomeIgnored, "holds no slot"},
		{"holder of another cluster's slot", nil, c.stateEvent(otherHolder, "stopping"), "", dns.OutcomeIgnored, "holds no slot of cluster " + c.cfg.Cluster},
		{"unknown instance", nil, c.stateEvent("i-0000000000000dead", "terminated"), "", dns.OutcomeIgnored, "holds no slot"},
		{"pending", nil, c.stateEvent(ids[0], "pending"), "", dns.OutcomeIgnored, `state \"pending\"`},
		{"stopped", nil, c.stateEvent(ids[0], "stopped"), "", dns.OutcomeIgnored, `state \"stopped\"`},
		{"scheduled event", nil, c.event("schedule.json", nil), "", dns.OutcomeIgnored, "source"},
		{"lifecycle event", nil, c.launchEvent(ids[0]), "", dns.OutcomeIgnored, "source"},
		{"other EC2 detail type", nil, edit(func(m, _ map[string]any) { m["detail-type"] = "EBS Volume Notification" }), "", dns.OutcomeIgnored, "detail-type"},
		{"DNS not managed", disabledHandler, sample, "", dns.OutcomeIgnored, "not managed"},
		{"running holder, records in step", nil, c.stateEvent(ids[0], "running"), "", dns.OutcomeSynced, "follow the instance"},
		{"missing instance id", nil, edit(func(_, d map[string]any) { delete(d, "instance-id") }), "instance-id", "", "rejecting"},
		{"bad instance id", nil, edit(func(_, d map[string]any) { d["instance-id"] = "web-1" }), "instance-id", "", "rejecting"},
		{"missing state", nil, edit(func(_, d map[string]any) { delete(d, "state") }), "lacks state", "", "rejecting"},
		{"truncated", nil, sample[:len(sample)-30], "malformed", "", "rejecting"},
		{"not JSON", nil, []byte("instance stopped"), "malformed", "", "rejecting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.handler != nil {
				saved := c.handler
				c.handler = tt.handler
				defer func() { c.handler = saved }()
			}
			h.ResetCounts()
			logged := len(c.logs.String())
			res, err := c.deliver(tt.payload)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("want no error, got %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one mentioning %q", err, tt.wantErr)
			case tt.wantErr == "" && (res.Outcome != tt.outcome || res.Changes != 0):
				t.Errorf("result %+v, want outcome %s and no changes", res, tt.outcome)
			}
			if got := h.MutatingCalls(); len(got) != 0 {
				t.Errorf("mutating calls %v, want none", got)
			}
			if log := c.logs.String()[logged:]; !strings.Contains(log, tt.wantLog) {
				t.Errorf("log lacks %q:\n%s", tt.wantLog, tail(log, 5))
			}
			t.Logf("%s: %d AWS calls (%v), none mutating", tt.name, sum(h.CallCounts()), callNames(h))
		})
	}
	// Nothing at all changed in the zone along the way.
	if got, want := c.bootstrap(), c.ips(0, 1, 2); !slices.Equal(got, want) {
		t.Errorf("bootstrap = %v, want %v", got, want)
	}
}

func callNames(h *harness.Harness) string {
	var names []string
	for name, n := range h.CallCounts() {
		names = append(names, fmt.Sprintf("%s×%d", name, n))
	}
	slices.Sort(names)
	return strings.Join(names, " ")
}
