package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// A scale world is a harness.World whose three subnets are /20s (4,091 addresses
// each): a thousand slots need a thousand instances and a thousand ENIs, more than the
// /24s of harness.NewWorld hold.
func newScaleWorld(t testing.TB, h *harness.Harness, table string) *harness.World {
	t.Helper()
	ctx := context.Background()
	direct := h.DirectConfig()
	ec2c := ec2.NewFromConfig(direct)
	w := &harness.World{Table: table}
	vpc, err := ec2c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.0.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	w.VPCID = aws.ToString(vpc.Vpc.VpcId)
	for i, az := range []string{"us-east-1a", "us-east-1b", "us-east-1c"} {
		cidr := fmt.Sprintf("10.0.%d.0/20", 16*i)
		out, err := ec2c.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: aws.String(cidr), AvailabilityZone: aws.String(az)})
		if err != nil {
			t.Fatal(err)
		}
		w.Subnets = append(w.Subnets, harness.Subnet{ID: aws.ToString(out.Subnet.SubnetId), AZ: az, CIDR: cidr})
	}
	sg, err := ec2c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String("brokers"), Description: aws.String("brokers"), VpcId: vpc.Vpc.VpcId})
	if err != nil {
		t.Fatal(err)
	}
	w.SecurityGroupID = aws.ToString(sg.GroupId)
	images, err := ec2c.DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: []ec2types.Filter{{Name: aws.String("name"), Values: []string{"amzn2-ami-hvm-*-x86_64-gp2"}}}})
	if err != nil || len(images.Images) == 0 {
		t.Fatalf("no image to launch from: %v", err)
	}
	w.AMI = aws.ToString(images.Images[0].ImageId)
	ddb := dynamodb.NewFromConfig(direct)
	if _, err := ddb.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName: aws.String(table), BillingMode: ddbtypes.BillingModePayPerRequest,
		AttributeDefinitions: []ddbtypes.AttributeDefinition{
			{AttributeName: aws.String("cluster"), AttributeType: ddbtypes.ScalarAttributeTypeS},
			{AttributeName: aws.String("slot"), AttributeType: ddbtypes.ScalarAttributeTypeN},
		},
		KeySchema: []ddbtypes.KeySchemaElement{
			{AttributeName: aws.String("cluster"), KeyType: ddbtypes.KeyTypeHash},
			{AttributeName: aws.String("slot"), KeyType: ddbtypes.KeyTypeRange},
		},
	}); err != nil {
		t.Fatal(err)
	}
	return w
}

// scale is a cluster of many slots in a scale world, with the functions' handlers
// wired to the proxy as the functions wire them (DNS not managed, no Kafka).
type scale struct {
	*cluster
	alarms    *grow.Alarms
	reconcile *reconcile.Handler
	holders   []string // by slot; "" for a slot left free
}

var scaleSeq struct {
	sync.Mutex
	n int
}

// newScale builds a world and a cluster of slots slots, of which the first bound are
// bound to running instances of the group, each with its ENI and data volume attached
// and its disk alarm in place: what a thousand launches would leave, made directly at
// moto. The remaining slots are free.
func newScale(t testing.TB, h *harness.Harness, slots, bound int) *scale {
	t.Helper()
	scaleSeq.Lock()
	scaleSeq.n++
	name := fmt.Sprintf("scale%d", scaleSeq.n)
	scaleSeq.Unlock()
	w := newScaleWorld(t, h, name+"-leases")
	vars := map[string]string{
		"CLUSTER": name, "ASG_NAME": name + "-asg", "TABLE": w.Table, "SLOT_COUNT": strconv.Itoa(slots),
		"SUBNETS":         w.Subnets[0].ID + "," + w.Subnets[1].ID + "," + w.Subnets[2].ID,
		"SECURITY_GROUPS": w.SecurityGroupID, "HEARTBEAT_INTERVAL": "5s", "ATTACH_TIMEOUT": "20s",
		"GROW_FUNCTION_ARN": growFunctionARN,
	}
	cfg, err := config.Load(func(k string) string { return vars[strings.TrimPrefix(k, config.Prefix)] })
	if err != nil {
		t.Fatal(err)
	}
	awsCfg := h.AWSConfig()
	logs := &syncBuffer{}
	c := &cluster{t: t, h: h, w: w, cfg: cfg, logs: logs, metrics: &syncBuffer{}}
	log := obs.NewLogger(io.Discard, slog.LevelInfo) // a thousand slots log a lot
	c.launch = launch.New(cfg, ec2.NewFromConfig(awsCfg), autoscaling.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg), log, io.Discard)
	c.launch.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 20 * time.Second}
	c.ec2 = ec2.NewFromConfig(h.DirectConfig())
	c.store = lease.NewStore(dynamodb.NewFromConfig(h.DirectConfig()), cfg.Table, cfg.Cluster)
	s := &scale{cluster: c, holders: make([]string, slots)}
	cw := awsapi.NewCloudWatch(awsCfg)
	s.alarms = grow.NewAlarms(cfg, cw, log)
	c.launch.Followers = []launch.Follower{s.alarms}
	s.reconcile = reconcile.New(cfg, ec2.NewFromConfig(awsCfg), autoscaling.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg), log, io.Discard)
	s.reconcile.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 10 * time.Second}
	g := grow.New(cfg, ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg), ssm.NewFromConfig(awsCfg), nil, cw, log, io.Discard)
	s.reconcile.Repairers = []reconcile.Repairer{g, s.alarms}
	s.populate(bound)
	return s
}

