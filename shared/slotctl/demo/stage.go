package demo

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/test/emulator"
	"github.com/slotkeeper/slotkeeper/test/fakekafka"
	"github.com/slotkeeper/slotkeeper/test/realkafka"
)

// Names in the demo's deployment.
const (
	Slots         = 3
	LaunchHook    = "slotkeeper-launch"
	TerminateHook = "slotkeeper-terminate"
	// Topic is the demo's topic: 3 partitions, replication factor 3, min ISR 2.
	Topic = "orders"
	// VolumeGiB is a new slot volume's size.
	VolumeGiB = 100
)

// Stage is a slotkeeper deployment on this machine: in moto (behind the emulator's
// proxy) a VPC with three AZs, the lease table, a private hosted zone and the brokers'
// Auto Scaling group with both lifecycle hooks (900 s, as the template makes them) and
// its AZRebalance process suspended; and a Kafka of three brokers with a topic:
// in-process (kfake), or Apache Kafka itself (StageOptions.RealKafka). Everything was
// created directly at moto, so the proxy has counted nothing yet. Close stops the
// in-process Kafka; the emulator is the caller's.
type Stage struct {
	H     *emulator.Emulator
	World *emulator.World
	// Kafka is the in-process Kafka (kfake, scriptable ISR); nil when Real is set.
	Kafka *fakekafka.Cluster
	// Real is the Apache Kafka cluster of StageOptions.RealKafka, else nil.
	Real   *realkafka.Cluster
	ZoneID string
	// Vars are the deployment's SLOTKEEPER_ variables (names without the prefix), as
	// the functions would be configured.
	Vars map[string]string
	// Config is Vars, loaded.
	Config config.Config
}

// StageOptions choose a Stage's size and Kafka.
type StageOptions struct {
	// RealKafka, when set, is the stage's Kafka instead of kfake: a running cluster
	// whose node ids 0..2 are the slots' (realkafka.Start with 3 nodes). The stage
	// creates its topic there.
	RealKafka *realkafka.Cluster
	// Slots is the slot count (the group's maximum size, and kfake's broker count);
	// 0 means Slots (3). With RealKafka it must be 0 or 3.
	Slots int
}

// NewStage builds a deployment of cluster in h, with kfake. Names derive from
// cluster, so several stages can share an emulator.
func NewStage(ctx context.Context, h *emulator.Emulator, cluster string) (*Stage, error) {
	return NewStageWith(ctx, h, cluster, StageOptions{})
}

