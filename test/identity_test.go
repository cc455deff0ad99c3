package test

// A slot's identity is its lease: the volume and ENI it records are the only ones the
// slot attaches, grows and names in DNS; tags only find an unrecorded resource on the
// slot's first use and cross-check a recorded one.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"

	"github.com/slotkeeper/slotkeeper/shared/alert"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// withAlerts sends the launch handler's alerts to a new SNS topic at moto and returns
// the topic's ARN.
func (c *cluster) withAlerts() string {
	c.t.Helper()
	out, err := sns.NewFromConfig(c.h.DirectConfig()).CreateTopic(context.Background(), &sns.CreateTopicInput{Name: aws.String(c.cfg.Cluster + "-alerts")})
	if err != nil {
		c.t.Fatal(err)
	}
	arn := aws.ToString(out.TopicArn)
	c.launch.Alerts = &alert.Notifier{SNS: sns.NewFromConfig(c.h.AWSConfig()), TopicARN: arn, Cluster: c.cfg.Cluster}
	return arn
}

func slotTagSpec(kind ec2types.ResourceType, cluster string, s int, extra ...ec2types.Tag) []ec2types.TagSpecification {
	return []ec2types.TagSpecification{{ResourceType: kind, Tags: append([]ec2types.Tag{
		{Key: aws.String("slotkeeper:cluster"), Value: aws.String(cluster)},
		{Key: aws.String("slotkeeper:slot"), Value: aws.String(fmt.Sprint(s))},
	}, extra...)}}
}

// lookAlikeTries bounds the look-alikes made while looking for an id below the recorded
// one (moto's ids are random: a recorded id among the lowest hundredth takes a new
// cluster, see TestLookAlikesNeverTakeTheSlot).
const lookAlikeTries = 100

// lookAlikeVolumes creates volumes carrying slot s's tags in az (a restore from a
// snapshot, a backup tool that copies tags) until one has an id below `below`, and
// returns them all; ok is false when none did within lookAlikeTries.
func (c *cluster) lookAlikeVolumes(s int, az, below string) (ids []string, ok bool) {
	c.t.Helper()
	for range lookAlikeTries {
		out, err := c.ec2.CreateVolume(context.Background(), &ec2.CreateVolumeInput{AvailabilityZone: aws.String(az), Size: aws.Int32(100),
			TagSpecifications: slotTagSpec(ec2types.ResourceTypeVolume, c.cfg.Cluster, s)})
		if err != nil {
			c.t.Fatal(err)
		}
		ids = append(ids, aws.ToString(out.VolumeId))
		if ids[len(ids)-1] < below {
			return ids, true
		}
	}
	return ids, false
}

// lookAlikeENIs is lookAlikeVolumes for ENIs in subnet.
func (c *cluster) lookAlikeENIs(s int, subnet, below string) (ids []string, ok bool) {
	c.t.Helper()
	for range lookAlikeTries {
		out, err := c.ec2.CreateNetworkInterface(context.Background(), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet),
			TagSpecifications: slotTagSpec(ec2types.ResourceTypeNetworkInterface, c.cfg.Cluster, s)})
		if err != nil {
			c.t.Fatal(err)
		}
		ids = append(ids, aws.ToString(out.NetworkInterface.NetworkInterfaceId))
		if ids[len(ids)-1] < below {
			return ids, true
		}
	}
	return ids, false
}

