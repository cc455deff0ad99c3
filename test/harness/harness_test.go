package harness

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwschemas "github.com/aws/aws-sdk-go-v2/service/cloudwatch/schemas"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/aws/smithy-go/transport/http/protocol/awsquery"

	"github.com/slotkeeper/slotkeeper/test/emulator"
)

// envHelperVar makes the test binary act as a child process that uses Harness.Env.
const envHelperVar = "HARNESS_TEST_ENV_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(envHelperVar) == "1" {
		os.Exit(envHelper())
	}
	os.Exit(m.Run())
}

// envHelper is the child process of TestHarness/env: it configures the SDK the way
// the functions do (from the environment only) and makes one call.
func envHelper() int {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loading config:", err)
		return 1
	}
	if _, err := ec2.NewFromConfig(cfg).DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); err != nil {
		fmt.Fprintln(os.Stderr, "DescribeVpcs:", err)
		return 1
	}
	fmt.Printf("region=%s xray_disabled=%s\n", cfg.Region, os.Getenv("AWS_XRAY_SDK_DISABLED"))
	return 0
}

// errorCode returns the AWS error code in err, or "" if err carries none.
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// recordingTB stands in for a testing.TB to observe Fatal and Skip without failing or
// skipping the real test. Like the real ones, those calls end the calling goroutine,
// so use it through runRecording.
type recordingTB struct {
	testing.TB
	fatal, skip string
}

func (r *recordingTB) Fatal(args ...any) { r.fatal = fmt.Sprint(args...); runtime.Goexit() }
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recordingTB) FailNow()         { r.fatal = "FailNow"; runtime.Goexit() }
func (r *recordingTB) Skip(args ...any) { r.skip = fmt.Sprint(args...); runtime.Goexit() }
func (r *recordingTB) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recordingTB) SkipNow() { r.skip = "SkipNow"; runtime.Goexit() }

// runRecording runs fn with a recordingTB on its own goroutine and returns the record.
func runRecording(t *testing.T, fn func(testing.TB)) *recordingTB {
	r := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	return r
}

func TestStartWithoutMoto(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-moto_server")
	tests := []struct {
		name      string
		ci        string
		wantFatal bool
	}{
		{name: "CI fails", ci: "true", wantFatal: true},
		{name: "locally skips", ci: ""},
		{name: "CI other than true skips", ci: "1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(emulator.MotoEnvVar, missing)
			t.Setenv("CI", tc.ci)
			var h *Harness
			rec := runRecording(t, func(tb testing.TB) { h = Start(tb) })
			if h != nil {
				t.Fatalf("Start returned a harness without moto")
			}
			msg := rec.skip
			if tc.wantFatal {
				msg = rec.fatal
				if rec.skip != "" {
					t.Errorf("Start skipped under CI=true: %q", rec.skip)
				}
			} else if rec.fatal != "" {
				t.Errorf("Start failed outside CI: %q", rec.fatal)
			}
			for _, want := range []string{missing, "make test", emulator.MotoEnvVar} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not mention %q", msg, want)
				}
			}
		})
	}
}

func TestCleanupStopsMoto(t *testing.T) {
	t.Parallel()
	var h *Harness
	t.Run("run", func(t *testing.T) {
		h = Start(t)
		resp, err := http.Get(h.URL + "/moto-api/")
		if err != nil {
			t.Fatalf("proxy not answering: %v", err)
		}
		_ = resp.Body.Close()
	})
	if h == nil {
		t.Skip("moto not available")
	}
	if err := syscall.Kill(h.MotoPID(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("moto process %d still exists after cleanup (kill 0: %v)", h.MotoPID(), err)
	}
	for _, u := range []string{h.MotoURL, h.URL} {
		if resp, err := http.Get(u + "/moto-api/"); err == nil {
			_ = resp.Body.Close()
			t.Errorf("%s still answers after cleanup", u)
		}
	}
}

// testMotoTermination pins down what moto does to the volumes and ENIs of a
// terminated instance, and the other moto quirks documented on TerminateInstance.
func testMotoTermination(t *testing.T, h *Harness, w *World) {
	ctx := t.Context()
	ec2c := ec2.NewFromConfig(h.DirectConfig())
	subnet := w.Subnets[0]
	old := h.RunInstance(t, w, subnet.ID)
	desc, err := ec2c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{old}})
	if err != nil {
		t.Fatal(err)
	}
	bdm := desc.Reservations[0].Instances[0].BlockDeviceMappings
	if len(bdm) != 1 || !aws.ToBool(bdm[0].Ebs.DeleteOnTermination) {
		t.Fatalf("new instance's block devices = %+v, want one root volume deleted on termination", bdm)
	}
	rootVolume := aws.ToString(bdm[0].Ebs.VolumeId)

	vol, err := ec2c.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(subnet.AZ), Size: aws.Int32(10)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ec2c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: vol.VolumeId, InstanceId: aws.String(old), Device: aws.String("/dev/sdf")}); err != nil {
		t.Fatal(err)
	}
	eni, err := ec2c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId: aws.String(subnet.ID), PrivateIpAddress: aws.String("10.0.1.50"), Groups: []string{w.SecurityGroupID},
	})
	if err != nil {
		t.Fatal(err)
	}
	eniID := eni.NetworkInterface.NetworkInterfaceId
	att, err := ec2c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: eniID, InstanceId: aws.String(old), DeviceIndex: aws.Int32(1),
	})
	if err != nil {
		t.Fatal(err)
	}

	h.TerminateInstance(t, old)

	inst, err := ec2c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{old}})
	if err != nil {
		t.Fatal(err)
	}
	if got := inst.Reservations[0].Instances[0].State.Name; got != ec2types.InstanceStateNameTerminated {
		t.Errorf("instance state right after TerminateInstances = %s, want terminated", got)
	}
	if _, err := ec2c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{rootVolume}}); errorCode(err) != "InvalidVolume.NotFound" {
		t.Errorf("describing the root volume after termination: %v, want InvalidVolume.NotFound", err)
	}
	vols, err := ec2c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{aws.ToString(vol.VolumeId)}})
	if err != nil {
		t.Fatal(err)
	}
	if v := vols.Volumes[0]; v.State != ec2types.VolumeStateAvailable || len(v.Attachments) != 0 {
		t.Errorf("data volume after termination: state %s, attachments %+v; want available, none", v.State, v.Attachments)
	}
	nis, err := ec2c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{*eniID}})
	if err != nil {
		t.Fatal(err)
	}
	ni := nis.NetworkInterfaces[0]
	if ni.Status != ec2types.NetworkInterfaceStatusInUse || ni.Attachment == nil || aws.ToString(ni.Attachment.InstanceId) != old {
		t.Errorf("ENI after termination: status %s, attachment %+v; moto used to keep it in-use, attached to %s",
			ni.Status, ni.Attachment, old)
	}

	// The stale ENI attachment can be taken over by a new instance without a detach.
	replacement := h.RunInstance(t, w, subnet.ID)
	att2, err := ec2c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: eniID, InstanceId: aws.String(replacement), DeviceIndex: aws.Int32(1),
	})
	if err != nil {
		t.Fatalf("attaching the in-use ENI to a new instance: %v", err)
	}
	if aws.ToString(att2.AttachmentId) == aws.ToString(att.AttachmentId) {
		t.Errorf("re-attach kept the old attachment id")
	}

	// AttachVolume does not check that the volume is available or in the right AZ.
	other, err := ec2c.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(w.Subnets[1].AZ), Size: aws.Int32(10)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ec2c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: other.VolumeId, InstanceId: aws.String(replacement), Device: aws.String("/dev/sdg")}); err != nil {
		t.Errorf("moto now rejects a cross-AZ AttachVolume (%v): update the TerminateInstance doc", err)
	}
	third := h.RunInstance(t, w, subnet.ID)
	if _, err := ec2c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: other.VolumeId, InstanceId: aws.String(third), Device: aws.String("/dev/sdg")}); err != nil {
		t.Errorf("moto now rejects attaching an in-use volume (%v): update the TerminateInstance doc", err)
	}

	// DetachVolume without InstanceId is an internal error in moto.
	_, err = ec2c.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: vol.VolumeId}, func(o *ec2.Options) { o.RetryMaxAttempts = 1 })
	var re *smithyhttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusInternalServerError {
		t.Errorf("DetachVolume without InstanceId: err %v, want HTTP 500 from moto", err)
	}
}

