package test

// A slot's identity, claim by claim: the never-formatted mark names the claim a blank
// volume is for; a slot's first use takes only a resource it can use; a recorded
// resource that can never be attached, or whose id is malformed, is an identity
// problem; EC2's eventual consistency right after a create is not one.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

const markTag = "slotkeeper:never-formatted"

// bodiesNaming counts the recorded request bodies of action that name id.
func bodiesNaming(h *harness.Harness, action, id string) int {
	n := 0
	for _, b := range h.Bodies(action) {
		if strings.Contains(string(b), id) {
			n++
		}
	}
	return n
}

// replaceHolder terminates slot s's holder, lets the reconciler free the slot and
// launches a replacement, which must CONTINUE. It returns the replacement.
func (c *cluster) replaceHolder(s int) string {
	c.t.Helper()
	c.h.TerminateInstance(c.t, c.lease(s).Holder)
	if rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent()); err != nil || !slices.Contains(rep.Released, s) {
		c.t.Fatalf("reconcile: released %v, %v", rep.Released, err)
	}
	id := c.run(s % 3)
	if err := c.invoke(c.launchEvent(id)); err != nil {
		c.t.Fatal(err)
	}
	if got := c.completions(id); !slices.Equal(got, []string{"CONTINUE"}) {
		c.t.Fatalf("replacement %s completions %v, want CONTINUE", id, got)
	}
	return id
}

// Finding: the never-formatted mark could outlive the volume's first use (an older
// bootstrap, or an operator's own, never clears it), and a later bootstrap would then
// format a used volume whose superblock was damaged. The mark names the claim the
// volume was made blank for; once the slot has been bound with the volume, the next
// claim's launch removes a mark it finds (one tag call), so no later bootstrap can
// format it; a reattach without a mark makes no tag call at all.
func TestNeverFormattedMarkNamesTheClaim(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	c.launchAll(c.run(0), c.run(1), c.run(2))
	first := c.lease(1)
	if _, tags := c.volumeByID(first.VolumeID); tags[markTag] != fmt.Sprint(first.Version) || first.VolumeClaim != first.Version {
		t.Fatalf("new volume %s marked %q, recorded by claim %d; want both claim %d", first.VolumeID, tags[markTag], first.VolumeClaim, first.Version)
	}

	// The holder served (bound) without clearing the mark, then died.
	h.ResetCounts()
	second := c.replaceHolder(1)
	l := c.lease(1)
	_, tags := c.volumeByID(l.VolumeID)
	if _, marked := tags[markTag]; marked || l.VolumeID != first.VolumeID {
		t.Fatalf("after a bound claim, volume %s keeps mark %q (lease %+v)", l.VolumeID, tags[markTag], l)
	}
	deletes, stamps := bodiesNaming(h, "DeleteTags", l.VolumeID), bodiesNaming(h, "CreateTags", l.VolumeID)
	if deletes != 1 || stamps != 0 || !strings.Contains(c.logs.String(), "removed a never-formatted mark left by an earlier claim") {
		t.Errorf("mark removal: %d DeleteTags and %d CreateTags naming %s, want 1 and 0", deletes, stamps, l.VolumeID)
	}

	// Another replacement: no mark, no tag call on the volume.
	h.ResetCounts()
	third := c.replaceHolder(1)
	if n := bodiesNaming(h, "DeleteTags", l.VolumeID) + bodiesNaming(h, "CreateTags", l.VolumeID); n != 0 {
		t.Errorf("a reattach without a mark made %d tag calls on the volume", n)
	}
	t.Logf("volume %s made blank for claim %d (mark %q); claim %d (%s): mark removed with 1 DeleteTags; claim %d (%s): 0 tag calls on the volume",
		first.VolumeID, first.Version, fmt.Sprint(first.Version), c.lease(1).Version-2, second, c.lease(1).Version, third)
}