// volumeByID and eniByID describe one resource directly at moto: where it is attached.
func (c *cluster) volumeByID(id string) (attachedTo string, tags map[string]string) {
	c.t.Helper()
	out, err := c.ec2.DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
	if err != nil {
		c.t.Fatalf("describing volume %s: %v", id, err)
	}
	v := out.Volumes[0]
	for _, a := range v.Attachments {
		if a.State == ec2types.VolumeAttachmentStateAttached {
			attachedTo = aws.ToString(a.InstanceId)
		}
	}
	tags = map[string]string{}
	for _, t := range v.Tags {
		tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return attachedTo, tags
}

func (c *cluster) eniByID(id string) (attachedTo, ip string) {
	c.t.Helper()
	out, err := c.ec2.DescribeNetworkInterfaces(context.Background(), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	if err != nil {
		c.t.Fatalf("describing ENI %s: %v", id, err)
	}
	n := out.NetworkInterfaces[0]
	if n.Attachment != nil && n.Attachment.Status == ec2types.AttachmentStatusAttached {
		attachedTo = aws.ToString(n.Attachment.InstanceId)
	}
	return attachedTo, aws.ToString(n.PrivateIpAddress)
}

func orphanIDs(rep reconcile.Report) []string {
	var ids []string
	for _, o := range rep.Orphans {
		ids = append(ids, o.ID)
	}
	slices.Sort(ids)
	return ids
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// Must show 1: look-alike volumes and ENIs with slot 1's tags, one of each with an id
// below the recorded one, exist when slot 1's holder is replaced. The replacement gets
// the recorded volume and ENI; the look-alikes are reported as orphans, the recorded
// ones never; nothing is created.
func TestLookAlikesNeverTakeTheSlot(t *testing.T) {
	h := harness.Start(t)
	var c *cluster
	var ids, vols, enis []string
	var rec lease.Lease
	for attempt := 1; ; attempt++ {
		c = newCluster(t, h, 3, nil)
		ids = []string{c.run(0), c.run(1), c.run(2)}
		c.launchAll(ids...)
		rec = c.lease(1)
		var okV, okE bool
		vols, okV = c.lookAlikeVolumes(1, c.w.Subnets[1].AZ, rec.VolumeID)
		enis, okE = c.lookAlikeENIs(1, c.w.Subnets[1].ID, rec.ENIID)
		if okV && okE {
			break
		}
		if attempt == 3 {
			t.Fatalf("three clusters whose recorded ids are among the lowest: %s %s", rec.VolumeID, rec.ENIID)
		}
		t.Logf("recorded ids %s, %s are among the lowest moto makes: a new cluster", rec.VolumeID, rec.ENIID)
	}
	alikes := sortedCopy(append(slices.Clone(vols), enis...))

	// Slot 1's holder dies; the reconciler frees the slot.
	h.TerminateInstance(t, ids[1])
	rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Released, []int{1}) || !slices.Equal(orphanIDs(rep), alikes) || len(rep.Identity) != 0 {
		t.Fatalf("reconcile released %v, orphans %v (want %v), identity %v", rep.Released, orphanIDs(rep), alikes, rep.Identity)
	}

	h.ResetCounts()
	replacement := c.run(1)
	c.launchAll(replacement)

	after := c.lease(1)
	if after.State != lease.Bound || after.Holder != replacement || after.VolumeID != rec.VolumeID || after.ENIID != rec.ENIID || after.IP != rec.IP {
		t.Fatalf("slot 1 lease %+v, want bound by %s with volume %s, ENI %s (%s)", after, replacement, rec.VolumeID, rec.ENIID, rec.IP)
	}
	if on, _ := c.volumeByID(rec.VolumeID); on != replacement {
		t.Errorf("recorded volume %s is attached to %q, want %s", rec.VolumeID, on, replacement)
	}
	if on, _ := c.eniByID(rec.ENIID); on != replacement {
		t.Errorf("recorded ENI %s is attached to %q, want %s", rec.ENIID, on, replacement)
	}
	for _, v := range vols {
		if on, _ := c.volumeByID(v); on != "" {
			t.Errorf("look-alike volume %s is attached to %s", v, on)
		}
	}
	for _, e := range enis {
		if on, _ := c.eniByID(e); on != "" {
			t.Errorf("look-alike ENI %s is attached to %s", e, on)
		}
	}
	creates := h.Calls("CreateVolume") + h.Calls("CreateNetworkInterface")
	if creates != 0 {
		t.Errorf("the replacement created %d volumes/ENIs, want 0", creates)
	}
	launchCalls := sum(h.CallCounts())

	rep, err = c.runReconcile(c.reconciler(), c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	if got := orphanIDs(rep); !slices.Equal(got, alikes) || slices.Contains(got, rec.VolumeID) || slices.Contains(got, rec.ENIID) {
		t.Errorf("orphans %v, want exactly the look-alikes %v", got, alikes)
	}
	t.Logf("recorded volume %s, ENI %s; look-alike volumes %v (lowest %s), ENIs %v (lowest %s); replacement %s got the recorded ones; "+
		"CreateVolume+CreateNetworkInterface %d; launch AWS calls %d; orphans reported %v",
		rec.VolumeID, rec.ENIID, vols, slices.Min(vols), enis, slices.Min(enis), replacement, creates, launchCalls, orphanIDs(rep))
}

// slotctlRun runs slotctl against this cluster through the proxy, with the cluster's
// name, table, slots and subnets, and its Kafka when it has one.
func (c *cluster) slotctlRun(args ...string) (int, string, string) {
	c.t.Helper()
	vars := map[string]string{"CLUSTER": c.cfg.Cluster, "TABLE": c.cfg.Table, "SLOT_COUNT": fmt.Sprint(c.cfg.SlotCount),
		"SUBNETS": strings.Join(c.cfg.Subnets, ","), "KAFKA_BOOTSTRAP": strings.Join(c.cfg.Kafka.Bootstrap, ",")}
	var out, errOut bytes.Buffer
	code := slotctl.Main(context.Background(), args, slotctl.IO{
		Stdout: &out, Stderr: &errOut,
		Getenv: func(k string) string {
			n, ok := strings.CutPrefix(k, config.Prefix)
			if !ok {
				return ""
			}
			return vars[n]
		},
		Clients: slotctl.NewClients(c.h.AWSConfig()),
	})
	return code, out.String(), errOut.String()
}

// Must show 2: slot 1's recorded volume (or ENI) is deleted. Every replacement
// abandons, with the reason, an ALERT, the IdentityAlerts metric and an SNS message,
// and nothing is created. After `slotctl reset 1 --reason ... --yes` the next launch
// creates a new one, and the slot's history says who and why.
func TestGoneResourceAbandonsUntilReset(t *testing.T) {
	h := harness.Start(t)
	for _, kind := range []string{lease.KindVolume, lease.KindENI} {
		t.Run(kind, func(t *testing.T) {
			// reset asks Kafka whether the slot's node is a controller voter before it
			// forgets a volume: here node 1 is not (voters 0 and 2).
			k := kafkatest.Start(t)
			k.SetQuorum(kafkatest.Quorum{Leader: 0, Voters: []int32{0, 2}})
			c := newCluster(t, h, 3, map[string]string{"KAFKA_BOOTSTRAP": strings.Join(k.Addrs, ",")})
			topic := c.withAlerts()
			ids := []string{c.run(0), c.run(1), c.run(2)}
			c.launchAll(ids...)
			rec := c.lease(1)
			gone := rec.Recorded(kind)
			h.TerminateInstance(t, ids[1])
			if _, err := c.runReconcile(c.reconciler(), c.scheduleEvent()); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var err error
			if kind == lease.KindVolume {
				_, err = c.ec2.DeleteVolume(ctx, &ec2.DeleteVolumeInput{VolumeId: aws.String(gone)})
			} else {
				_, err = c.ec2.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(gone)})
			}
			if err != nil {
				t.Fatalf("deleting %s %s at moto: %v", kind, gone, err)
			}

			// The reconciler reports it as an identity problem, not as anything to create.
			rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Identity) != 1 || rep.Identity[0].ID != gone || !strings.Contains(rep.Identity[0].Why, "no longer exists") || len(rep.Orphans) != 0 {
				t.Errorf("reconcile: identity %+v, orphans %+v; want the gone %s only", rep.Identity, rep.Orphans, gone)
			}

			h.ResetCounts()
			logStart := len(c.logs.String())
			var abandoned []string
			for range 2 { // the group replaces the abandoned instance; the next abandons too
				id := c.run(1)
				if err := c.invoke(c.launchEvent(id)); err != nil {
					t.Fatal(err)
				}
				if got := c.completions(id); !slices.Equal(got, []string{"ABANDON"}) {
					t.Fatalf("%s completions %v, want ABANDON", id, got)
				}
				abandoned = append(abandoned, id)
			}
			if n := h.Calls("CreateVolume") + h.Calls("CreateNetworkInterface"); n != 0 {
				t.Errorf("%d CreateVolume/CreateNetworkInterface calls, want 0", n)
			}
			l := c.lease(1)
			if l.State != lease.Free || l.Recorded(kind) != gone {
				t.Errorf("slot 1 after the abandons: %+v, want free, still recording %s", l, gone)
			}
			logs := c.logs.String()[logStart:]
			reason := fmt.Sprintf("records %s %s", kindName(kind), gone)
			if !strings.Contains(logs, "ALERT: slot 1 "+kind+" "+gone+" missing") || !strings.Contains(logs, reason) || !strings.Contains(logs, "which no longer exists") {
				t.Errorf("the log lacks the ALERT and the reason %q:\n%s", reason, tail(logs, 20))
			}
			if n := strings.Count(c.metrics.String(), `"IdentityAlerts":1`); n < 2 {
				t.Errorf("IdentityAlerts emitted %d times, want 2", n)
			}
			msgs := snsPublished(t, h, topic)
			if len(msgs) != 2 || !strings.Contains(msgs[0][0], "slot 1 "+kind+" "+gone+" missing") || !strings.Contains(msgs[0][1], reason) ||
				!strings.Contains(msgs[0][1], "slotctl reset 1") {
				t.Fatalf("SNS messages %q", msgs)
			}

			// The operator's act: a dry run first, then --yes.
			why := fmt.Sprintf("the %s was deleted by mistake (ticket OPS-42)", kindName(kind))
			code, out, stderr := c.slotctlRun("reset", "1", "--reason", why)
			if code != slotctl.ExitRefused || !strings.Contains(out, "forget:") || !strings.Contains(stderr, "dry run") {
				t.Fatalf("dry run: exit %d\n%s\n%s", code, out, stderr)
			}
			if got := c.lease(1); got.Recorded(kind) != gone {
				t.Fatalf("the dry run changed the lease: %+v", got)
			}
			code, out, stderr = c.slotctlRun("reset", "1", "--reason", why, "--yes", "--json")
			var rs slotctl.Reset
			if err := json.Unmarshal([]byte(out), &rs); code != 0 || err != nil || !rs.Done || len(rs.Forget) != 1 || rs.Forget[0].ID != gone {
				t.Fatalf("reset --yes: exit %d %v\n%s\n%s", code, err, out, stderr)
			}

			h.ResetCounts()
			next := c.run(1)
			c.launchAll(next)
			after := c.lease(1)
			fresh := after.Recorded(kind)
			if after.State != lease.Bound || after.Holder != next || fresh == "" || fresh == gone {
				t.Fatalf("after the reset: %+v, want bound by %s with a new %s", after, next, kind)
			}
			created := h.Calls("CreateVolume")
			if kind == lease.KindENI {
				created = h.Calls("CreateNetworkInterface")
			} else if _, tags := c.volumeByID(fresh); tags["slotkeeper:never-formatted"] != fmt.Sprint(after.Version) {
				t.Errorf("the new volume %s lacks the never-formatted mark of claim %d: %v", fresh, after.Version, tags)
			}
			if created != 1 {
				t.Errorf("%d creates after the reset, want 1", created)
			}
			var entry *lease.Transition
			for i, tr := range after.History {
				if strings.Contains(tr.Reason, why) {
					entry = &after.History[i]
				}
			}
			if entry == nil || !strings.HasPrefix(entry.Actor, "slotctl/arn:aws:") || !strings.Contains(entry.Reason, gone) {
				t.Fatalf("no history entry with the reset's actor and reason: %+v", after.History)
			}
			code, out, _ = c.slotctlRun("history", "1")
			if code != 0 || !strings.Contains(out, why) || !strings.Contains(out, "slotctl/") {
				t.Errorf("slotctl history does not show the reset:\n%s", out)
			}
			t.Logf("%s %s deleted: %d launches abandoned (%v), 0 creates, %d SNS alerts (%q); reset by %q: %q; next launch created %s %s",
				kind, gone, len(abandoned), abandoned, len(msgs), msgs[0][0], entry.Actor, entry.Reason, kind, fresh)
		})
	}
}