// sdk bundles the clients the proxy tests use.
type sdk struct {
	ec2 *ec2.Client
	ddb *dynamodb.Client
	asg *autoscaling.Client
	r53 *route53.Client
	ssm *ssm.Client
	sts *sts.Client
	cw  *cloudwatch.Client // configured for awsquery
	// cwCBOR is a CloudWatch client with the SDK's default protocol, RPC v2 CBOR.
	cwCBOR *cloudwatch.Client
}

func newSDK(cfg aws.Config) sdk {
	return sdk{
		ec2: ec2.NewFromConfig(cfg), ddb: dynamodb.NewFromConfig(cfg), asg: autoscaling.NewFromConfig(cfg),
		r53: route53.NewFromConfig(cfg), ssm: ssm.NewFromConfig(cfg), sts: sts.NewFromConfig(cfg),
		cw: cloudwatch.NewFromConfig(cfg, func(o *cloudwatch.Options) {
			// moto 5.2.5 does not speak CloudWatch's default protocol, RPC v2 CBOR.
			o.Protocol = awsquery.New(cwschemas.GraniteServiceVersion20100801)
		}),
		cwCBOR: cloudwatch.NewFromConfig(cfg),
	}
}

// TestHarness exercises one harness end to end. Subtests run in order and share it;
// each starts from no faults and zero counts.
func TestHarness(t *testing.T) {
	t.Parallel()
	h := Start(t)
	ctx := t.Context()
	w := h.NewWorld(t, "leases")
	proxied, direct := newSDK(h.AWSConfig()), newSDK(h.DirectConfig())
	fresh := func(t *testing.T) {
		t.Helper()
		h.ClearFaults()
		h.ResetCounts()
	}

	t.Run("world", func(t *testing.T) {
		if got := h.CallCounts(); len(got) != 0 {
			t.Errorf("world setup went through the proxy: %v", got)
		}
		vpcs, err := direct.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{VpcIds: []string{w.VPCID}})
		if err != nil || aws.ToString(vpcs.Vpcs[0].CidrBlock) != "10.0.0.0/16" {
			t.Fatalf("VPC %s: %+v, %v", w.VPCID, vpcs, err)
		}
		want := []Subnet{{AZ: "us-east-1a", CIDR: "10.0.1.0/24"}, {AZ: "us-east-1b", CIDR: "10.0.2.0/24"}, {AZ: "us-east-1c", CIDR: "10.0.3.0/24"}}
		if len(w.Subnets) != len(want) {
			t.Fatalf("subnets = %+v", w.Subnets)
		}
		for i, s := range w.Subnets {
			out, err := direct.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{s.ID}})
			if err != nil {
				t.Fatal(err)
			}
			got := out.Subnets[0]
			if s.AZ != want[i].AZ || s.CIDR != want[i].CIDR || aws.ToString(got.AvailabilityZone) != s.AZ ||
				aws.ToString(got.CidrBlock) != s.CIDR || aws.ToString(got.VpcId) != w.VPCID {
				t.Errorf("subnet %d: world %+v, moto %s %s in %s; want %+v", i, s,
					aws.ToString(got.AvailabilityZone), aws.ToString(got.CidrBlock), aws.ToString(got.VpcId), want[i])
			}
		}
		sgs, err := direct.ec2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: []string{w.SecurityGroupID}})
		if err != nil || aws.ToString(sgs.SecurityGroups[0].VpcId) != w.VPCID {
			t.Errorf("security group %s: %+v, %v", w.SecurityGroupID, sgs, err)
		}
		table, err := direct.ddb.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(w.Table)})
		if err != nil {
			t.Fatal(err)
		}
		td := table.Table
		if td.BillingModeSummary == nil || td.BillingModeSummary.BillingMode != ddbtypes.BillingModePayPerRequest {
			t.Errorf("table billing = %+v, want PAY_PER_REQUEST", td.BillingModeSummary)
		}
		keys := map[string]ddbtypes.KeyType{}
		for _, k := range td.KeySchema {
			keys[aws.ToString(k.AttributeName)] = k.KeyType
		}
		types := map[string]ddbtypes.ScalarAttributeType{}
		for _, a := range td.AttributeDefinitions {
			types[aws.ToString(a.AttributeName)] = a.AttributeType
		}
		if keys["cluster"] != ddbtypes.KeyTypeHash || keys["slot"] != ddbtypes.KeyTypeRange ||
			types["cluster"] != ddbtypes.ScalarAttributeTypeS || types["slot"] != ddbtypes.ScalarAttributeTypeN {
			t.Errorf("table keys %v, attribute types %v", keys, types)
		}

		id := h.RunInstance(t, w, w.Subnets[1].ID)
		out, err := direct.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		inst := out.Reservations[0].Instances[0]
		if inst.InstanceType != ec2types.InstanceTypeT3Large || aws.ToString(inst.SubnetId) != w.Subnets[1].ID ||
			aws.ToString(inst.ImageId) != w.AMI || inst.State.Name != ec2types.InstanceStateNameRunning ||
			aws.ToString(inst.Placement.AvailabilityZone) != w.Subnets[1].AZ {
			t.Errorf("instance %s: type %s, subnet %s, image %s, state %s, AZ %s", id, inst.InstanceType,
				aws.ToString(inst.SubnetId), aws.ToString(inst.ImageId), inst.State.Name, aws.ToString(inst.Placement.AvailabilityZone))
		}
		h.TerminateInstance(t, id)
		out, err = direct.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil || out.Reservations[0].Instances[0].State.Name != ec2types.InstanceStateNameTerminated {
			t.Errorf("after TerminateInstance: %v, %v", out, err)
		}
		if got := h.CallCounts(); len(got) != 0 {
			t.Errorf("instance helpers went through the proxy: %v", got)
		}
	})

	t.Run("moto termination semantics", func(t *testing.T) { testMotoTermination(t, h, w) })

	t.Run("env", func(t *testing.T) {
		fresh(t)
		cmd := exec.CommandContext(ctx, os.Args[0])
		cmd.Env = append(append(os.Environ(), h.Env()...), envHelperVar+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child process: %v\n%s", err, out)
		}
		if want := "region=us-east-1 xray_disabled=true"; !strings.Contains(string(out), want) {
			t.Errorf("child output %q, want %q", out, want)
		}
		if got := h.Calls("DescribeVpcs"); got != 1 {
			t.Errorf("child's DescribeVpcs reached the proxy %d times, want 1", got)
		}
	})

	t.Run("counts calls per action and protocol", func(t *testing.T) {
		fresh(t)
		zone, err := proxied.r53.CreateHostedZone(ctx, &route53.CreateHostedZoneInput{
			Name: aws.String("kafka.example.com"), CallerReference: aws.String("harness-test"),
		})
		if err != nil {
			t.Fatalf("CreateHostedZone: %v", err)
		}
		zoneID := zone.HostedZone.Id
		record := &r53types.ResourceRecordSet{
			Name: aws.String("broker-0.kafka.example.com"), Type: r53types.RRTypeA, TTL: aws.Int64(60),
			ResourceRecords: []r53types.ResourceRecord{{Value: aws.String("10.0.1.10")}},
		}
		change, err := proxied.r53.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{
			HostedZoneId: zoneID,
			ChangeBatch:  &r53types.ChangeBatch{Changes: []r53types.Change{{Action: r53types.ChangeActionUpsert, ResourceRecordSet: record}}},
		})
		if err != nil {
			t.Fatalf("ChangeResourceRecordSets: %v", err)
		}
		calls := []struct {
			action string
			do     func() error
		}{
			{"DescribeVpcs", func() error { _, err := proxied.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); return err }},
			{"CreateTags", func() error {
				_, err := proxied.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{w.VPCID}, Tags: []ec2types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}})
				return err
			}},
			{"PutItem", func() error {
				_, err := proxied.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(w.Table), Item: leaseItem("counts", 0)})
				return err
			}},
			{"GetItem", func() error {
				_, err := proxied.ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(w.Table), Key: leaseItem("counts", 0)})
				return err
			}},
			{"DescribeAutoScalingGroups", func() error {
				_, err := proxied.asg.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{})
				return err
			}},
			{"PutParameter", func() error {
				_, err := proxied.ssm.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String("/p"), Value: aws.String("v"), Overwrite: aws.Bool(true)})
				return err
			}},
			{"GetCallerIdentity", func() error { _, err := proxied.sts.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); return err }},
			{"PutMetricAlarm", func() error { return putAlarm(ctx, proxied.cw, "slotkeeper-test-disk-0") }},
			{"DescribeAlarms", func() error { _, err := proxied.cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{}); return err }},
			{"GetHostedZone", func() error {
				_, err := proxied.r53.GetHostedZone(ctx, &route53.GetHostedZoneInput{Id: zoneID})
				return err
			}},
			{"ListHostedZones", func() error { _, err := proxied.r53.ListHostedZones(ctx, &route53.ListHostedZonesInput{}); return err }},
			{"ListResourceRecordSets", func() error {
				_, err := proxied.r53.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: zoneID})
				return err
			}},
			{"GetChange", func() error {
				_, err := proxied.r53.GetChange(ctx, &route53.GetChangeInput{Id: change.ChangeInfo.Id})
				return err
			}},
		}
		for _, c := range calls {
			if err := c.do(); err != nil {
				t.Errorf("%s through the proxy: %v", c.action, err)
			}
		}
		// moto's own API is passed through uncounted.
		resp, err := http.Get(h.URL + "/moto-api/data.json")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("GET /moto-api/data.json through the proxy: %v, %v", resp, err)
		}
		if resp != nil {
			_ = resp.Body.Close()
		}

		want := map[string]int{"CreateHostedZone": 1, "ChangeResourceRecordSets": 1}
		for _, c := range calls {
			want[c.action]++
		}
		got := h.CallCounts()
		for action, n := range want {
			if got[action] != n {
				t.Errorf("Calls(%s) = %d, want %d", action, got[action], n)
			}
		}
		if len(got) != len(want) {
			t.Errorf("CallCounts = %v, want %v", got, want)
		}
		wantMutating := []string{"CreateHostedZone", "ChangeResourceRecordSets", "CreateTags", "PutItem", "PutParameter", "PutMetricAlarm"}
		if got := h.MutatingCalls(); !slices.Equal(got, wantMutating) {
			t.Errorf("MutatingCalls = %v, want %v", got, wantMutating)
		}
		if _, err := proxied.r53.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{
			HostedZoneId: zoneID,
			ChangeBatch:  &r53types.ChangeBatch{Changes: []r53types.Change{{Action: r53types.ChangeActionDelete, ResourceRecordSet: record}}},
		}); err != nil {
			t.Errorf("deleting the record: %v", err)
		}
		if _, err := proxied.r53.DeleteHostedZone(ctx, &route53.DeleteHostedZoneInput{Id: zoneID}); err != nil {
			t.Errorf("DeleteHostedZone: %v", err)
		}
		if got := h.Calls("DeleteHostedZone"); got != 1 {
			t.Errorf("Calls(DeleteHostedZone) = %d, want 1", got)
		}
		h.ResetCounts()
		if got, m := h.CallCounts(), h.MutatingCalls(); len(got) != 0 || len(m) != 0 {
			t.Errorf("after ResetCounts: counts %v, mutating %v", got, m)
		}
	})

	t.Run("faults", func(t *testing.T) {
		describeVpcs := func() error { _, err := proxied.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); return err }
		tests := []struct {
			name      string
			faults    []Fault
			action    string
			call      func() error
			wantCode  string // "" = the call succeeds
			wantCalls int    // attempts that reached the proxy
		}{
			{
				name: "ec2 throttled on every attempt", faults: []Fault{{Action: "DescribeVpcs", Kind: Throttle}},
				action: "DescribeVpcs", call: describeVpcs, wantCode: "RequestLimitExceeded", wantCalls: 6,
			},
			{
				name: "ec2 throttled twice, then through", faults: []Fault{{Action: "DescribeVpcs", Kind: Throttle, Times: 2}},
				action: "DescribeVpcs", call: describeVpcs, wantCalls: 3,
			},
			{
				name: "ec2 server error", faults: []Fault{{Action: "DescribeVpcs", Kind: ServerError}},
				action: "DescribeVpcs", call: describeVpcs, wantCode: "Unavailable", wantCalls: 6,
			},
			{
				name: "wildcard action", faults: []Fault{{Action: "*", Kind: ServerError, Times: 1}},
				action: "DescribeVpcs", call: describeVpcs, wantCalls: 2,
			},
			{
				name: "fault for another action does not apply", faults: []Fault{{Action: "DescribeSubnets", Kind: Throttle}},
				action: "DescribeVpcs", call: describeVpcs, wantCalls: 1,
			},
			{
				name: "dynamodb throttled", faults: []Fault{{Action: "PutItem", Kind: Throttle}}, action: "PutItem",
				call: func() error {
					_, err := proxied.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(w.Table), Item: leaseItem("faults", 1)})
					return err
				},
				wantCode: "ThrottlingException", wantCalls: 6,
			},
			{
				name: "dynamodb server error", faults: []Fault{{Action: "UpdateItem", Kind: ServerError}}, action: "UpdateItem",
				call: func() error {
					_, err := proxied.ddb.UpdateItem(ctx, &dynamodb.UpdateItemInput{
						TableName: aws.String(w.Table), Key: leaseItem("faults", 1),
						UpdateExpression:          aws.String("SET #s = :s"),
						ExpressionAttributeNames:  map[string]string{"#s": "state"},
						ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":s": &ddbtypes.AttributeValueMemberS{Value: "free"}},
					})
					return err
				},
				wantCode: "ServiceUnavailable", wantCalls: 6,
			},
			{
				name: "dynamodb non-retryable code override", faults: []Fault{{Action: "GetItem", Kind: Throttle, Code: "ValidationException"}},
				action: "GetItem",
				call: func() error {
					_, err := proxied.ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(w.Table), Key: leaseItem("faults", 1)})
					return err
				},
				wantCode: "ValidationException", wantCalls: 1,
			},
			{
				name: "autoscaling throttled", faults: []Fault{{Action: "DescribeAutoScalingGroups", Kind: Throttle}},
				action: "DescribeAutoScalingGroups",
				call: func() error {
					_, err := proxied.asg.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{})
					return err
				},
				wantCode: "Throttling", wantCalls: 6,
			},
			{
				name: "autoscaling server error", faults: []Fault{{Action: "DescribeAutoScalingGroups", Kind: ServerError}},
				action: "DescribeAutoScalingGroups",
				call: func() error {
					_, err := proxied.asg.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{})
					return err
				},
				wantCode: "ServiceUnavailable", wantCalls: 6,
			},
			{
				name: "ssm (JSON 1.1) throttled", faults: []Fault{{Action: "GetParameter", Kind: Throttle}}, action: "GetParameter",
				call: func() error {
					_, err := proxied.ssm.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String("/p")})
					return err
				},
				wantCode: "ThrottlingException", wantCalls: 6,
			},
			{
				name: "route53 throttled", faults: []Fault{{Action: "ListHostedZones", Kind: Throttle}}, action: "ListHostedZones",
				call: func() error {
					_, err := proxied.r53.ListHostedZones(ctx, &route53.ListHostedZonesInput{})
					return err
				},
				wantCode: "Throttling", wantCalls: 6,
			},
			{
				name: "route53 server error", faults: []Fault{{Action: "ListHostedZones", Kind: ServerError}}, action: "ListHostedZones",
				call: func() error {
					_, err := proxied.r53.ListHostedZones(ctx, &route53.ListHostedZonesInput{})
					return err
				},
				wantCode: "ServiceUnavailable", wantCalls: 6,
			},
			{
				name: "cloudwatch (awsquery) throttled", faults: []Fault{{Action: "DescribeAlarms", Kind: Throttle}}, action: "DescribeAlarms",
				call: func() error {
					_, err := proxied.cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{})
					return err
				},
				wantCode: "Throttling", wantCalls: 6,
			},
			{
				// moto cannot answer CBOR, but a Throttle is answered by the proxy alone.
				name: "cloudwatch (CBOR) throttled", faults: []Fault{{Action: "DescribeAlarms", Kind: Throttle}}, action: "DescribeAlarms",
				call: func() error {
					_, err := proxied.cwCBOR.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{})
					return err
				},
				wantCode: "Throttling", wantCalls: 6,
			},
			{
				name: "cloudwatch (CBOR) server error", faults: []Fault{{Action: "PutMetricAlarm", Kind: ServerError}}, action: "PutMetricAlarm",
				call:     func() error { return putAlarm(ctx, proxied.cwCBOR, "cbor") },
				wantCode: "ServiceUnavailable", wantCalls: 6,
			},
			{
				name: "sts server error", faults: []Fault{{Action: "GetCallerIdentity", Kind: ServerError}}, action: "GetCallerIdentity",
				call: func() error {
					_, err := proxied.sts.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
					return err
				},
				wantCode: "ServiceUnavailable", wantCalls: 6,
			},
			{
				name: "first matching fault wins",
				faults: []Fault{
					{Action: "DescribeVpcs", Kind: Crash, Times: 1},
					{Action: "*", Kind: Throttle},
				},
				action: "DescribeVpcs", call: describeVpcs, wantCode: "InjectedCrash", wantCalls: 1,
			},
			{
				name: "used-up fault passes calls on to the next",
				faults: []Fault{
					{Action: "DescribeVpcs", Kind: Crash, Times: 1, Skip: 0},
					{Action: "DescribeVpcs", Kind: Throttle, Times: 2},
				},
				action: "DescribeVpcs",
				call: func() error {
					if err := describeVpcs(); errorCode(err) != "InjectedCrash" {
						return fmt.Errorf("first call: want InjectedCrash, got %w", err)
					}
					return describeVpcs() // throttled twice, then through
				},
				wantCalls: 4,
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				fresh(t)
				for _, f := range tc.faults {
					h.Inject(f)
				}
				err := tc.call()
				if got := errorCode(err); got != tc.wantCode || (tc.wantCode == "" && err != nil) {
					t.Errorf("error %v (code %q), want code %q", err, got, tc.wantCode)
				}
				if got := h.Calls(tc.action); got != tc.wantCalls {
					t.Errorf("Calls(%s) = %d, want %d", tc.action, got, tc.wantCalls)
				}
			})
		}
	})

	t.Run("skip lets calls through first", func(t *testing.T) {
		fresh(t)
		h.Inject(Fault{Action: "DescribeVpcs", Kind: Crash, Skip: 2, Times: 1})
		var codes []string
		for range 4 {
			_, err := proxied.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{})
			codes = append(codes, errorCode(err))
		}
		if want := []string{"", "", "InjectedCrash", ""}; !slices.Equal(codes, want) {
			t.Errorf("error codes of 4 calls = %q, want %q", codes, want)
		}
	})

	t.Run("every other call: each logical call is throttled once, then retried through", func(t *testing.T) {
		fresh(t)
		h.Inject(Fault{Action: "*", Kind: Throttle, Every: 2})
		for i := range 3 {
			if _, err := proxied.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		if got := h.Calls("DescribeVpcs"); got != 6 {
			t.Errorf("Calls(DescribeVpcs) = %d, want 6 (3 throttled + 3 retries)", got)
		}
	})

	t.Run("throttle and server error have no side effect", func(t *testing.T) {
		for _, kind := range []FaultKind{Throttle, ServerError} {
			fresh(t)
			h.Inject(Fault{Action: "CreateVolume", Kind: kind})
			tag := "no-side-effect-" + kind.String()
			_, err := proxied.ec2.CreateVolume(ctx, taggedVolume(w.Subnets[0].AZ, tag))
			if err == nil {
				t.Fatalf("%v: CreateVolume succeeded", kind)
			}
			if n := countTaggedVolumes(t, direct.ec2, tag); n != 0 {
				t.Errorf("%v: %d volumes created, want 0", kind, n)
			}
			if got := h.MutatingCalls(); len(got) != 6 || got[0] != "CreateVolume" {
				t.Errorf("%v: MutatingCalls = %v, want 6 faulted CreateVolume", kind, got)
			}
		}
	})

	t.Run("crash", func(t *testing.T) {
		tests := []struct {
			name   string
			action string
			call   func() error
			exists func(t *testing.T) bool // whether the side effect is at moto
		}{
			{
				name: "ec2 CreateVolume", action: "CreateVolume",
				call: func() error {
					_, err := proxied.ec2.CreateVolume(ctx, taggedVolume(w.Subnets[0].AZ, "crash"))
					return err
				},
				exists: func(t *testing.T) bool { return countTaggedVolumes(t, direct.ec2, "crash") == 1 },
			},
			{
				name: "dynamodb PutItem", action: "PutItem",
				call: func() error {
					_, err := proxied.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(w.Table), Item: leaseItem("crash", 7)})
					return err
				},
				exists: func(t *testing.T) bool {
					out, err := direct.ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(w.Table), Key: leaseItem("crash", 7)})
					if err != nil {
						t.Fatal(err)
					}
					return out.Item != nil
				},
			},
			{
				name: "cloudwatch PutMetricAlarm", action: "PutMetricAlarm",
				call: func() error { return putAlarm(ctx, proxied.cw, "crash-alarm") },
				exists: func(t *testing.T) bool {
					out, err := direct.cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{AlarmNames: []string{"crash-alarm"}})
					if err != nil {
						t.Fatal(err)
					}
					return len(out.MetricAlarms) == 1
				},
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				fresh(t)
				h.Inject(Fault{Action: tc.action, Kind: Crash, Times: 1})
				err := tc.call()
				if code := errorCode(err); code != "InjectedCrash" {
					t.Errorf("error %v (code %q), want InjectedCrash", err, code)
				}
				if got := h.Calls(tc.action); got != 1 {
					t.Errorf("Calls(%s) = %d, want 1: the SDK must not retry InjectedCrash", tc.action, got)
				}
				if !tc.exists(t) {
					t.Errorf("the crashed call's side effect is missing at moto")
				}
			})
		}
	})

	t.Run("crash passes a real failure on", func(t *testing.T) {
		fresh(t)
		h.Inject(Fault{Action: "PutItem", Kind: Crash})
		_, err := proxied.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String("no-such-table"), Item: leaseItem("x", 1)})
		if code := errorCode(err); code != "ResourceNotFoundException" {
			t.Errorf("error %v (code %q), want moto's ResourceNotFoundException", err, code)
		}
	})

	t.Run("latency", func(t *testing.T) {
		fresh(t)
		// A call held far longer than its caller waits is seen to be held (the caller
		// gives up), without measuring time; the next call is not held.
		h.Inject(Fault{Action: "DescribeVpcs", Kind: Latency, Latency: time.Hour, Times: 1})
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := proxied.ec2.DescribeVpcs(short, &ec2.DescribeVpcsInput{}); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("held call: err = %v, want the caller's deadline", err)
		}
		if _, err := proxied.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); err != nil {
			t.Fatalf("call after the fault was used: %v", err)
		}
		if got := h.Calls("DescribeVpcs"); got != 2 {
			t.Errorf("Calls(DescribeVpcs) = %d, want 2", got)
		}
	})

	t.Run("direct calls bypass faults and counts", func(t *testing.T) {
		fresh(t)
		h.Inject(Fault{Action: "*", Kind: ServerError})
		if _, err := direct.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); err != nil {
			t.Errorf("direct DescribeVpcs: %v", err)
		}
		if got := h.CallCounts(); len(got) != 0 {
			t.Errorf("CallCounts = %v, want none", got)
		}
		h.ClearFaults()
		if _, err := proxied.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); err != nil {
			t.Errorf("DescribeVpcs after ClearFaults: %v", err)
		}
	})

	t.Run("lifecycle", func(t *testing.T) { testLifecycle(t, h, proxied.asg) })

	t.Run("concurrent use", func(t *testing.T) {
		fresh(t)
		const workers, perWorker = 8, 5
		var wg sync.WaitGroup
		errs := make(chan error, workers*perWorker)
		for i := range workers {
			wg.Go(func() {
				for range perWorker {
					if _, err := proxied.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); err != nil {
						errs <- err
					}
					h.Inject(Fault{Action: fmt.Sprintf("Unused%d", i), Kind: Latency})
					_ = h.CallCounts()
					_ = h.MutatingCalls()
					_ = h.Completions()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if got := h.Calls("DescribeVpcs"); got != workers*perWorker {
			t.Errorf("Calls(DescribeVpcs) = %d, want %d", got, workers*perWorker)
		}
	})
}

// testLifecycle checks the proxy's CompleteLifecycleAction and
// RecordLifecycleActionHeartbeat against the AWS behaviour slotkeeper relies on.
func testLifecycle(t *testing.T, h *Harness, asg *autoscaling.Client) {
	ctx := t.Context()
	complete := func(instance, result string) error {
		in := &autoscaling.CompleteLifecycleActionInput{
			AutoScalingGroupName: aws.String("kafka"), LifecycleHookName: aws.String("launch"),
			LifecycleActionResult: aws.String(result), LifecycleActionToken: aws.String("token-" + instance),
		}
		if instance != "" {
			in.InstanceId = aws.String(instance)
		}
		_, err := asg.CompleteLifecycleAction(ctx, in)
		return err
	}
	heartbeat := func(instance string) error {
		_, err := asg.RecordLifecycleActionHeartbeat(ctx, &autoscaling.RecordLifecycleActionHeartbeatInput{
			AutoScalingGroupName: aws.String("kafka"), LifecycleHookName: aws.String("launch"), InstanceId: aws.String(instance),
		})
		return err
	}
	wantValidationError := func(t *testing.T, err error, wantMessage string) {
		t.Helper()
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != "ValidationError" || !strings.Contains(ae.ErrorMessage(), wantMessage) {
			t.Errorf("error %v, want ValidationError %q", err, wantMessage)
		}
	}

	t.Run("completes once", func(t *testing.T) {
		h.ResetCounts()
		if err := heartbeat("i-1"); err != nil {
			t.Fatalf("heartbeat before completion: %v", err)
		}
		if err := complete("i-1", "CONTINUE"); err != nil {
			t.Fatalf("first completion: %v", err)
		}
		wantValidationError(t, complete("i-1", "ABANDON"), "No active Lifecycle Action found with instance ID i-1")
		wantValidationError(t, heartbeat("i-1"), "No active Lifecycle Action found with instance ID i-1")
		if err := complete("i-2", "ABANDON"); err != nil {
			t.Errorf("completing another instance's action: %v", err)
		}

		comps := h.Completions()
		if len(comps) != 2 {
			t.Fatalf("Completions = %+v, want 2", comps)
		}
		c := comps[0]
		if c.Action != "CompleteLifecycleAction" || c.ASG != "kafka" || c.Hook != "launch" || c.InstanceID != "i-1" ||
			c.Token != "token-i-1" || c.Result != "CONTINUE" || c.At.IsZero() {
			t.Errorf("completion = %+v", c)
		}
		if comps[1].InstanceID != "i-2" || comps[1].Result != "ABANDON" {
			t.Errorf("second completion = %+v", comps[1])
		}
		hbs := h.Heartbeats()
		if len(hbs) != 1 || hbs[0].Action != "RecordLifecycleActionHeartbeat" || hbs[0].InstanceID != "i-1" {
			t.Errorf("Heartbeats = %+v, want the one before completion", hbs)
		}
		// Every call is counted, failed ones included, and all are mutating.
		if got := h.Calls("CompleteLifecycleAction"); got != 3 {
			t.Errorf("Calls(CompleteLifecycleAction) = %d, want 3", got)
		}
		if got := h.MutatingCalls(); len(got) != 5 {
			t.Errorf("MutatingCalls = %v, want 5", got)
		}
	})

	t.Run("validation", func(t *testing.T) {
		before := len(h.Completions())
		tests := []struct {
			name        string
			err         error
			wantMessage string
		}{
			{"result not CONTINUE or ABANDON", complete("i-3", "MAYBE"), "LifecycleActionResult"},
			{"neither instance nor token", func() error {
				_, err := asg.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
					AutoScalingGroupName: aws.String("kafka"), LifecycleHookName: aws.String("launch"), LifecycleActionResult: aws.String("CONTINUE"),
				})
				return err
			}(), "instance ID or a lifecycle action token"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) { wantValidationError(t, tc.err, tc.wantMessage) })
		}
		if err := complete("", "CONTINUE"); err != nil {
			t.Errorf("completion by token only: %v", err)
		}
		wantValidationError(t, complete("", "CONTINUE"), "No active Lifecycle Action found with token token-")
		if got := len(h.Completions()); got != before+1 {
			t.Errorf("Completions grew by %d, want 1 (the token-only one)", got-before)
		}
	})

	t.Run("wire format", func(t *testing.T) {
		// Raw requests: the SDK validates required parameters before sending.
		tests := []struct {
			name       string
			form       url.Values
			wantStatus int
			wantRoot   string
		}{
			{
				name:       "success",
				form:       url.Values{"Action": {"RecordLifecycleActionHeartbeat"}, "AutoScalingGroupName": {"kafka"}, "LifecycleHookName": {"launch"}, "InstanceId": {"i-raw"}},
				wantStatus: http.StatusOK, wantRoot: "RecordLifecycleActionHeartbeatResponse",
			},
			{
				name:       "missing group name",
				form:       url.Values{"Action": {"CompleteLifecycleAction"}, "LifecycleHookName": {"launch"}, "InstanceId": {"i-raw"}, "LifecycleActionResult": {"CONTINUE"}},
				wantStatus: http.StatusBadRequest, wantRoot: "ErrorResponse",
			},
			{
				name:       "missing hook name",
				form:       url.Values{"Action": {"CompleteLifecycleAction"}, "AutoScalingGroupName": {"kafka"}, "InstanceId": {"i-raw"}, "LifecycleActionResult": {"CONTINUE"}},
				wantStatus: http.StatusBadRequest, wantRoot: "ErrorResponse",
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				tc.form.Set("Version", "2011-01-01")
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL+"/", strings.NewReader(tc.form.Encode()))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/autoscaling/aws4_request, SignedHeaders=host, Signature=x")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				var root struct {
					XMLName xml.Name
					Code    string `xml:"Error>Code"`
				}
				if err := xml.Unmarshal(body, &root); err != nil {
					t.Fatalf("response is not XML: %v\n%s", err, body)
				}
				if resp.StatusCode != tc.wantStatus || root.XMLName.Local != tc.wantRoot {
					t.Errorf("got %d <%s>, want %d <%s>\n%s", resp.StatusCode, root.XMLName.Local, tc.wantStatus, tc.wantRoot, body)
				}
				if tc.wantStatus == http.StatusOK && root.XMLName.Space != autoscalingNamespace {
					t.Errorf("namespace %q, want %q", root.XMLName.Space, autoscalingNamespace)
				}
				if tc.wantStatus != http.StatusOK && root.Code != "ValidationError" {
					t.Errorf("error code %q, want ValidationError\n%s", root.Code, body)
				}
			})
		}
	})

	t.Run("faults apply", func(t *testing.T) {
		h.ClearFaults()
		h.ResetCounts()
		h.Inject(Fault{Action: "CompleteLifecycleAction", Kind: Throttle, Times: 2})
		if err := complete("i-throttled", "CONTINUE"); err != nil {
			t.Fatalf("completion after 2 throttles: %v", err)
		}
		if got := h.Calls("CompleteLifecycleAction"); got != 3 {
			t.Errorf("Calls(CompleteLifecycleAction) = %d, want 3", got)
		}

		h.ClearFaults()
		h.Inject(Fault{Action: "CompleteLifecycleAction", Kind: Crash, Times: 1})
		before := len(h.Completions())
		if code := errorCode(complete("i-crash", "CONTINUE")); code != "InjectedCrash" {
			t.Errorf("crashed completion code %q, want InjectedCrash", code)
		}
		comps := h.Completions()
		if len(comps) != before+1 || comps[len(comps)-1].InstanceID != "i-crash" {
			t.Errorf("the crashed completion took effect but was not recorded: %+v", comps)
		}
		// The caller retries after its crash, as a re-invoked function would, and
		// meets AWS's answer for an already completed action.
		wantValidationError(t, complete("i-crash", "CONTINUE"), "No active Lifecycle Action found with instance ID i-crash")
		h.ClearFaults()
	})
}

