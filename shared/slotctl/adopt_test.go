package slotctl_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// broker is an instance that ran a broker before slotkeeper: launched from the group's
// template in subnet i with its data on EBS volumes that go with it
// (DeleteOnTermination=true, as a launch template's block device mapping makes them),
// and optionally a secondary ENI carrying the broker's address.
type broker struct {
	id, eni, ip string
	root        string            // the root volume
	volumes     map[string]string // device -> volume id
}

func runBroker(t *testing.T, st *demo.Stage, i int, devices []string, withENI, inGroup bool) broker {
	t.Helper()
	ctx := context.Background()
	direct := ec2.NewFromConfig(st.H.DirectConfig())
	in := &ec2.RunInstancesInput{
		LaunchTemplate:   &ec2types.LaunchTemplateSpecification{LaunchTemplateName: aws.String(st.Config.Cluster + "-broker"), Version: aws.String("$Latest")},
		SubnetId:         aws.String(st.World.Subnets[i].ID),
		SecurityGroupIds: []string{st.World.SecurityGroupID}, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
	}
	img, err := direct.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{st.World.AMI}})
	if err != nil || len(img.Images) != 1 {
		t.Fatalf("the world's image: %v", err)
	}
	root := aws.ToString(img.Images[0].RootDeviceName)
	in.BlockDeviceMappings = []ec2types.BlockDeviceMapping{{DeviceName: aws.String(root),
		Ebs: &ec2types.EbsBlockDevice{VolumeSize: aws.Int32(8), DeleteOnTermination: aws.Bool(true)}}}
	for _, d := range devices {
		in.BlockDeviceMappings = append(in.BlockDeviceMappings, ec2types.BlockDeviceMapping{DeviceName: aws.String(d),
			Ebs: &ec2types.EbsBlockDevice{VolumeSize: aws.Int32(200), VolumeType: ec2types.VolumeTypeGp3, DeleteOnTermination: aws.Bool(true)}})
	}
	if inGroup {
		in.TagSpecifications = []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance,
			Tags: []ec2types.Tag{{Key: aws.String("aws:autoscaling:groupName"), Value: aws.String(st.Config.ASGName)}}}}
	}
	out, err := direct.RunInstances(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	b := broker{id: aws.ToString(out.Instances[0].InstanceId), volumes: map[string]string{}}
	if withENI {
		eni, err := direct.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(st.World.Subnets[i].ID), Groups: []string{st.World.SecurityGroupID}})
		if err != nil {
			t.Fatal(err)
		}
		b.eni, b.ip = aws.ToString(eni.NetworkInterface.NetworkInterfaceId), aws.ToString(eni.NetworkInterface.PrivateIpAddress)
		if _, err := direct.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(b.eni),
			InstanceId: aws.String(b.id), DeviceIndex: aws.Int32(1)}); err != nil {
			t.Fatal(err)
		}
	}
	desc, err := direct.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{b.id}})
	if err != nil {
		t.Fatal(err)
	}
	inst := desc.Reservations[0].Instances[0]
	for _, m := range inst.BlockDeviceMappings {
		b.volumes[aws.ToString(m.DeviceName)] = aws.ToString(m.Ebs.VolumeId)
		if aws.ToString(m.DeviceName) == aws.ToString(inst.RootDeviceName) {
			b.root = aws.ToString(m.Ebs.VolumeId)
		}
	}
	if b.root == "" {
		t.Fatalf("%s has no root volume among %v", b.id, b.volumes)
	}
	if inGroup {
		join(t, st, b.id)
	}
	return b
}