func kindName(kind string) string {
	if kind == lease.KindENI {
		return "ENI"
	}
	return kind
}

// A recorded volume whose tags name another slot is refused with an ALERT, and
// nothing is attached or created; tagged back, it is the slot's again.
func TestRecordedVolumeTaggedForAnotherSlotIsRefused(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	topic := c.withAlerts()
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	rec := c.lease(1)
	h.TerminateInstance(t, ids[1])
	if _, err := c.runReconcile(c.reconciler(), c.scheduleEvent()); err != nil {
		t.Fatal(err)
	}
	retag := func(slot string) {
		t.Helper()
		if _, err := c.ec2.CreateTags(context.Background(), &ec2.CreateTagsInput{Resources: []string{rec.VolumeID},
			Tags: []ec2types.Tag{{Key: aws.String("slotkeeper:slot"), Value: aws.String(slot)}}}); err != nil {
			t.Fatal(err)
		}
	}
	retag("2")
	rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Identity) != 1 || rep.Identity[0].ID != rec.VolumeID || slices.Contains(orphanIDs(rep), rec.VolumeID) {
		t.Errorf("reconcile: identity %+v, orphans %v; want the recorded volume as an identity problem, not an orphan", rep.Identity, orphanIDs(rep))
	}
	h.ResetCounts()
	id := c.run(1)
	if err := c.invoke(c.launchEvent(id)); err != nil {
		t.Fatal(err)
	}
	if got := c.completions(id); !slices.Equal(got, []string{"ABANDON"}) {
		t.Fatalf("completions %v, want ABANDON", got)
	}
	if n := h.Calls("AttachVolume") + h.Calls("CreateVolume"); n != 0 {
		t.Errorf("%d AttachVolume/CreateVolume calls, want 0", n)
	}
	msgs := snsPublished(t, h, topic)
	if len(msgs) != 1 || !strings.Contains(msgs[0][0], "tags") || !strings.Contains(msgs[0][1], `slotkeeper:slot="2"`) {
		t.Fatalf("SNS messages %q", msgs)
	}
	// Without the cluster tag the volume leaves the cluster's listing; the reconciler
	// still describes it by its recorded id.
	if _, err := c.ec2.DeleteTags(context.Background(), &ec2.DeleteTagsInput{Resources: []string{rec.VolumeID},
		Tags: []ec2types.Tag{{Key: aws.String("slotkeeper:cluster")}}}); err != nil {
		t.Fatal(err)
	}
	rep, err = c.runReconcile(c.reconciler(), c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Identity) != 1 || !strings.Contains(rep.Identity[0].Why, `slotkeeper:cluster="" slotkeeper:slot="2"`) {
		t.Errorf("reconcile without the cluster tag: identity %+v", rep.Identity)
	}
	if _, err := c.ec2.CreateTags(context.Background(), &ec2.CreateTagsInput{Resources: []string{rec.VolumeID},
		Tags: []ec2types.Tag{{Key: aws.String("slotkeeper:cluster"), Value: aws.String(c.cfg.Cluster)}}}); err != nil {
		t.Fatal(err)
	}
	retag("1")
	next := c.run(1)
	c.launchAll(next)
	if l := c.lease(1); l.State != lease.Bound || l.Holder != next || l.VolumeID != rec.VolumeID {
		t.Fatalf("after tagging it back: %+v", l)
	}
	t.Logf("volume %s tagged slot 2: launch abandoned with %q; tagged back: %s bound with it", rec.VolumeID, msgs[0][0], next)
}