// NewStageWith builds a deployment of cluster in h with the given Kafka.
func NewStageWith(ctx context.Context, h *emulator.Emulator, cluster string, opt StageOptions) (s *Stage, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	slots := Slots
	if opt.Slots > 0 {
		slots = opt.Slots
	}
	if opt.RealKafka != nil && slots != Slots {
		return nil, fmt.Errorf("a stage on Apache Kafka has %d slots, not %d", Slots, slots)
	}
	w, err := h.NewWorld(ctx, cluster+"-leases")
	if err != nil {
		return nil, err
	}
	s = &Stage{H: h, World: w}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	direct := h.DirectConfig()

	// The brokers' group: the slot subnets, room for the slots, both hooks.
	asgName := cluster + "-brokers"
	ec2c := ec2.NewFromConfig(direct)
	if _, err := ec2c.CreateLaunchTemplate(ctx, &ec2.CreateLaunchTemplateInput{
		LaunchTemplateName: aws.String(cluster + "-broker"),
		LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(w.AMI), InstanceType: ec2types.InstanceTypeT3Large},
	}); err != nil {
		return nil, fmt.Errorf("creating the launch template: %w", err)
	}
	asg := autoscaling.NewFromConfig(direct)
	var subnets []string
	for _, sn := range w.Subnets {
		subnets = append(subnets, sn.ID)
	}
	if _, err := asg.CreateAutoScalingGroup(ctx, &autoscaling.CreateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String(asgName),
		LaunchTemplate:       &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String(cluster + "-broker"), Version: aws.String("$Latest")},
		MinSize:              aws.Int32(0), MaxSize: aws.Int32(int32(slots)), DesiredCapacity: aws.Int32(0),
		VPCZoneIdentifier: aws.String(strings.Join(subnets, ",")),
		HealthCheckType:   aws.String("EC2"), HealthCheckGracePeriod: aws.Int32(600),
	}); err != nil {
		return nil, fmt.Errorf("creating group %s: %w", asgName, err)
	}
	// Rebalancing between AZs launches before it terminates: slots cannot follow.
	if _, err := asg.SuspendProcesses(ctx, &autoscaling.SuspendProcessesInput{
		AutoScalingGroupName: aws.String(asgName), ScalingProcesses: []string{"AZRebalance"},
	}); err != nil {
		return nil, fmt.Errorf("suspending AZRebalance of %s: %w", asgName, err)
	}
	for _, hk := range []struct{ name, transition, result string }{
		{LaunchHook, "autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"},
		{TerminateHook, "autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE"},
	} {
		if _, err := asg.PutLifecycleHook(ctx, &autoscaling.PutLifecycleHookInput{
			AutoScalingGroupName: aws.String(asgName), LifecycleHookName: aws.String(hk.name),
			LifecycleTransition: aws.String(hk.transition), DefaultResult: aws.String(hk.result), HeartbeatTimeout: aws.Int32(900),
		}); err != nil {
			return nil, fmt.Errorf("creating lifecycle hook %s: %w", hk.name, err)
		}
	}

	// The private zone of the broker names.
	dnsName := cluster + ".kafka.internal"
	zone, err := route53.NewFromConfig(direct).CreateHostedZone(ctx, &route53.CreateHostedZoneInput{
		Name: aws.String(dnsName), CallerReference: aws.String(cluster + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)),
		HostedZoneConfig: &r53types.HostedZoneConfig{PrivateZone: true, Comment: aws.String("slotkeeper demo")},
		VPC:              &r53types.VPC{VPCId: aws.String(w.VPCID), VPCRegion: r53types.VPCRegion(h.Region)},
	})
	if err != nil {
		return nil, fmt.Errorf("creating hosted zone %s: %w", dnsName, err)
	}
	s.ZoneID = strings.TrimPrefix(aws.ToString(zone.HostedZone.Id), "/hostedzone/")

	// Kafka: brokers 0..2 are the slots' node ids.
	var bootstrap []string
	if opt.RealKafka != nil {
		s.Real = opt.RealKafka
		bootstrap = s.Real.Addrs
		cl, err := s.Real.Client()
		if err != nil {
			return nil, fmt.Errorf("a client of Apache Kafka: %w", err)
		}
		resp, err := kadm.NewClient(cl).CreateTopic(ctx, 3, 3, nil, Topic)
		cl.Close()
		if err == nil {
			err = resp.Err
		}
		if err != nil {
			return nil, fmt.Errorf("creating topic %s in Apache Kafka: %w", Topic, err)
		}
	} else {
		if s.Kafka, err = fakekafka.Start(kfake.NumBrokers(slots)); err != nil {
			return nil, err
		}
		if err := s.Kafka.CreateTopic(ctx, Topic, 3, 3, nil); err != nil {
			return nil, err
		}
		bootstrap = s.Kafka.Addrs
	}

	s.Vars = map[string]string{
		"CLUSTER": cluster, "ASG_NAME": asgName, "TABLE": w.Table, "SLOT_COUNT": strconv.Itoa(slots),
		"SUBNETS": strings.Join(subnets, ","), "SECURITY_GROUPS": w.SecurityGroupID,
		"VOLUME_SIZE_GIB": strconv.Itoa(VolumeGiB), "HEARTBEAT_INTERVAL": "5s", "ATTACH_TIMEOUT": "20s",
		"GROW_FUNCTION_ARN": "arn:aws:lambda:" + h.Region + ":123456789012:function:" + cluster + "-grow",
		"HOSTED_ZONE_ID":    s.ZoneID, "DNS_NAME": dnsName, "DNS_TTL": "30",
		"KAFKA_BOOTSTRAP": strings.Join(bootstrap, ","),
		"SAFETY_RECHECK":  "500ms", "SAFETY_MAX_WAIT": "2m", "SSM_TIMEOUT": "20s",
		"STOP_COMMAND": "systemctl stop kafka", "LOG_LEVEL": "debug",
	}
	if s.Config, err = config.Load(func(k string) string { return s.Vars[strings.TrimPrefix(k, config.Prefix)] }); err != nil {
		return nil, fmt.Errorf("the demo's configuration: %w", err)
	}
	return s, nil
}

// Close stops the stage's in-process Kafka, if it has one. It is safe to call more
// than once.
func (s *Stage) Close() {
	if s.Kafka != nil {
		s.Kafka.Close()
	}
}

// Env returns the deployment's configuration as "SLOTKEEPER_NAME=value" entries.
func (s *Stage) Env() []string {
	var env []string
	for k, v := range s.Vars {
		env = append(env, config.Prefix+k+"="+v)
	}
	return env
}

// Clients returns slotctl clients that read the stage directly at moto (uncounted).
func (s *Stage) Clients() *slotctl.Clients {
	c := slotctl.NewClients(s.H.DirectConfig())
	c.KafkaConfig = s.Config.Kafka
	return c
}

// Launch runs an instance of the group in subnet i (AZ a, b, c) from the group's
// launch template, tagged as the group tags its instances, and returns its id. It is
// not in moto's group: see Join.
func (s *Stage) Launch(ctx context.Context, i int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := ec2.NewFromConfig(s.H.DirectConfig()).RunInstances(ctx, &ec2.RunInstancesInput{
		LaunchTemplate:   &ec2types.LaunchTemplateSpecification{LaunchTemplateName: aws.String(s.Config.Cluster + "-broker"), Version: aws.String("$Latest")},
		SubnetId:         aws.String(s.World.Subnets[i].ID),
		SecurityGroupIds: []string{s.World.SecurityGroupID},
		MinCount:         aws.Int32(1), MaxCount: aws.Int32(1),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance,
			Tags: []ec2types.Tag{{Key: aws.String("aws:autoscaling:groupName"), Value: aws.String(s.Config.ASGName)}}}},
	})
	if err != nil {
		return "", fmt.Errorf("running an instance in %s: %w", s.World.Subnets[i].ID, err)
	}
	return aws.ToString(out.Instances[0].InstanceId), nil
}

// Join attaches instances to moto's group, InService (moto raises the desired
// capacity to the group's size).
func (s *Stage) Join(ctx context.Context, ids ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := autoscaling.NewFromConfig(s.H.DirectConfig()).AttachInstances(ctx, &autoscaling.AttachInstancesInput{
		AutoScalingGroupName: aws.String(s.Config.ASGName), InstanceIds: ids}); err != nil {
		return fmt.Errorf("attaching %v to group %s: %w", ids, s.Config.ASGName, err)
	}
	return nil
}