// slotctl adopt against moto: the refusals (each with its exit code and reason, and no
// change), the dry run (no mutating call), --yes (the slot bound to the broker, its
// volume and ENI kept and tagged, the instance tagged, the alarm and DNS repaired),
// a second run that changes nothing, and a replacement of the adopted instance that
// the real launch handler gives the adopted volume and ENI.
func TestAdopt(t *testing.T) {
	h := harness.Start(t)
	st := newStage(t, h, "ad", demo.StageOptions{})
	ctx := context.Background()
	direct := ec2.NewFromConfig(h.DirectConfig())
	store := lease.NewStore(dynamodb.NewFromConfig(h.DirectConfig()), st.Config.Table, st.Config.Cluster)
	if _, err := autoscaling.NewFromConfig(h.DirectConfig()).UpdateAutoScalingGroup(ctx, &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String(st.Config.ASGName), MaxSize: aws.Int32(6)}); err != nil {
		t.Fatal(err)
	}

	a := runBroker(t, st, 1, []string{"/dev/sdf"}, true, true)                   // the one to adopt into slot 1
	twoVols := runBroker(t, st, 0, []string{"/dev/sdg", "/dev/sdh"}, true, true) // two candidate volumes
	outside := runBroker(t, st, 2, []string{"/dev/sdf"}, true, false)            // not in the group
	holder := runBroker(t, st, 2, []string{"/dev/sdf"}, true, true)              // holds slot 2 already
	other := runBroker(t, st, 2, []string{"/dev/sdf"}, true, true)               // wants slot 2
	l, err := store.Claim(ctx, lease.Lease{Slot: 2, State: lease.Free}, holder.id, "us-east-1c", "test")
	if err == nil {
		_, err = store.Bind(ctx, l, lease.Binding{VolumeID: holder.volumes["/dev/sdf"], ENIID: holder.eni, IP: holder.ip}, "test")
	}
	if err != nil {
		t.Fatal(err)
	}

	// The broker on a is node 1 (slot 1's), and advertises its ENI's address.
	st.Kafka.Advertise(1, a.ip)

	vars := map[string]string{}
	for k, v := range st.Vars {
		vars[config.Prefix+k] = v
	}
	run := func(args ...string) result {
		var out, errOut bytes.Buffer
		code := slotctl.Main(ctx, append([]string{"adopt"}, args...), slotctl.IO{Stdout: &out, Stderr: &errOut,
			Getenv: func(k string) string { return vars[k] }, Clients: slotctl.NewClients(h.AWSConfig())})
		return result{code: code, stdout: out.String(), stderr: errOut.String()}
	}
	setVar := func(k, v string) func() {
		old, had := vars[config.Prefix+k]
		if v == "" {
			delete(vars, config.Prefix+k)
		} else {
			vars[config.Prefix+k] = v
		}
		return func() {
			if had {
				vars[config.Prefix+k] = old
			} else {
				delete(vars, config.Prefix+k)
			}
		}
	}
	mark := func(on bool) {
		tags := []ec2types.Tag{{Key: aws.String("slotkeeper:never-formatted"), Value: aws.String("true")}}
		var err error
		if on {
			_, err = direct.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{a.volumes["/dev/sdf"]}, Tags: tags})
		} else {
			_, err = direct.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{a.volumes["/dev/sdf"]}, Tags: tags})
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	t.Run("refusals", func(t *testing.T) {
		tests := []struct {
			name     string
			args     []string
			setup    func() func()
			wantCode int
			wantErr  string
		}{
			{"wrong AZ", []string{a.id, "--slot", "0", "--yes"}, nil, slotctl.ExitRefused, "wrong AZ: slot 0 lives in us-east-1a"},
			{"slot held", []string{other.id, "--slot", "2", "--yes"}, nil, slotctl.ExitRefused, "slot 2 is held: bound by " + holder.id},
			{"instance not in the group", []string{outside.id, "--slot", "2", "--yes"}, nil, slotctl.ExitRefused, "is not in group ad-brokers"},
			{"two candidate volumes", []string{twoVols.id, "--slot", "0", "--yes"}, nil, slotctl.ExitRefused,
				"2 candidate volumes on " + twoVols.id + " and none at /dev/sdf"},
			{"a volume marked never formatted", []string{a.id, "--slot", "1", "--yes"}, func() func() { mark(true); return func() { mark(false) } },
				slotctl.ExitRefused, "carries the never-formatted mark slotkeeper:never-formatted=true"},
			{"the root volume", []string{a.id, "--slot", "1", "--volume", a.root, "--yes"}, nil, slotctl.ExitRefused, "is the root volume"},
			{"an instance that does not exist", []string{"i-0123456789abcdef0", "--slot", "1", "--yes"}, nil, slotctl.ExitRefused, "does not exist"},
			// Kafka's metadata must show the slot's node on the instance.
			{"the broker is another node", []string{a.id, "--slot", "1", "--yes"},
				func() func() {
					st.Kafka.Advertise(1, "127.0.0.1")
					st.Kafka.Advertise(4, a.ip)
					return func() { st.Kafka.Reset(); st.Kafka.Advertise(1, a.ip) }
				},
				slotctl.ExitRefused, "the broker on " + a.id + " is node 4 (" + a.ip + ":9092), not node 1 (slot 1)"},
			{"the node is elsewhere", []string{a.id, "--slot", "1", "--yes"},
				func() func() { st.Kafka.Advertise(1, "10.9.9.9"); return func() { st.Kafka.Advertise(1, a.ip) } },
				slotctl.ExitRefused, "node 1 is registered at 10.9.9.9:"},
			{"the node is not registered", []string{a.id, "--slot", "1", "--yes"},
				func() func() { st.Kafka.Unregister(1); return func() { st.Kafka.Register(1) } },
				slotctl.ExitRefused, "Kafka lists no broker on " + a.id + " and no node 1"},
			{"no Kafka bootstrap", []string{a.id, "--slot", "1", "--yes"},
				func() func() { return setVar("KAFKA_BOOTSTRAP", "") },
				slotctl.ExitRefused, "cannot check that the broker on " + a.id + " is node 1: no Kafka bootstrap configured"},
			{"Kafka unreachable", []string{a.id, "--slot", "1", "--yes"},
				func() func() { return setVar("KAFKA_BOOTSTRAP", closedAddr(t)) },
				slotctl.ExitUnreachable, "checking that the broker on " + a.id + " is node 1"},
			{"no slot given", []string{a.id}, nil, slotctl.ExitUsage, "adopt needs --slot"},
			{"not an instance id", []string{"vol-1", "--slot", "1"}, nil, slotctl.ExitUsage, `"vol-1" is not an instance id`},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if tt.setup != nil {
					defer tt.setup()()
				}
				h.ResetCounts()
				r := run(append(tt.args, "--json")...)
				doc := decode[map[string]any](t, r)
				msg, _ := doc["error"].(string)
				hint, _ := doc["hint"].(string)
				if r.code != tt.wantCode || !strings.Contains(msg, tt.wantErr) || hint == "" || doc["exit_code"] != float64(tt.wantCode) {
					t.Errorf("exit %d, document %v; want exit %d, an error with %q and a hint", r.code, doc, tt.wantCode, tt.wantErr)
				}
				if m := h.MutatingCalls(); len(m) > 0 {
					t.Errorf("a refused adopt made mutating calls %v", m)
				}
				t.Logf("exit %d: %s (hint: %s)", r.code, msg, hint)
			})
		}
	})

	vol := a.volumes["/dev/sdf"]
	t.Run("dry run", func(t *testing.T) {
		h.ResetCounts()
		r := run(a.id, "--slot", "1", "--json")
		doc := decode[slotctl.Adoption](t, r)
		if r.code != slotctl.ExitRefused || !doc.DryRun || doc.Done || doc.Volume != vol || doc.ENI != a.eni || doc.IP != a.ip || len(doc.Plan) != 6 ||
			!doc.KafkaVerified || !strings.HasPrefix(doc.KafkaAddress, a.ip+":") {
			t.Errorf("dry run: exit %d, %+v", r.code, doc)
		}
		if m := h.MutatingCalls(); len(m) > 0 {
			t.Errorf("the dry run made mutating calls %v", m)
		}
		human := run(a.id, "--slot", "1")
		if m := h.MutatingCalls(); len(m) > 0 || human.code != slotctl.ExitRefused {
			t.Errorf("the dry run for people: exit %d, mutating calls %v", human.code, m)
		}
		t.Logf("slotctl adopt %s --slot 1 (exit %d):\n%s%s", a.id, human.code, human.stdout, human.stderr)
	})

	t.Run("--no-kafka-check", func(t *testing.T) {
		// With Kafka out of reach, the explicit flag lets the plan through, unverified.
		defer setVar("KAFKA_BOOTSTRAP", closedAddr(t))()
		h.ResetCounts()
		r := run(a.id, "--slot", "1", "--no-kafka-check", "--json")
		doc := decode[slotctl.Adoption](t, r)
		if r.code != slotctl.ExitRefused || !doc.DryRun || doc.KafkaVerified || len(doc.Plan) != 6 {
			t.Errorf("dry run with --no-kafka-check: exit %d, %+v", r.code, doc)
		}
		human := run(a.id, "--slot", "1", "--no-kafka-check")
		if !strings.Contains(human.stdout, "was NOT checked in Kafka (--no-kafka-check)") {
			t.Errorf("the plan does not say the node id was not checked:\n%s", human.stdout)
		}
		if m := h.MutatingCalls(); len(m) > 0 {
			t.Errorf("the dry run made mutating calls %v", m)
		}
	})

	t.Run("--yes binds the slot", func(t *testing.T) {
		h.ResetCounts()
		r := run(a.id, "--slot", "1", "--yes", "--json")
		doc := decode[slotctl.Adoption](t, r)
		if r.code != slotctl.ExitOK || !doc.Done || doc.Already || doc.LeaseVersion != 1 || len(doc.Repairs) != 2 {
			t.Fatalf("adopt: exit %d, %+v\nstderr %s", r.code, doc, r.stderr)
		}
		t.Logf("mutating calls: %v", h.MutatingCalls())
		want := []string{"ModifyInstanceAttribute", "UpdateItem", "UpdateItem", "UpdateItem", "CreateTags", "CreateTags", "CreateTags", "UpdateItem", "PutMetricAlarm", "ChangeResourceRecordSets"}
		if m := h.MutatingCalls(); !slices.Equal(m, want) {
			t.Errorf("mutating calls %v, want %v", m, want)
		}
		l, err := store.Get(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if l.State != lease.Bound || l.Holder != a.id || l.VolumeID != vol || l.ENIID != a.eni || l.IP != a.ip || l.HolderAZ != "us-east-1b" ||
			len(l.History) != 4 || !strings.HasPrefix(l.History[0].Reason, "adopted by slotctl") || l.History[0].Actor != "slotctl/adopt" {
			t.Errorf("lease %+v", l)
		}
		desc, err := direct.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{a.id}})
		if err != nil {
			t.Fatal(err)
		}
		inst := desc.Reservations[0].Instances[0]
		for _, m := range inst.BlockDeviceMappings {
			if aws.ToString(m.DeviceName) == "/dev/sdf" && aws.ToBool(m.Ebs.DeleteOnTermination) {
				t.Errorf("volume %s still goes with the instance", vol)
			}
		}
		tags := map[string]string{}
		for _, tg := range inst.Tags {
			tags[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
		}
		if tags[resources.TagCluster] != "ad" || tags[resources.TagSlot] != "1" || tags[resources.TagNodeID] != "1" || tags[resources.TagLease] != "1" {
			t.Errorf("instance tags %v", tags)
		}
		slotTags := []ec2types.Filter{{Name: aws.String("tag:" + resources.TagCluster), Values: []string{"ad"}}, {Name: aws.String("tag:" + resources.TagSlot), Values: []string{"1"}}}
		if v, err := direct.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: slotTags}); err != nil || len(v.Volumes) != 1 || aws.ToString(v.Volumes[0].VolumeId) != vol {
			t.Errorf("volumes tagged for slot 1: %+v %v", v, err)
		}
		if e, err := direct.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: slotTags}); err != nil || len(e.NetworkInterfaces) != 1 || aws.ToString(e.NetworkInterfaces[0].NetworkInterfaceId) != a.eni {
			t.Errorf("ENIs tagged for slot 1: %+v %v", e, err)
		}
		alarms, err := awsapi.NewCloudWatch(h.DirectConfig()).DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{AlarmNames: []string{grow.AlarmName("ad", 1)}})
		if err != nil || len(alarms.MetricAlarms) != 1 || !slices.ContainsFunc(alarms.MetricAlarms[0].Dimensions, func(d cwtypes.Dimension) bool { return aws.ToString(d.Value) == a.id }) {
			t.Errorf("disk alarm of slot 1: %+v %v", alarms, err)
		}
		recs, err := route53.NewFromConfig(h.DirectConfig()).ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(st.ZoneID)})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(recs.ResourceRecordSets, func(r r53types.ResourceRecordSet) bool {
			return aws.ToString(r.Name) == "broker-1.ad.kafka.internal." && len(r.ResourceRecords) == 1 && aws.ToString(r.ResourceRecords[0].Value) == a.ip
		}) {
			t.Errorf("no broker-1 record for %s: %+v", a.ip, recs.ResourceRecordSets)
		}
		t.Logf("adopted:\n%s", r.stderr)
	})

	t.Run("twice is a no-op", func(t *testing.T) {
		h.ResetCounts()
		r := run(a.id, "--slot", "1", "--yes", "--json")
		doc := decode[slotctl.Adoption](t, r)
		if r.code != slotctl.ExitOK || !doc.Done || !doc.Already || len(doc.Plan) != 0 || len(doc.Repairs) != 0 {
			t.Errorf("second adopt: exit %d, %+v", r.code, doc)
		}
		if m := h.MutatingCalls(); len(m) > 0 {
			t.Errorf("the second adopt made mutating calls %v", m)
		}
		if l, _ := store.Get(ctx, 1); l.Version != 1 || len(l.History) != 4 {
			t.Errorf("lease after the second run: version %d, %d transitions", l.Version, len(l.History))
		}
	})

	t.Run("a replacement reattaches the adopted volume", func(t *testing.T) {
		// The adopted instance dies; the reconciler frees its slot; the group's
		// replacement in the AZ goes through the real launch handler.
		if _, err := direct.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{a.id}}); err != nil {
			t.Fatal(err)
		}
		cfg, log := h.AWSConfig(), obs.NewLogger(io.Discard, 0)
		ec2c, asg, ddb := ec2.NewFromConfig(cfg), autoscaling.NewFromConfig(cfg), dynamodb.NewFromConfig(cfg)
		rec := reconcile.New(st.Config, ec2c, asg, ddb, log, io.Discard)
		rec.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 10 * time.Second}
		out, err := rec.Invoke(ctx, demo.StateChangeEvent(a.id, "terminated"))
		if err != nil || !strings.Contains(string(out), `"released":[1]`) {
			t.Fatalf("reconcile: %s %v", out, err)
		}
		lh := launch.New(st.Config, ec2c, asg, ddb, log, io.Discard)
		lh.Followers = []launch.Follower{grow.NewAlarms(st.Config, awsapi.NewCloudWatch(cfg), log), dns.New(st.Config, route53.NewFromConfig(cfg), ec2c, ddb, log)}
		lh.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 10 * time.Second}
		repl := launchOne(t, st, 1)
		out, err = lh.Invoke(ctx, demo.LifecycleEvent(st.Config.ASGName, repl, true))
		if err != nil || !strings.Contains(string(out), `"continue"`) {
			t.Fatalf("launch of %s: %s %v", repl, out, err)
		}
		l, err := store.Get(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		vols, err := direct.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{vol}})
		if err != nil || len(vols.Volumes) != 1 || len(vols.Volumes[0].Attachments) != 1 {
			t.Fatalf("the adopted volume %s after its instance terminated: %+v %v", vol, vols, err)
		}
		att := vols.Volumes[0].Attachments[0]
		if l.Holder != repl || l.State != lease.Bound || l.VolumeID != vol || l.ENIID != a.eni || l.IP != a.ip ||
			aws.ToString(att.InstanceId) != repl || aws.ToString(att.Device) != st.Config.Volume.Device {
			t.Errorf("slot 1 after the replacement: %+v; volume %s attached to %s at %s", l, vol, aws.ToString(att.InstanceId), aws.ToString(att.Device))
		}
		t.Logf("replacement %s holds slot 1 with the adopted volume %s (at %s) and ENI %s (%s)", repl, vol, aws.ToString(att.Device), l.ENIID, l.IP)
	})
}