// Must show 3: a crash between CreateVolume (or CreateNetworkInterface) and the write
// that records it, at every point: after the create took effect, and after the record
// took effect; then the same event again, or the slot taken by another instance (a
// later claim, whose client token differs). In the end one volume and one ENI, both
// recorded and attached; the reconciler reports no orphan.
func TestCrashBetweenCreateAndRecord(t *testing.T) {
	h := harness.Start(t)
	// The launch's conditional writes, in order: the claim, the record of the ENI and
	// the volume (one write, after both creates), the bind.
	points := []struct {
		name  string
		fault harness.Fault
	}{
		{"after CreateNetworkInterface", harness.Fault{Action: "CreateNetworkInterface", Kind: harness.Crash, Times: 1}},
		{"after CreateVolume", harness.Fault{Action: "CreateVolume", Kind: harness.Crash, Times: 1}},
		{"after the record", harness.Fault{Action: "UpdateItem", Kind: harness.Crash, Skip: 1, Times: 1}},
	}
	for _, p := range points {
		for _, then := range []string{"redelivered", "another instance"} {
			t.Run(p.name+", "+then, func(t *testing.T) {
				c := newCluster(t, h, 3, nil)
				first := c.run(1)
				h.ResetCounts()
				h.Inject(p.fault)
				err := c.invoke(c.launchEvent(first))
				h.ClearFaults()
				if err == nil || !strings.Contains(err.Error(), "InjectedCrash") {
					t.Fatalf("first delivery: %v, want the injected crash", err)
				}
				holder := first
				switch then {
				case "redelivered":
					if err := c.invoke(c.launchEvent(first)); err != nil {
						t.Fatal(err)
					}
				case "another instance":
					// The claimer dies; the reconciler frees its claim; another instance
					// takes the slot at a later version.
					h.TerminateInstance(t, first)
					if rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent()); err != nil || !slices.Equal(rep.Released, []int{1}) {
						t.Fatalf("reconcile: %+v %v", rep, err)
					}
					holder = c.run(1)
					c.launchAll(holder)
				}
				l := c.lease(1)
				vols, enis := c.volumes(1), c.enis(1)
				if len(vols) != 1 || len(enis) != 1 {
					t.Fatalf("slot 1 has %d volumes %v and %d ENIs %v, want one each", len(vols), vols, len(enis), enis)
				}
				if l.State != lease.Bound || l.Holder != holder || l.VolumeID != vols[0].ID || l.ENIID != enis[0].ID ||
					vols[0].AttachedTo != holder || enis[0].AttachedTo != holder {
					t.Fatalf("lease %+v; volume %+v, ENI %+v: want both recorded and attached to %s", l, vols[0], enis[0], holder)
				}
				// The volume was never used: its never-formatted mark names the claim that
				// holds it now (re-stamped when another instance took the slot), so its
				// broker formats it.
				_, tags := c.volumeByID(l.VolumeID)
				if tags["slotkeeper:never-formatted"] != fmt.Sprint(l.Version) || l.VolumeClaim == 0 {
					t.Fatalf("volume %s (recorded by claim %d) is marked %q, want the holder's claim %d", l.VolumeID, l.VolumeClaim, tags["slotkeeper:never-formatted"], l.Version)
				}
				rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
				if err != nil {
					t.Fatal(err)
				}
				if len(rep.Orphans) != 0 || len(rep.Identity) != 0 {
					t.Fatalf("orphans %+v, identity %+v, want none", rep.Orphans, rep.Identity)
				}
				t.Logf("CreateVolume calls %d, CreateNetworkInterface calls %d; end: volume %s (recorded by claim %d, marked for claim %s), ENI %s recorded and attached to %s; orphans 0",
					h.Calls("CreateVolume"), h.Calls("CreateNetworkInterface"), l.VolumeID, l.VolumeClaim, tags["slotkeeper:never-formatted"], l.ENIID, holder)
			})
		}
	}
}