// populate binds slots 0..bound-1 directly at moto (uncounted): instances of the
// group, ENIs and volumes with their slot tags, attached, the leases bound, and the disk
// alarms, pointed by one reconcile of the alarms.
func (s *scale) populate(bound int) {
	t, ctx := s.t, context.Background()
	perSubnet := [3][]string{}
	for i := range 3 {
		n := (bound + 2 - i) / 3 // slots i, i+3, ... below bound
		if n == 0 {
			continue
		}
		out, err := s.ec2.RunInstances(ctx, &ec2.RunInstancesInput{
			ImageId: aws.String(s.w.AMI), InstanceType: ec2types.InstanceTypeT3Large, SubnetId: aws.String(s.w.Subnets[i].ID),
			SecurityGroupIds: []string{s.w.SecurityGroupID}, MinCount: aws.Int32(int32(n)), MaxCount: aws.Int32(int32(n)),
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{
				{Key: aws.String("aws:autoscaling:groupName"), Value: aws.String(s.cfg.ASGName)}}}},
		})
		if err != nil {
			t.Fatalf("running %d instances: %v", n, err)
		}
		for _, in := range out.Instances {
			perSubnet[i] = append(perSubnet[i], aws.ToString(in.InstanceId))
		}
	}
	items := make([]map[string]ddbtypes.AttributeValue, bound)
	errs := make(chan error, bound)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for sl := range bound {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			sub := s.w.Subnets[sl%3]
			id := perSubnet[sl%3][sl/3]
			s.holders[sl] = id
			tags := func(rt ec2types.ResourceType) []ec2types.TagSpecification {
				return []ec2types.TagSpecification{{ResourceType: rt, Tags: []ec2types.Tag{
					{Key: aws.String(resources.TagCluster), Value: aws.String(s.cfg.Cluster)},
					{Key: aws.String(resources.TagSlot), Value: aws.String(strconv.Itoa(sl))}}}}
			}
			eni, err := s.ec2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(sub.ID),
				Groups: []string{s.w.SecurityGroupID}, TagSpecifications: tags(ec2types.ResourceTypeNetworkInterface)})
			if err != nil {
				errs <- err
				return
			}
			vol, err := s.ec2.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(sub.AZ), Size: aws.Int32(100),
				VolumeType: ec2types.VolumeTypeGp3, TagSpecifications: tags(ec2types.ResourceTypeVolume)})
			if err != nil {
				errs <- err
				return
			}
			eniID, volID := aws.ToString(eni.NetworkInterface.NetworkInterfaceId), aws.ToString(vol.VolumeId)
			if _, err := s.ec2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: &eniID, InstanceId: &id, DeviceIndex: aws.Int32(1)}); err != nil {
				errs <- err
				return
			}
			if _, err := s.ec2.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: &volID, InstanceId: &id, Device: aws.String(s.cfg.Volume.Device)}); err != nil {
				errs <- err
				return
			}
			item, err := attributevalue.MarshalMap(lease.Lease{Cluster: s.cfg.Cluster, Slot: sl, State: lease.Bound, Version: 1, Holder: id,
				HolderAZ: sub.AZ, ENIID: eniID, VolumeID: volID, IP: aws.ToString(eni.NetworkInterface.PrivateIpAddress), ClaimedAt: now, UpdatedAt: now,
				History: []lease.Transition{{At: now, From: lease.Free, To: lease.Bound, Version: 1, Instance: id, Actor: "test", Reason: "scale set-up"}}})
			if err != nil {
				errs <- err
				return
			}
			items[sl] = item
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("populating %d slots: %v", bound, err)
	}
	ddb := dynamodb.NewFromConfig(s.h.DirectConfig())
	for start := 0; start < bound; start += 25 {
		var reqs []ddbtypes.WriteRequest
		for _, item := range items[start:min(start+25, bound)] {
			reqs = append(reqs, ddbtypes.WriteRequest{PutRequest: &ddbtypes.PutRequest{Item: item}})
		}
		if _, err := ddb.BatchWriteItem(ctx, &dynamodb.BatchWriteItemInput{RequestItems: map[string][]ddbtypes.WriteRequest{s.cfg.Table: reqs}}); err != nil {
			t.Fatalf("writing leases: %v", err)
		}
	}
	leases, err := s.store.List(ctx)
	if err != nil || len(leases) != bound {
		t.Fatalf("%d leases written of %d: %v", len(leases), bound, err)
	}
	if _, err := s.alarms.Reconcile(ctx, leases); err != nil { // the alarms launch would have pointed
		t.Fatalf("pointing %d disk alarms: %v", bound, err)
	}
}