// adoptSequence is the mutating calls of one adoption with --yes, in order:
// DeleteOnTermination (first: the data is kept whatever follows), the claim, the
// records of the volume and the ENI, the tags of the volume, the ENI and the instance,
// the bind, the disk alarm and the DNS records.
var adoptSequence = []string{"ModifyInstanceAttribute", "UpdateItem", "UpdateItem", "UpdateItem",
	"CreateTags", "CreateTags", "CreateTags", "UpdateItem", "PutMetricAlarm", "ChangeResourceRecordSets"}

// An adoption that dies right after any one of its mutating calls took effect (its
// answer lost) is finished by running the same command again, and ends as one that
// never died: the slot bound once (version 1), its ids recorded, the volume kept, every
// tag, the alarm and the records in place. The second run of each is then a no-op.
func TestAdoptCrashSweep(t *testing.T) {
	h := harness.Start(t)
	st := newStage(t, h, "ac", demo.StageOptions{})
	ctx := context.Background()
	direct := ec2.NewFromConfig(h.DirectConfig())
	store := lease.NewStore(dynamodb.NewFromConfig(h.DirectConfig()), st.Config.Table, st.Config.Cluster)
	if _, err := autoscaling.NewFromConfig(h.DirectConfig()).UpdateAutoScalingGroup(ctx, &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String(st.Config.ASGName), MaxSize: aws.Int32(20)}); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for k, v := range st.Vars {
		vars[config.Prefix+k] = v
	}
	vars[config.Prefix+"SLOT_COUNT"] = "12" // slot s lives in subnet s mod 3
	run := func(args ...string) result {
		var out, errOut bytes.Buffer
		code := slotctl.Main(ctx, append([]string{"adopt"}, args...), slotctl.IO{Stdout: &out, Stderr: &errOut,
			Getenv: func(k string) string { return vars[k] }, Clients: slotctl.NewClients(h.AWSConfig())})
		return result{code: code, stdout: out.String(), stderr: errOut.String()}
	}
	cw := awsapi.NewCloudWatch(h.DirectConfig())
	r53 := route53.NewFromConfig(h.DirectConfig())

	for point := -1; point < len(adoptSequence); point++ {
		s := point + 1 // slot of this sweep point; -1 is the fault-free run
		name := "no crash"
		if point >= 0 {
			name = fmt.Sprintf("crash after call %d (%s)", point+1, adoptSequence[point])
		}
		t.Run(name, func(t *testing.T) {
			b := runBroker(t, st, s%3, []string{"/dev/sdf"}, true, true)
			st.Kafka.Advertise(int32(s), b.ip)
			h.ResetCounts()
			if point >= 0 {
				skip := 0
				for _, a := range adoptSequence[:point] {
					if a == adoptSequence[point] {
						skip++
					}
				}
				h.Inject(harness.Fault{Action: adoptSequence[point], Kind: harness.Crash, Times: 1, Skip: skip})
				first := run(b.id, "--slot", fmt.Sprint(s), "--yes", "--json")
				h.ClearFaults()
				if first.code == slotctl.ExitOK {
					t.Fatalf("the crashed run succeeded: %s", first.stdout)
				}
				if m := h.MutatingCalls(); len(m) != point+1 || m[point] != adoptSequence[point] {
					t.Fatalf("the crashed run made %v; want the first %d of %v", m, point+1, adoptSequence)
				}
				// Wherever it stopped, the broker's volume is already kept when the
				// instance goes.
				inst, err := direct.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{b.id}})
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range inst.Reservations[0].Instances[0].BlockDeviceMappings {
					if aws.ToString(m.DeviceName) == "/dev/sdf" && aws.ToBool(m.Ebs.DeleteOnTermination) {
						t.Errorf("after a crash at call %d (%s) the volume still goes with the instance (DeleteOnTermination=true)", point+1, adoptSequence[point])
					}
				}
			}
			again := run(b.id, "--slot", fmt.Sprint(s), "--yes", "--json")
			doc := decode[slotctl.Adoption](t, again)
			if again.code != slotctl.ExitOK || !doc.Done {
				t.Fatalf("the finishing run: exit %d, %s %s", again.code, again.stdout, again.stderr)
			}
			vol := b.volumes["/dev/sdf"]
			l, err := store.Get(ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			if l.State != lease.Bound || l.Version != 1 || l.Holder != b.id || l.VolumeID != vol || l.ENIID != b.eni || l.IP != b.ip {
				t.Errorf("lease %+v", l)
			}
			inst, err := direct.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{b.id}})
			if err != nil {
				t.Fatal(err)
			}
			i := inst.Reservations[0].Instances[0]
			tags := map[string]string{}
			for _, tg := range i.Tags {
				tags[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
			}
			if tags[resources.TagSlot] != fmt.Sprint(s) || tags[resources.TagNodeID] != fmt.Sprint(s) || tags[resources.TagLease] != "1" {
				t.Errorf("instance tags %v", tags)
			}
			for _, m := range i.BlockDeviceMappings {
				if aws.ToString(m.DeviceName) == "/dev/sdf" && aws.ToBool(m.Ebs.DeleteOnTermination) {
					t.Errorf("volume %s still goes with the instance", vol)
				}
			}
			for _, id := range []string{vol, b.eni} {
				tg, err := direct.DescribeTags(ctx, &ec2.DescribeTagsInput{Filters: []ec2types.Filter{{Name: aws.String("resource-id"), Values: []string{id}},
					{Name: aws.String("key"), Values: []string{resources.TagSlot}}}})
				if err != nil || len(tg.Tags) != 1 || aws.ToString(tg.Tags[0].Value) != fmt.Sprint(s) {
					t.Errorf("%s's slot tag: %+v %v", id, tg, err)
				}
			}
			alarms, err := cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{AlarmNames: []string{grow.AlarmName("ac", s)}})
			if err != nil || len(alarms.MetricAlarms) != 1 || !slices.ContainsFunc(alarms.MetricAlarms[0].Dimensions, func(d cwtypes.Dimension) bool { return aws.ToString(d.Value) == b.id }) {
				t.Errorf("disk alarm of slot %d: %+v %v", s, alarms, err)
			}
			recs, err := r53.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(st.ZoneID)})
			if err != nil || !slices.ContainsFunc(recs.ResourceRecordSets, func(r r53types.ResourceRecordSet) bool {
				return aws.ToString(r.Name) == fmt.Sprintf("broker-%d.ac.kafka.internal.", s) && len(r.ResourceRecords) == 1 && aws.ToString(r.ResourceRecords[0].Value) == b.ip
			}) {
				t.Errorf("no broker-%d record for %s: %v", s, b.ip, err)
			}
			h.ResetCounts()
			if third := run(b.id, "--slot", fmt.Sprint(s), "--yes", "--json"); third.code != slotctl.ExitOK || len(h.MutatingCalls()) > 0 {
				t.Errorf("a further run: exit %d, mutating calls %v", third.code, h.MutatingCalls())
			}
		})
	}
}