// lowerLookAlikes runs setup (which builds a cluster and returns slot s's recorded
// volume or ENI id) and makes look-alikes of that kind with s's tags until one sorts
// below the recorded id, with a new cluster when the recorded id is among the lowest
// moto makes. It returns the cluster and the look-alikes.
func lowerLookAlikes(t *testing.T, kind string, s int, setup func() (*cluster, string)) (*cluster, []string) {
	t.Helper()
	for attempt := 1; attempt <= 3; attempt++ {
		c, recorded := setup()
		var ids []string
		var ok bool
		if kind == lease.KindVolume {
			ids, ok = c.lookAlikeVolumes(s, c.w.Subnets[s%3].AZ, recorded)
		} else {
			ids, ok = c.lookAlikeENIs(s, c.w.Subnets[s%3].ID, recorded)
		}
		if ok {
			return c, ids
		}
		t.Logf("recorded %s %s is among the lowest ids moto makes: a new cluster", kind, recorded)
	}
	t.Fatalf("three clusters whose recorded %s ids are among the lowest", kind)
	return nil, nil
}

// Must show 5 (grow): a look-alike volume with slot 1's tags and a lower id exists;
// the disk alarm grows the recorded volume. A recorded volume whose tags name another
// slot is not grown: the alarm alerts instead.
func TestGrowActsOnTheRecordedVolume(t *testing.T) {
	h := harness.Start(t)
	sent := recordSendCommands(t, h)
	var r *growRig
	_, alikes := lowerLookAlikes(t, lease.KindVolume, 1, func() (*cluster, string) {
		r = newGrowRig(t, h, 3, nil)
		r.launchAll(r.run(0), r.run(1), r.run(2))
		return r.cluster, r.lease(1).VolumeID
	})
	rec := r.lease(1)
	h.ResetCounts()
	sentBefore := len(sent())
	res := r.mustDeliver(r.alarmAction(1, 85, time.Now().Add(-time.Minute)))
	if res.Outcome != grow.OutcomeGrown || res.VolumeID != rec.VolumeID || res.ToGiB != 142 {
		t.Fatalf("result %+v, want %s grown to 142 GiB", res, rec.VolumeID)
	}
	bodies := h.Bodies("ModifyVolume")
	if len(bodies) != 1 || !strings.Contains(string(bodies[0]), "VolumeId="+rec.VolumeID) {
		t.Fatalf("ModifyVolume requests %q, want one for %s", bodies, rec.VolumeID)
	}
	for _, v := range alikes {
		out, err := r.ec2.DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{VolumeIds: []string{v}})
		if err != nil || aws.ToInt32(out.Volumes[0].Size) != 100 {
			t.Errorf("look-alike %s changed: %v %v", v, out, err)
		}
	}
	if g := r.growth(1); len(g.History) != 1 || g.History[0].VolumeID != rec.VolumeID {
		t.Errorf("growth history %+v, want one growth of %s", g.History, rec.VolumeID)
	}
	if n := len(sent()) - sentBefore; n != 1 {
		t.Errorf("%d filesystem commands, want 1", n)
	}

	// The recorded volume's tags now name slot 2: refused, with an alert, nothing modified.
	if _, err := r.ec2.CreateTags(context.Background(), &ec2.CreateTagsInput{Resources: []string{rec.VolumeID},
		Tags: []ec2types.Tag{{Key: aws.String("slotkeeper:slot"), Value: aws.String("2")}}}); err != nil {
		t.Fatal(err)
	}
	h.ResetCounts()
	res = r.mustDeliver(r.alarmAction(1, 90, time.Now()))
	if res.Outcome != grow.OutcomeFailed || !strings.Contains(res.Reason, `slotkeeper:slot="2"`) || h.Calls("ModifyVolume") != 0 {
		t.Fatalf("result %+v with %d ModifyVolume calls, want failed (tags) and none", res, h.Calls("ModifyVolume"))
	}
	if !strings.Contains(r.growLogs.String(), "ALERT: slot 1 volume growth refused") {
		t.Errorf("no ALERT logged for the refused growth")
	}
	t.Logf("recorded %s grown 100 -> 142 GiB; look-alikes %v (lowest %s) untouched; mis-tagged: %s, 0 ModifyVolume",
		rec.VolumeID, alikes, slices.Min(alikes), res.Outcome)
}