// status runs `slotctl status --json` against the cluster through the proxy.
func (s *scale) status() (int, slotctl.Survey, string) {
	s.t.Helper()
	vars := map[string]string{
		"CLUSTER": s.cfg.Cluster, "TABLE": s.cfg.Table, "SLOT_COUNT": strconv.Itoa(s.cfg.SlotCount), "ASG_NAME": s.cfg.ASGName,
		"SUBNETS": strings.Join(s.cfg.Subnets, ","), "SECURITY_GROUPS": strings.Join(s.cfg.SecurityGroups, ","),
	}
	var out, errOut bytes.Buffer
	code := slotctl.Main(context.Background(), []string{"status", "--json", "--timeout", scaleDeadline.String()}, slotctl.IO{
		Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return vars[strings.TrimPrefix(k, config.Prefix)] },
		Clients: slotctl.NewClients(s.h.AWSConfig()),
	})
	var sv slotctl.Survey
	if err := json.Unmarshal(out.Bytes(), &sv); err != nil {
		s.t.Fatalf("slotctl status --json: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	return code, sv, errOut.String()
}

// valuesPerRequest records, for every EC2 describe the proxy passes, the largest number
// of values in one filter or id list of the request. Install it right after
// harness.Start (see harness.Override).
type valuesPerRequest struct {
	mu   sync.Mutex
	max  map[string]int // action -> the most values seen in one request
	seen map[string]int // action -> requests
}

var listParamRE = regexp.MustCompile(`^(?:Filter\.(\d+)\.Value|InstanceId|VolumeId|NetworkInterfaceId)\.(\d+)$`)

func recordValuesPerRequest(h *harness.Harness) *valuesPerRequest {
	v := &valuesPerRequest{max: map[string]int{}, seen: map[string]int{}}
	for _, action := range []string{"DescribeInstances", "DescribeVolumes", "DescribeNetworkInterfaces", "DescribeVolumesModifications"} {
		h.Override(harness.Override{Action: action, Rewrite: func(req, resp []byte) []byte {
			form, err := url.ParseQuery(string(req))
			if err != nil {
				return resp
			}
			most := 0
			for k := range form {
				if m := listParamRE.FindStringSubmatch(k); m != nil {
					n, _ := strconv.Atoi(m[2])
					most = max(most, n)
				}
			}
			v.mu.Lock()
			v.max[action] = max(v.max[action], most)
			v.seen[action]++
			v.mu.Unlock()
			return resp
		}})
	}
	return v
}

func (v *valuesPerRequest) snapshot() (map[string]int, map[string]int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	most, seen := map[string]int{}, map[string]int{}
	for k, n := range v.max {
		most[k] = n
	}
	for k, n := range v.seen {
		seen[k] = n
	}
	return most, seen
}

// scaleDeadline bounds one invocation at scale: moto's tag filters make the describes
// that find a slot's ENI or volume take seconds each at a thousand slots (EC2 answers
// them in milliseconds), more on a busy machine; the launch function's own budget is
// 900 s.
const scaleDeadline = 10 * time.Minute

// invoke delivers payload to the launch handler as the Lambda runtime does, with
// scaleDeadline.
func (s *scale) invoke(payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), scaleDeadline)
	defer cancel()
	ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: fmt.Sprintf("scale-%d", time.Now().UnixNano())})
	_, err := lambda.NewHandler(s.launch).Invoke(ctx, payload)
	return err
}

// launchAll delivers the launch events of instances concurrently (see invoke).
func (s *scale) launchAll(instances ...string) {
	s.t.Helper()
	errs := make([]error, len(instances))
	var wg sync.WaitGroup
	for i, id := range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.invoke(s.launchEvent(id))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			s.t.Fatalf("launch of %s: %v", instances[i], err)
		}
	}
}