func leaseItem(cluster string, slot int) map[string]ddbtypes.AttributeValue {
	return map[string]ddbtypes.AttributeValue{
		"cluster": &ddbtypes.AttributeValueMemberS{Value: cluster},
		"slot":    &ddbtypes.AttributeValueMemberN{Value: fmt.Sprint(slot)},
	}
}

func taggedVolume(az, tag string) *ec2.CreateVolumeInput {
	return &ec2.CreateVolumeInput{
		AvailabilityZone: aws.String(az),
		Size:             aws.Int32(10),
		TagSpecifications: []ec2types.TagSpecification{{
			ResourceType: ec2types.ResourceTypeVolume,
			Tags:         []ec2types.Tag{{Key: aws.String("harness-test"), Value: aws.String(tag)}},
		}},
	}
}

func countTaggedVolumes(t *testing.T, c *ec2.Client, tag string) int {
	t.Helper()
	out, err := c.DescribeVolumes(t.Context(), &ec2.DescribeVolumesInput{
		Filters: []ec2types.Filter{{Name: aws.String("tag:harness-test"), Values: []string{tag}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Volumes)
}

func putAlarm(ctx context.Context, c *cloudwatch.Client, name string) error {
	_, err := c.PutMetricAlarm(ctx, &cloudwatch.PutMetricAlarmInput{
		AlarmName: aws.String(name), Namespace: aws.String("CWAgent"), MetricName: aws.String("disk_used_percent"),
		Statistic: cwtypes.StatisticMaximum, Period: aws.Int32(60), EvaluationPeriods: aws.Int32(1),
		Threshold: aws.Float64(80), ComparisonOperator: cwtypes.ComparisonOperatorGreaterThanOrEqualToThreshold,
	})
	return err
}

// The proxy provides EC2's ClientToken idempotency, which moto lacks: a repeated
// token returns the first resource, even after a crash and for concurrent calls.
func TestClientTokenIdempotency(t *testing.T) {
	h := Start(t)
	w := h.NewWorld(t, "tokens")
	ctx := context.Background()
	c := ec2.NewFromConfig(h.AWSConfig())
	create := func(token string) (string, error) {
		out, err := c.CreateVolume(ctx, &ec2.CreateVolumeInput{
			AvailabilityZone: aws.String(w.Subnets[0].AZ), Size: aws.Int32(1), ClientToken: aws.String(token),
		})
		if err != nil {
			return "", err
		}
		return aws.ToString(out.VolumeId), nil
	}
	h.Inject(Fault{Action: "CreateVolume", Kind: Crash, Times: 1})
	if _, err := create("t1"); errorCode(err) != "InjectedCrash" {
		t.Fatalf("want the crash, got %v", err)
	}
	ids := make([]string, 4)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := create("t1")
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	other, err := create("t2")
	if err != nil {
		t.Fatal(err)
	}
	out, err := ec2.NewFromConfig(h.DirectConfig()).DescribeVolumes(ctx, &ec2.DescribeVolumesInput{
		Filters: []ec2types.Filter{{Name: aws.String("availability-zone"), Values: []string{w.Subnets[0].AZ}}, {Name: aws.String("size"), Values: []string{"1"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Volumes) != 2 {
		t.Fatalf("%d volumes at moto, want 2 (one per token)", len(out.Volumes))
	}
	for _, id := range ids {
		if id != ids[0] || id == other {
			t.Fatalf("ids %v (token t1) and %s (token t2): want one id for t1, another for t2", ids, other)
		}
	}
}

// A forbidden call through the proxy is remembered across ResetCounts, so the
// end-of-test check sees it.
func TestForbiddenCallsAreRemembered(t *testing.T) {
	h := Start(t)
	w := h.NewWorld(t, "forbidden")
	ctx := context.Background()
	direct, proxied := ec2.NewFromConfig(h.DirectConfig()), ec2.NewFromConfig(h.AWSConfig())
	v, err := direct.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(w.Subnets[0].AZ), Size: aws.Int32(1)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.DeleteVolume(ctx, &ec2.DeleteVolumeInput{VolumeId: v.VolumeId}); err != nil {
		t.Fatal(err)
	}
	if got := h.Forbidden(); len(got) != 0 {
		t.Fatalf("a direct delete (test set-up) counted as forbidden: %v", got)
	}
	_, _ = proxied.DeleteVolume(ctx, &ec2.DeleteVolumeInput{VolumeId: aws.String("vol-0000000000000000")})
	h.ResetCounts()
	if got := h.Forbidden(); !slices.Equal(got, []string{"DeleteVolume"}) {
		t.Fatalf("Forbidden() = %v, want [DeleteVolume]", got)
	}
	// This harness would now fail its test at cleanup; declare the call deliberate.
	h.forbiddenSeen = 1
}

// autoscalingNamespace is the XML namespace of Auto Scaling's answers.
const autoscalingNamespace = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