// Finding: on a slot's first use, any ENI with the slot's tags (and any marked volume)
// was taken and recorded before it was checked, after which every launch of the slot
// abandoned. Now only what the slot can use is taken: in its subnet (its AZ), free, a
// volume created blank by one of its claims. Here none of the look-alikes qualifies:
// the slot gets a new ENI and volume, CONTINUE, no alert; the look-alikes are orphans.
func TestFirstUseTakesOnlyWhatTheSlotCanUse(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	topic := c.withAlerts()
	ctx := context.Background()
	a, b := c.w.Subnets[0], c.w.Subnets[1] // slot 1 lives in b
	live := h.RunInstance(t, c.w, b.ID)    // a running broker being adopted by hand

	mkENI := func(subnet string) string {
		out, err := c.ec2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet),
			TagSpecifications: slotTagSpec(ec2types.ResourceTypeNetworkInterface, c.cfg.Cluster, 1)})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.NetworkInterface.NetworkInterfaceId)
	}
	mkVolume := func(az, mark, snapshot string) string {
		in := &ec2.CreateVolumeInput{AvailabilityZone: aws.String(az), Size: aws.Int32(100),
			TagSpecifications: slotTagSpec(ec2types.ResourceTypeVolume, c.cfg.Cluster, 1, ec2types.Tag{Key: aws.String(markTag), Value: aws.String(mark)})}
		if snapshot != "" {
			in.SnapshotId = aws.String(snapshot)
		}
		out, err := c.ec2.CreateVolume(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.VolumeId)
	}
	source, err := c.ec2.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(b.AZ), Size: aws.Int32(100)})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := c.ec2.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: source.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	strayENI := mkENI(a.ID) // another subnet (AZ): it could never be attached
	liveENI := mkENI(b.ID)  // in use by a live instance
	if _, err := c.ec2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(liveENI),
		InstanceId: aws.String(live), DeviceIndex: aws.Int32(1)}); err != nil {
		t.Fatal(err)
	}
	// Slot 1's first claim will be version 1: each of these carries a mark of 1 or an
	// impossible one, and fails one other test.
	vols := map[string]string{
		mkVolume(a.AZ, "1", ""):                            "in another AZ",
		mkVolume(b.AZ, "1", aws.ToString(snap.SnapshotId)): "restored from a snapshot",
		mkVolume(b.AZ, "true", ""):                         "marked by no claim",
		mkVolume(b.AZ, "99", ""):                           "marked for a claim to come",
	}
	inUse := mkVolume(b.AZ, "1", "")
	if _, err := c.ec2.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: aws.String(inUse), InstanceId: aws.String(live), Device: aws.String("/dev/sdg")}); err != nil {
		t.Fatal(err)
	}
	vols[inUse] = "in use by a live instance"

	h.ResetCounts()
	id := c.run(1)
	if err := c.invoke(c.launchEvent(id)); err != nil {
		t.Fatal(err)
	}
	l := c.lease(1)
	if got := c.completions(id); !slices.Equal(got, []string{"CONTINUE"}) || l.State != lease.Bound {
		t.Fatalf("completions %v, lease %+v: want CONTINUE and bound", got, l)
	}
	if l.ENIID == strayENI || l.ENIID == liveENI || vols[l.VolumeID] != "" {
		t.Fatalf("the slot took a look-alike: lease %+v", l)
	}
	if n, m := h.Calls("CreateNetworkInterface"), h.Calls("CreateVolume"); n != 1 || m != 1 {
		t.Errorf("%d CreateNetworkInterface and %d CreateVolume, want 1 each", n, m)
	}
	if on, _ := c.eniByID(liveENI); on != live {
		t.Errorf("the live instance's ENI moved to %q", on)
	}
	if on, _ := c.volumeByID(inUse); on != live {
		t.Errorf("the live instance's volume moved to %q", on)
	}
	if msgs := snsPublished(t, h, topic); len(msgs) != 0 {
		t.Errorf("alerts %q", msgs)
	}
	rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{strayENI, liveENI, inUse}
	for v := range vols {
		want = append(want, v)
	}
	if got := orphanIDs(rep); !slices.Equal(got, sortedCopy(slices.Compact(sortedCopy(want)))) {
		t.Errorf("orphans %v, want the look-alikes %v", got, sortedCopy(want))
	}
	t.Logf("look-alikes of slot 1: ENI %s (other subnet), ENI %s (live instance), volumes %v; the slot created ENI %s and volume %s; orphans %d",
		strayENI, liveENI, vols, l.ENIID, l.VolumeID, len(rep.Orphans))
}