// closedAddr is a 127.0.0.1 address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// In ENI mode the ENI must be in the slot's subnet, not merely its AZ: the launch of
// a replacement attaches only an ENI of the slot's subnet (resources.unusableENI),
// so an ENI of another subnet would abandon every replacement. adopt refuses it,
// and changes nothing.
func TestAdoptENIInAnotherSubnet(t *testing.T) {
	h := harness.Start(t)
	st := newStage(t, h, "as", demo.StageOptions{})
	ctx := context.Background()
	direct := ec2.NewFromConfig(h.DirectConfig())
	if _, err := autoscaling.NewFromConfig(h.DirectConfig()).UpdateAutoScalingGroup(ctx, &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String(st.Config.ASGName), MaxSize: aws.Int32(6)}); err != nil {
		t.Fatal(err)
	}
	b := runBroker(t, st, 1, []string{"/dev/sdf"}, false, true)
	sn, err := direct.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: aws.String(st.World.VPCID), CidrBlock: aws.String("10.0.12.0/24"),
		AvailabilityZone: aws.String(st.World.Subnets[1].AZ)})
	if err != nil {
		t.Fatal(err)
	}
	eni, err := direct.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: sn.Subnet.SubnetId, Groups: []string{st.World.SecurityGroupID}})
	if err != nil {
		t.Fatal(err)
	}
	eniID, ip := aws.ToString(eni.NetworkInterface.NetworkInterfaceId), aws.ToString(eni.NetworkInterface.PrivateIpAddress)
	if _, err := direct.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(eniID), InstanceId: aws.String(b.id), DeviceIndex: aws.Int32(1)}); err != nil {
		t.Fatal(err)
	}
	st.Kafka.Advertise(1, ip)
	vars := map[string]string{}
	for k, v := range st.Vars {
		vars[config.Prefix+k] = v
	}
	h.ResetCounts()
	var out, errOut bytes.Buffer
	code := slotctl.Main(ctx, []string{"adopt", b.id, "--slot", "1", "--yes", "--json"}, slotctl.IO{Stdout: &out, Stderr: &errOut,
		Getenv: func(k string) string { return vars[k] }, Clients: slotctl.NewClients(h.AWSConfig())})
	doc := decode[map[string]any](t, result{code: code, stdout: out.String(), stderr: errOut.String()})
	msg, _ := doc["error"].(string)
	want := fmt.Sprintf("ENI %s is in subnet %s, not slot 1's subnet %s", eniID, aws.ToString(sn.Subnet.SubnetId), st.World.Subnets[1].ID)
	t.Logf("exit %d: %s (hint: %v)", code, msg, doc["hint"])
	if code != slotctl.ExitRefused || !strings.Contains(msg, want) {
		t.Errorf("exit %d, %v; want exit %d and %q", code, doc, slotctl.ExitRefused, want)
	}
	if m := h.MutatingCalls(); len(m) > 0 {
		t.Errorf("a refused adopt made mutating calls %v", m)
	}
}

