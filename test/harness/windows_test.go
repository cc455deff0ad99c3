package harness

import (
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// The windows the proxy models on top of moto (windows.go), and the LostResponse
// fault, seen through the SDK as code under test sees them.
func TestWindows(t *testing.T) {
	t.Parallel()
	h := Start(t)
	ctx := t.Context()
	w := h.NewWorld(t, "leases")
	proxied, direct := newSDK(h.AWSConfig()), newSDK(h.DirectConfig())

	stateOf := func(t *testing.T, c *ec2.Client, id string) ec2types.InstanceStateName {
		t.Helper()
		out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		return out.Reservations[0].Instances[0].State.Name
	}

	t.Run("instance state and held plain detach", func(t *testing.T) {
		id, other := h.RunInstance(t, w, w.Subnets[0].ID), h.RunInstance(t, w, w.Subnets[0].ID)
		vol, err := direct.ec2.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(w.Subnets[0].AZ), Size: aws.Int32(10)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := direct.ec2.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id, Device: aws.String("/dev/sdf")}); err != nil {
			t.Fatal(err)
		}
		h.SetInstanceState(id, "shutting-down")
		h.HoldPlainDetach(id, true)
		if got := stateOf(t, proxied.ec2, id); got != ec2types.InstanceStateNameShuttingDown {
			t.Errorf("through the proxy %s is %s, want shutting-down", id, got)
		}
		if got := stateOf(t, proxied.ec2, other); got != ec2types.InstanceStateNameRunning {
			t.Errorf("an instance not modelled is %s, want running (moto's)", got)
		}
		if got := stateOf(t, direct.ec2, id); got != ec2types.InstanceStateNameRunning {
			t.Errorf("moto itself says %s, want running", got)
		}
		out, err := proxied.ec2.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id})
		if err != nil || out.State != ec2types.VolumeAttachmentStateDetaching {
			t.Fatalf("held plain detach: %+v, %v; want detaching", out, err)
		}
		vols, err := direct.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{*vol.VolumeId}})
		if err != nil || vols.Volumes[0].State != ec2types.VolumeStateInUse {
			t.Fatalf("after a held plain detach the volume is %+v, %v; want still in use", vols, err)
		}
		if _, err := proxied.ec2.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id, Force: aws.Bool(true)}); err != nil {
			t.Fatal(err)
		}
		vols, err = direct.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{*vol.VolumeId}})
		if err != nil || vols.Volumes[0].State != ec2types.VolumeStateAvailable {
			t.Fatalf("a forced detach was held too: %+v, %v", vols, err)
		}
		h.SetInstanceState(id, "")
		if got := stateOf(t, proxied.ec2, id); got != ec2types.InstanceStateNameRunning {
			t.Errorf("after forgetting the state %s is %s, want moto's running", id, got)
		}
	})

	t.Run("group instance and its termination", func(t *testing.T) {
		id, plain := h.RunInstance(t, w, w.Subnets[1].ID), h.RunInstance(t, w, w.Subnets[1].ID)
		h.SetGroupInstance(id, GroupInstance{Group: "brokers", AZ: w.Subnets[1].AZ, LifecycleState: "InService", HealthStatus: "Healthy"})
		describe := func() map[string]string {
			out, err := proxied.asg.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{id, plain}})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, i := range out.AutoScalingInstances {
				got[aws.ToString(i.InstanceId)] = aws.ToString(i.AutoScalingGroupName) + "/" + aws.ToString(i.LifecycleState) + "/" + aws.ToString(i.HealthStatus)
			}
			return got
		}
		if got := describe(); len(got) != 1 || got[id] != "brokers/InService/Healthy" {
			t.Fatalf("DescribeAutoScalingInstances = %v, want only %s InService", got, id)
		}
		out, err := proxied.asg.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
			InstanceId: &id, ShouldDecrementDesiredCapacity: aws.Bool(false)})
		if err != nil || out.Activity == nil || aws.ToString(out.Activity.Description) != "Terminating EC2 instance: "+id {
			t.Fatalf("TerminateInstanceInAutoScalingGroup: %+v, %v", out, err)
		}
		if got := describe(); got[id] != "brokers/Terminating:Wait/Healthy" {
			t.Errorf("after the termination request: %v, want Terminating:Wait", got)
		}
		if got := stateOf(t, direct.ec2, id); got != ec2types.InstanceStateNameRunning {
			t.Errorf("moto terminated the instance (%s): the hook's wait is not modelled", got)
		}
		if got := h.GroupTerminations(); len(got) != 1 || got[0] != id {
			t.Errorf("GroupTerminations = %v", got)
		}
	})

	t.Run("expired lifecycle action", func(t *testing.T) {
		id := h.RunInstance(t, w, w.Subnets[2].ID)
		in := &autoscaling.RecordLifecycleActionHeartbeatInput{AutoScalingGroupName: aws.String("g"), LifecycleHookName: aws.String("launch"), InstanceId: &id}
		if _, err := proxied.asg.RecordLifecycleActionHeartbeat(ctx, in); err != nil {
			t.Fatalf("heartbeat of a pending action: %v", err)
		}
		h.ExpireLifecycleAction("g", "launch", id)
		_, err := proxied.asg.RecordLifecycleActionHeartbeat(ctx, in)
		if errorCode(err) != "ValidationError" || !strings.Contains(err.Error(), "No active Lifecycle Action found with instance ID "+id) {
			t.Fatalf("heartbeat of an expired action: %v, want the ValidationError AWS answers", err)
		}
		for _, c := range h.Completions() {
			if c.InstanceID == id {
				t.Errorf("an expiry was recorded as a completion: %+v", c)
			}
		}
	})

	t.Run("lost response", func(t *testing.T) {
		t.Cleanup(h.ClearFaults)
		h.ResetCounts()
		h.Inject(Fault{Action: "UpdateItem", Kind: LostResponse, Times: 1})
		key := map[string]ddbtypes.AttributeValue{"cluster": &ddbtypes.AttributeValueMemberS{Value: "c"}, "slot": &ddbtypes.AttributeValueMemberN{Value: "1"}}
		// A write that is not idempotent: the retry's condition meets the first attempt.
		_, err := proxied.ddb.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(w.Table), Key: key,
			UpdateExpression: aws.String("SET v = :v"), ConditionExpression: aws.String("attribute_not_exists(v)"),
			ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":v": &ddbtypes.AttributeValueMemberN{Value: "1"}}})
		if errorCode(err) != "ConditionalCheckFailedException" {
			t.Fatalf("UpdateItem with its response lost: %v, want the retry's ConditionalCheckFailedException", err)
		}
		if n := h.Calls("UpdateItem"); n != 2 {
			t.Errorf("%d UpdateItem calls, want 2 (the lost one and the SDK's retry)", n)
		}
		got, err := direct.ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(w.Table), Key: key})
		if err != nil || got.Item["v"] == nil {
			t.Fatalf("the first attempt did not take effect: %+v, %v", got, err)
		}
	})
}