// setRecorded writes a resource id into slot s's lease by hand (as an adoption does),
// without the claim that recorded it.
func (c *cluster) setRecorded(s int, kind, id string) {
	c.t.Helper()
	attr, claim := "volume_id", "volume_claim"
	if kind == lease.KindENI {
		attr, claim = "eni_id", "eni_claim"
	}
	_, err := dynamodb.NewFromConfig(c.h.DirectConfig()).UpdateItem(context.Background(), &dynamodb.UpdateItemInput{
		TableName: aws.String(c.cfg.Table),
		Key: map[string]ddbtypes.AttributeValue{"cluster": &ddbtypes.AttributeValueMemberS{Value: c.cfg.Cluster},
			"slot": &ddbtypes.AttributeValueMemberN{Value: fmt.Sprint(s)}},
		UpdateExpression:          aws.String("SET #a = :id REMOVE #c"),
		ExpressionAttributeNames:  map[string]string{"#a": attr, "#c": claim},
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":id": &ddbtypes.AttributeValueMemberS{Value: id}},
	})
	if err != nil {
		c.t.Fatal(err)
	}
}

// Finding: a recorded resource that can never be attached (another subnet or AZ), or
// whose id is malformed (typed by hand), made every launch of the slot abandon (or
// retry until the hook timed out) with no alert, status said "No problems found" and
// reset "nothing to reset". Now it is an identity problem: ABANDON with an ALERT, the
// IdentityAlerts metric and an SNS message; the reconciler and status report it;
// `slotctl reset --yes` forgets it, and the next launch gets a new one.
func TestUnusableRecordedResourceIsAnIdentityProblem(t *testing.T) {
	h := harness.Start(t)
	for _, tc := range []struct {
		name, kind, problem string
		make                func(c *cluster) string // the id to record
		statusSays          string
	}{
		{"ENI in another subnet", lease.KindENI, resources.ProblemUnusable, func(c *cluster) string {
			out, err := c.ec2.CreateNetworkInterface(context.Background(), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(c.w.Subnets[0].ID),
				TagSpecifications: slotTagSpec(ec2types.ResourceTypeNetworkInterface, c.cfg.Cluster, 1)})
			if err != nil {
				t.Fatal(err)
			}
			return aws.ToString(out.NetworkInterface.NetworkInterfaceId)
		}, "is in subnet " /* + subnet a */},
		{"volume in another AZ", lease.KindVolume, resources.ProblemUnusable, func(c *cluster) string {
			out, err := c.ec2.CreateVolume(context.Background(), &ec2.CreateVolumeInput{AvailabilityZone: aws.String(c.w.Subnets[0].AZ), Size: aws.Int32(100),
				TagSpecifications: slotTagSpec(ec2types.ResourceTypeVolume, c.cfg.Cluster, 1)})
			if err != nil {
				t.Fatal(err)
			}
			return aws.ToString(out.VolumeId)
		}, "is in " /* + AZ a */},
		{"malformed volume id", lease.KindVolume, resources.ProblemMalformed, func(*cluster) string { return "vol-0ABC-typo" },
			"is not a well-formed volume id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := kafkatest.Start(t)
			k.SetQuorum(kafkatest.Quorum{Leader: 0, Voters: []int32{0, 2}}) // node 1 is no controller voter
			c := newCluster(t, h, 3, map[string]string{"KAFKA_BOOTSTRAP": strings.Join(k.Addrs, ",")})
			topic := c.withAlerts()
			c.launchAll(c.run(0), c.run(1), c.run(2))
			h.TerminateInstance(t, c.lease(1).Holder)
			if _, err := c.runReconcile(c.reconciler(), c.scheduleEvent()); err != nil {
				t.Fatal(err)
			}
			bad := tc.make(c)
			c.setRecorded(1, tc.kind, bad)

			h.ResetCounts()
			id := c.run(1)
			if err := c.invoke(c.launchEvent(id)); err != nil {
				t.Fatal(err)
			}
			if got := c.completions(id); !slices.Equal(got, []string{"ABANDON"}) {
				t.Fatalf("completions %v, want ABANDON", got)
			}
			alert := fmt.Sprintf("slot 1 %s %s %s", tc.kind, bad, tc.problem)
			if !strings.Contains(c.logs.String(), "ALERT: "+alert) || !strings.Contains(c.metrics.String(), `"Problem":"`+tc.problem+`"`) {
				t.Errorf("no ALERT %q or IdentityAlerts metric with Problem %s:\n%s", alert, tc.problem, tail(c.logs.String(), 20))
			}
			msgs := snsPublished(t, h, topic)
			if len(msgs) != 1 || !strings.Contains(msgs[0][0], alert) || !strings.Contains(msgs[0][1], "slotctl reset 1") {
				t.Fatalf("SNS messages %q, want one %q", msgs, alert)
			}
			attaches := h.Calls("AttachVolume") + h.Calls("CreateVolume")
			if tc.kind == lease.KindENI {
				attaches = h.Calls("AttachNetworkInterface") + h.Calls("CreateNetworkInterface")
			}
			if attaches != 0 {
				t.Errorf("%d attach/create calls of the %s, want 0", attaches, tc.kind)
			}
			rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Identity) != 1 || rep.Identity[0].ID != bad {
				t.Errorf("reconcile identity problems %+v, want %s", rep.Identity, bad)
			}
			code, out, _ := c.slotctlRun("status")
			if code != slotctl.ExitProblem || !strings.Contains(out, bad) || !strings.Contains(out, tc.statusSays) {
				t.Errorf("status exit %d, want 1 naming %s (%q):\n%s", code, bad, tc.statusSays, out)
			}

			code, out, stderr := c.slotctlRun("reset", "1", "--reason", "wrong id recorded at adoption (OPS-7)", "--yes")
			if code != slotctl.ExitOK || !strings.Contains(out, "forget:") || !strings.Contains(out, bad) {
				t.Fatalf("reset --yes: exit %d\n%s\n%s", code, out, stderr)
			}
			next := c.run(1)
			c.launchAll(next)
			l := c.lease(1)
			if l.State != lease.Bound || l.Holder != next || l.Recorded(tc.kind) == "" || l.Recorded(tc.kind) == bad {
				t.Fatalf("after the reset: %+v", l)
			}
			t.Logf("%s recorded: ABANDON with %q, reconcile and status report it; reset forgot it; next launch bound with %s %s",
				bad, msgs[0][0], tc.kind, l.Recorded(tc.kind))
		})
	}
}