// A broker with a second data volume (a second log dir, JBOD) that AWS deletes with
// the instance (DeleteOnTermination=true): adopt refuses and names it; --volume alone
// does not do; with --volume and --ack-other-volumes the plan goes ahead and lists it.
func TestAdoptSecondDataVolume(t *testing.T) {
	h := harness.Start(t)
	st := newStage(t, h, "a2", demo.StageOptions{})
	ctx := context.Background()
	if _, err := autoscaling.NewFromConfig(h.DirectConfig()).UpdateAutoScalingGroup(ctx, &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String(st.Config.ASGName), MaxSize: aws.Int32(6)}); err != nil {
		t.Fatal(err)
	}
	b := runBroker(t, st, 1, []string{"/dev/sdf", "/dev/sdg"}, true, true)
	st.Kafka.Advertise(1, b.ip)
	main, second := b.volumes["/dev/sdf"], b.volumes["/dev/sdg"]
	vars := map[string]string{}
	for k, v := range st.Vars {
		vars[config.Prefix+k] = v
	}
	run := func(args ...string) result {
		var out, errOut bytes.Buffer
		code := slotctl.Main(ctx, append([]string{"adopt", b.id, "--slot", "1"}, args...), slotctl.IO{Stdout: &out, Stderr: &errOut,
			Getenv: func(k string) string { return vars[k] }, Clients: slotctl.NewClients(h.AWSConfig())})
		return result{code: code, stdout: out.String(), stderr: errOut.String()}
	}
	refusal := "instance " + b.id + " has other data volumes besides " + main + " that are deleted with the instance (DeleteOnTermination=true): " + second + " at /dev/sdg"
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"the volume at the device, another one deleted with the instance", []string{"--yes", "--json"}, slotctl.ExitRefused, refusal},
		{"--volume alone", []string{"--volume", main, "--yes", "--json"}, slotctl.ExitRefused, refusal},
		{"--ack-other-volumes without --volume", []string{"--ack-other-volumes", "--yes", "--json"}, slotctl.ExitUsage, "--ack-other-volumes needs --volume"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.ResetCounts()
			r := run(tt.args...)
			doc := decode[map[string]any](t, r)
			msg, _ := doc["error"].(string)
			t.Logf("exit %d: %s (hint: %v)", r.code, msg, doc["hint"])
			if r.code != tt.wantCode || !strings.Contains(msg, tt.wantErr) {
				t.Errorf("exit %d, %v; want exit %d and %q", r.code, doc, tt.wantCode, tt.wantErr)
			}
			if m := h.MutatingCalls(); len(m) > 0 {
				t.Errorf("a refused adopt made mutating calls %v", m)
			}
		})
	}
	t.Run("--volume and --ack-other-volumes", func(t *testing.T) {
		h.ResetCounts()
		r := run("--volume", main, "--ack-other-volumes", "--json")
		doc := decode[slotctl.Adoption](t, r)
		want := second + " at /dev/sdg (DeleteOnTermination=true: deleted with the instance)"
		if r.code != slotctl.ExitRefused || !doc.DryRun || doc.Volume != main || !slices.Equal(doc.OtherVolumes, []string{want}) {
			t.Errorf("dry run: exit %d, %+v; want the plan for %s, other volumes [%s]", r.code, doc, main, want)
		}
		human := run("--volume", main, "--ack-other-volumes")
		if !strings.Contains(human.stdout, "other volume "+want+" is not the slot's") {
			t.Errorf("the plan does not name the other volume:\n%s", human.stdout)
		}
		if m := h.MutatingCalls(); len(m) > 0 {
			t.Errorf("the dry run made mutating calls %v", m)
		}
		t.Logf("%s", human.stdout)
	})
}