// Must show 5 (DNS): look-alike ENIs with slot 1's tags (lower id, other IPs) exist
// when slot 1's holder is replaced; broker-1 and the bootstrap record carry the
// recorded ENI's IP, through the launch, the dns function and a reconcile repair.
func TestDNSFollowsTheRecordedENI(t *testing.T) {
	h := harness.Start(t)
	var d *dnsCluster
	var ids []string
	_, alikes := lowerLookAlikes(t, lease.KindENI, 1, func() (*cluster, string) {
		d = newDNSCluster(t, h, 3, nil)
		ids = []string{d.run(0), d.run(1), d.run(2)}
		d.launchAll(ids...)
		return d.cluster, d.lease(1).ENIID
	})
	rec := d.lease(1)
	var alikeIPs []string
	for _, e := range alikes {
		_, ip := d.eniByID(e)
		alikeIPs = append(alikeIPs, ip)
	}
	h.TerminateInstance(t, ids[1])
	if _, err := d.runReconcile(d.reconciler(), d.scheduleEvent()); err != nil {
		t.Fatal(err)
	}
	replacement := d.run(1)
	d.launchAll(replacement)
	if _, err := d.deliver(d.stateEvent(replacement, "running")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.syncer.Reconcile(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if got := d.broker(1); !slices.Equal(got, []string{rec.IP}) {
		t.Fatalf("broker-1 = %v, want [%s] (the recorded ENI %s); look-alike IPs %v", got, rec.IP, rec.ENIID, alikeIPs)
	}
	boot := d.bootstrap()
	if !slices.Contains(boot, rec.IP) {
		t.Errorf("bootstrap %v lacks the recorded IP %s", boot, rec.IP)
	}
	for _, ip := range alikeIPs {
		if ip != rec.IP && (slices.Contains(boot, ip) || slices.Contains(d.broker(1), ip)) {
			t.Errorf("a look-alike's IP %s is in DNS: bootstrap %v", ip, boot)
		}
	}
	t.Logf("recorded ENI %s (%s); look-alikes %v with IPs %v (lowest %s); broker-1 = %v, bootstrap = %v",
		rec.ENIID, rec.IP, alikes, alikeIPs, slices.Min(alikes), d.broker(1), boot)
}

// Must show 5 (reconcile): the dead holder of slot 1 has the recorded ENI and a
// look-alike ENI (slot 1's tags, a lower id) attached. The reconciler detaches the
// recorded one, leaves the look-alike alone, reports it (and a look-alike volume) as
// orphans, and never the recorded ones.
func TestReconcileActsOnTheRecordedIDs(t *testing.T) {
	h := harness.Start(t)
	var ids []string
	var c *cluster
	c, enis := lowerLookAlikes(t, lease.KindENI, 1, func() (*cluster, string) {
		c = newCluster(t, h, 3, nil)
		ids = []string{c.run(0), c.run(1), c.run(2)}
		c.launchAll(ids...)
		return c, c.lease(1).ENIID
	})
	rec := c.lease(1)
	ctx := context.Background()
	alike := slices.Min(enis)
	if _, err := c.ec2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(alike),
		InstanceId: aws.String(ids[1]), DeviceIndex: aws.Int32(2)}); err != nil {
		t.Fatal(err)
	}
	vols, _ := c.lookAlikeVolumes(1, c.w.Subnets[1].AZ, rec.VolumeID)
	h.TerminateInstance(t, ids[1])
	h.ResetCounts()

	rep, err := c.runReconcile(c.reconciler(), c.scheduleEvent())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Released, []int{1}) {
		t.Fatalf("released %v, want [1]", rep.Released)
	}
	if on, _ := c.eniByID(rec.ENIID); on != "" {
		t.Errorf("recorded ENI %s still attached to %s", rec.ENIID, on)
	}
	if on, _ := c.eniByID(alike); on != ids[1] {
		t.Errorf("look-alike ENI %s was touched: attached to %q, want still %s", alike, on, ids[1])
	}
	if bodies := h.Bodies("DetachNetworkInterface"); len(bodies) != 1 {
		t.Errorf("%d ENI detaches, want 1 (the recorded ENI's)", len(bodies))
	}
	want := sortedCopy(append(slices.Clone(enis), vols...))
	if got := orphanIDs(rep); !slices.Equal(got, want) || slices.Contains(got, rec.ENIID) || slices.Contains(got, rec.VolumeID) {
		t.Errorf("orphans %v, want the look-alikes %v", got, want)
	}
	t.Logf("dead holder %s: recorded ENI %s detached; look-alike ENI %s (lower) left attached; orphans %v; identity problems %d",
		ids[1], rec.ENIID, alike, orphanIDs(rep), len(rep.Identity))
}