// Finding: one transient NotFound right after CreateVolume (EC2 is eventually
// consistent; duplicate deliveries ms apart) made the launch ABANDON and page "volume
// missing ... slotctl reset". A resource recorded by the current claim that is not
// found yet is waited for; the launch continues, with no alert.
func TestTransientNotFoundOfAResourceThisClaimCreated(t *testing.T) {
	h := harness.Start(t)
	for _, tc := range []struct {
		kind, describe, code string
		crashAfterRecord     int // the launch's conditional writes: the claim, the record of the ENI and the volume (one write)
	}{
		{lease.KindVolume, "DescribeVolumes", "InvalidVolume.NotFound", 1},
		{lease.KindENI, "DescribeNetworkInterfaces", "InvalidNetworkInterfaceID.NotFound", 1},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			c := newCluster(t, h, 3, nil)
			topic := c.withAlerts()
			first := c.run(1)
			h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.Crash, Skip: tc.crashAfterRecord, Times: 1})
			if err := c.invoke(c.launchEvent(first)); err == nil {
				t.Fatal("want the injected crash")
			}
			h.ClearFaults()
			rec := c.lease(1)
			if rec.Recorded(tc.kind) == "" || rec.RecordedBy(tc.kind) != rec.Version {
				t.Fatalf("%s not recorded by this claim: %+v", tc.kind, rec)
			}
			// A NotFound that lasts (past the attach timeout, 2 s here) is not taken for
			// gone either: the event is retried, with no alert and no ABANDON.
			poll := c.launch.Poll
			c.launch.Poll.Timeout = 2 * time.Second
			h.Inject(harness.Fault{Action: tc.describe, Kind: harness.Crash, Code: tc.code})
			err := c.invoke(c.launchEvent(first))
			h.ClearFaults()
			c.launch.Poll = poll
			if err == nil || !strings.Contains(err.Error(), "recorded by this claim, to be visible") || len(c.completions(first)) != 0 {
				t.Fatalf("a lasting NotFound: %v, completions %v; want a retry, nothing completed", err, c.completions(first))
			}
			// The redelivery's describe of the recorded resource lags its creation, twice.
			h.ResetCounts()
			h.Inject(harness.Fault{Action: tc.describe, Kind: harness.Crash, Code: tc.code, Times: 2})
			if err := c.invoke(c.launchEvent(first)); err != nil {
				t.Fatal(err)
			}
			h.ClearFaults()
			l := c.lease(1)
			if got := c.completions(first); !slices.Equal(got, []string{"CONTINUE"}) || l.State != lease.Bound || l.Recorded(tc.kind) != rec.Recorded(tc.kind) {
				t.Fatalf("completions %v, lease %+v: want CONTINUE, bound with %s", got, l, rec.Recorded(tc.kind))
			}
			if msgs := snsPublished(t, h, topic); len(msgs) != 0 {
				t.Errorf("alerts %q", msgs)
			}
			t.Logf("%s %s not found twice right after its creation: %d %s calls, then CONTINUE; 0 alerts",
				tc.kind, rec.Recorded(tc.kind), h.Calls(tc.describe), tc.describe)
		})
	}
}

// Finding: two deliveries for the same holder that pick different unrecorded volumes:
// the one that records second got ErrRecordConflict and abandoned. Now it takes the
// volume the lease records.
func TestRecordConflictTakesTheRecordedVolume(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	ctx := context.Background()
	b := c.w.Subnets[1]
	id := c.run(1)
	l, err := c.store.Claim(ctx, c.lease(1), id, b.AZ, "test claim")
	if err != nil {
		t.Fatal(err)
	}
	// Two blank volumes made for this claim (say, the creates of two deliveries with
	// different views); the other delivery has recorded the higher id.
	var ids []string
	for range 2 {
		out, err := c.ec2.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(b.AZ), Size: aws.Int32(100),
			TagSpecifications: slotTagSpec(ec2types.ResourceTypeVolume, c.cfg.Cluster, 1, ec2types.Tag{Key: aws.String(markTag), Value: aws.String(fmt.Sprint(l.Version))})})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, aws.ToString(out.VolumeId))
	}
	slices.Sort(ids)
	if _, err := c.store.Record(ctx, l, lease.KindVolume, ids[1], "", "the other delivery"); err != nil {
		t.Fatal(err)
	}
	m := resources.New(c.cfg, ec2.NewFromConfig(h.AWSConfig()), resources.Poll{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond, Timeout: 5 * time.Second}, newLogger(c.logs))
	recorded := 0
	record := func(ctx context.Context, id, ip string) (lease.Lease, error) {
		recorded++
		return c.store.Record(ctx, l, lease.KindVolume, id, ip, "this delivery")
	}
	// This delivery read the lease before the other one recorded: it finds the lower
	// id by its tags, fails to record it, and goes on with the recorded one.
	v, _, err := m.EnsureVolume(ctx, l, b.AZ, record)
	if err != nil || v.ID != ids[1] {
		t.Fatalf("EnsureVolume: %+v %v, want the recorded %s", v, err, ids[1])
	}
	if got := c.lease(1); got.VolumeID != ids[1] || recorded != 1 {
		t.Errorf("lease records %s after %d record attempts", got.VolumeID, recorded)
	}
	t.Logf("found %s, the lease recorded %s first: EnsureVolume returned %s", ids[0], ids[1], v.ID)
}

// Finding: the reconciler reported as an orphan ("slot N records no volume") a volume
// that a claim in flight had created but not recorded yet. Within SLOTKEEPER_CLAIM_TTL
// of the claim it is not reported; past it, it is. (The launch records the ENI and the
// volume it created in one write after both creates: a crash after CreateVolume leaves
// both unrecorded.)
func TestReconcileLeavesAnInFlightClaimsVolumeAlone(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	first := c.run(1)
	h.Inject(harness.Fault{Action: "CreateVolume", Kind: harness.Crash, Times: 1})
	if err := c.invoke(c.launchEvent(first)); err == nil {
		t.Fatal("want the injected crash")
	}
	h.ClearFaults()
	vols := c.volumes(1)
	if len(vols) != 1 || c.lease(1).VolumeID != "" || c.lease(1).State != lease.Claimed {
		t.Fatalf("volumes %+v, lease %+v: want one unrecorded volume of a claimed slot", vols, c.lease(1))
	}
	rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Orphans) != 0 {
		t.Fatalf("orphans %+v of a claim in flight, want none", rep.Orphans)
	}
	late := c.reconciler()
	late.Now = func() time.Time { return time.Now().Add(c.cfg.ClaimTTL + time.Minute) }
	rep, err = c.runReconcile(late, c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	enis := c.enis(1)
	want := []string{vols[0].ID}
	if len(enis) == 1 {
		want = append(want, enis[0].ID)
	}
	slices.Sort(want)
	got := orphanIDs(rep)
	slices.Sort(got)
	if len(enis) != 1 || !slices.Equal(got, want) {
		t.Errorf("past the claim TTL: orphans %v, want %v (the claim's unrecorded volume and ENI)", got, want)
	}
	t.Logf("unrecorded volume %s of a claim in flight: not an orphan; past the claim TTL (%s): reported (%s)", vols[0].ID, c.cfg.ClaimTTL, rep.Orphans[0].Why)
}

// Finding: docs/deploy.md says slotctl status shows a recorded ENI that is gone or
// tagged for another slot; it showed neither.
func TestStatusShowsTheRecordedENIsProblems(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	c.launchAll(c.run(0), c.run(1), c.run(2))
	ctx := context.Background()
	rec1, rec2 := c.lease(1), c.lease(2)
	if code, out, _ := c.slotctlRun("status"); code != slotctl.ExitOK {
		t.Fatalf("healthy cluster: status exit %d\n%s", code, out)
	}
	// Slot 2's ENI is tagged for slot 0; slot 1's holder dies and its ENI is deleted.
	if _, err := c.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{rec2.ENIID},
		Tags: []ec2types.Tag{{Key: aws.String("slotkeeper:slot"), Value: aws.String("0")}}}); err != nil {
		t.Fatal(err)
	}
	h.TerminateInstance(t, rec1.Holder)
	if _, err := c.runReconcile(c.reconciler(), c.scheduleEvent()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ec2.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(rec1.ENIID)}); err != nil {
		t.Fatal(err)
	}
	code, out, _ := c.slotctlRun("status", "--json")
	for _, want := range []string{
		"slot 1: recorded ENI " + rec1.ENIID + " is gone: launches of the slot abandon until 'slotctl reset 1' gives it a new one",
		"slot 2: recorded ENI " + rec2.ENIID + ` is tagged slotkeeper:cluster=\"` + c.cfg.Cluster + `\" slotkeeper:slot=\"0\"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q", want)
		}
	}
	if code != slotctl.ExitProblem || !strings.Contains(out, `"eni_state": "gone"`) {
		t.Errorf("status exit %d, want 1 and slot 1's ENI gone:\n%s", code, out)
	}
	t.Logf("status exit %d: slot 1's recorded ENI %s gone, slot 2's ENI %s tagged for slot 0, both shown", code, rec1.ENIID, rec2.ENIID)
}
