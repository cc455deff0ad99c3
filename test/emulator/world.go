package emulator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// Subnet is one subnet of a World.
type Subnet struct{ ID, AZ, CIDR string }

// World is the network and lease table a slotkeeper cluster lives in.
type World struct {
	// VPCID is the VPC (10.0.0.0/16).
	VPCID string
	// Subnets are one per AZ: 10.0.1.0/24 us-east-1a, 10.0.2.0/24 us-east-1b,
	// 10.0.3.0/24 us-east-1c, in that order.
	Subnets []Subnet
	// SecurityGroupID is a security group in the VPC.
	SecurityGroupID string
	// Table is the DynamoDB lease table.
	Table string
	// AMI is an image to launch instances from (one of moto's built-in images).
	AMI string
}

// worldSubnets is the subnet layout of every World.
var worldSubnets = []Subnet{
	{AZ: "us-east-1a", CIDR: "10.0.1.0/24"},
	{AZ: "us-east-1b", CIDR: "10.0.2.0/24"},
	{AZ: "us-east-1c", CIDR: "10.0.3.0/24"},
}

// SetupTimeout bounds each world-building call when its context has no earlier
// deadline.
const SetupTimeout = 30 * time.Second

// NewWorld creates, directly at moto (uncounted, unfaulted), a VPC 10.0.0.0/16 with
// three subnets (see World.Subnets), a security group, and the lease table `table`
// (PAY_PER_REQUEST; key "cluster" (S) HASH, "slot" (N) RANGE). Each call creates a
// new VPC; table names must be unique per emulator.
func (e *Emulator) NewWorld(ctx context.Context, table string) (*World, error) {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	cfg := e.DirectConfig()
	ec2c := ec2.NewFromConfig(cfg)
	w := &World{Table: table}

	vpc, err := ec2c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.0.0.0/16")})
	if err != nil {
		return nil, fmt.Errorf("creating world VPC: %w", err)
	}
	w.VPCID = aws.ToString(vpc.Vpc.VpcId)

	for _, s := range worldSubnets {
		if s.ID, err = createSubnet(ctx, ec2c, w.VPCID, s.CIDR, s.AZ); err != nil {
			return nil, err
		}
		w.Subnets = append(w.Subnets, s)
	}

	if w.SecurityGroupID, err = createSecurityGroup(ctx, ec2c, w.VPCID, "slotkeeper-brokers"); err != nil {
		return nil, err
	}

	w.AMI, err = pickAMI(ctx, ec2c)
	if err != nil {
		return nil, fmt.Errorf("%w", err)
	}

	if err := createLeaseTable(ctx, dynamodb.NewFromConfig(cfg), table); err != nil {
		return nil, err
	}
	return w, nil
}

// The world's creates are safe to retry. The SDK retries a call whose answer did not
// come (moto slow under load, a connection reset), and the first attempt may have
// taken effect: the retry then gets a conflict for what this world itself made. Each
// create adopts its own thing on that conflict; the VPC is new to the world and table
// names are unique per emulator, so what conflicts is the world's own.

// alreadyExists are the codes a create answers when what it makes is there already.
var alreadyExists = map[string]bool{
	"InvalidSubnet.Conflict": true, // CreateSubnet: the CIDR is taken in the VPC
	"InvalidGroup.Duplicate": true, // CreateSecurityGroup: the name is taken in the VPC
	"ResourceInUseException": true, // DynamoDB CreateTable: the table exists
}

// createOrAdopt runs create; when it fails because what it makes already exists,
// find returns the id of that.
func createOrAdopt(create, find func() (string, error)) (string, error) {
	id, err := create()
	if alreadyExists[awsapi.Code(err)] {
		return find()
	}
	return id, err
}

// createSubnet creates the subnet cidr of vpc in az, or adopts it (createOrAdopt).
func createSubnet(ctx context.Context, ec2c *ec2.Client, vpc, cidr, az string) (string, error) {
	id, err := createOrAdopt(func() (string, error) {
		out, err := ec2c.CreateSubnet(ctx, &ec2.CreateSubnetInput{
			VpcId: aws.String(vpc), CidrBlock: aws.String(cidr), AvailabilityZone: aws.String(az),
		})
		if err != nil {
			return "", err
		}
		return aws.ToString(out.Subnet.SubnetId), nil
	}, func() (string, error) { return subnetByCIDR(ctx, ec2c, vpc, cidr, az) })
	if err != nil {
		return "", fmt.Errorf("creating subnet %s in %s: %w", cidr, az, err)
	}
	return id, nil
}

// createSecurityGroup creates the security group name in vpc, or adopts it
// (createOrAdopt).
func createSecurityGroup(ctx context.Context, ec2c *ec2.Client, vpc, name string) (string, error) {
	id, err := createOrAdopt(func() (string, error) {
		out, err := ec2c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName: aws.String(name), Description: aws.String("slotkeeper test brokers"), VpcId: aws.String(vpc),
		})
		if err != nil {
			return "", err
		}
		return aws.ToString(out.GroupId), nil
	}, func() (string, error) { return securityGroupByName(ctx, ec2c, vpc, name) })
	if err != nil {
		return "", fmt.Errorf("creating security group in %s: %w", vpc, err)
	}
	return id, nil
}

// createLeaseTable creates the lease table (leaseTableInput), or adopts it when it
// exists already, and waits until it is active.
func createLeaseTable(ctx context.Context, ddb *dynamodb.Client, table string) error {
	if _, err := ddb.CreateTable(ctx, leaseTableInput(table)); err != nil && !alreadyExists[awsapi.Code(err)] {
		return fmt.Errorf("creating lease table %s: %w", table, err)
	}
	// moto creates tables ACTIVE at once; the waiter keeps this correct if that changes.
	if err := dynamodb.NewTableExistsWaiter(ddb, func(o *dynamodb.TableExistsWaiterOptions) {
		o.MinDelay = 50 * time.Millisecond
		o.MaxDelay = 200 * time.Millisecond
	}).Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)}, SetupTimeout); err != nil {
		return fmt.Errorf("waiting for lease table %s: %w", table, err)
	}
	return nil
}

// leaseTableInput is the lease table's definition: PAY_PER_REQUEST, key "cluster" (S)
// HASH, "slot" (N) RANGE.
func leaseTableInput(table string) *dynamodb.CreateTableInput {
	return &dynamodb.CreateTableInput{
		TableName:   aws.String(table),
		BillingMode: ddbtypes.BillingModePayPerRequest,
		AttributeDefinitions: []ddbtypes.AttributeDefinition{
			{AttributeName: aws.String("cluster"), AttributeType: ddbtypes.ScalarAttributeTypeS},
			{AttributeName: aws.String("slot"), AttributeType: ddbtypes.ScalarAttributeTypeN},
		},
		KeySchema: []ddbtypes.KeySchemaElement{
			{AttributeName: aws.String("cluster"), KeyType: ddbtypes.KeyTypeHash},
			{AttributeName: aws.String("slot"), KeyType: ddbtypes.KeyTypeRange},
		},
	}
}

// pickAMI returns one of moto's built-in images: an Amazon Linux 2 one if present
// (the full list is 1300 images, slow to describe), else any.
func pickAMI(ctx context.Context, ec2c *ec2.Client) (string, error) {
	for _, filters := range [][]ec2types.Filter{
		{{Name: aws.String("name"), Values: []string{"amzn2-ami-hvm-*-x86_64-gp2"}}},
		nil,
	} {
		out, err := ec2c.DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: filters})
		if err != nil {
			return "", fmt.Errorf("describing images: %w", err)
		}
		if len(out.Images) > 0 {
			return aws.ToString(out.Images[0].ImageId), nil
		}
	}
	return "", errors.New("moto has no images to launch instances from")
}

// RunInstance launches one t3.large instance of the world's AMI and security group in
// subnetID, directly at moto, and returns its id. moto reports it "running" at once.
func (e *Emulator) RunInstance(ctx context.Context, w *World, subnetID string) (string, error) {
	return e.RunInstanceTagged(ctx, w, subnetID, nil)
}

// RunInstanceTagged is RunInstance with instance tags set at launch, for example
// aws:autoscaling:groupName, which EC2 Auto Scaling puts on the instances it launches
// (moto accepts the aws: prefix at RunInstances).
func (e *Emulator) RunInstanceTagged(ctx context.Context, w *World, subnetID string, tags map[string]string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	in := &ec2.RunInstancesInput{
		ImageId:          aws.String(w.AMI),
		InstanceType:     ec2types.InstanceTypeT3Large,
		SubnetId:         aws.String(subnetID),
		SecurityGroupIds: []string{w.SecurityGroupID},
		MinCount:         aws.Int32(1),
		MaxCount:         aws.Int32(1),
	}
	if len(tags) > 0 {
		spec := ec2types.TagSpecification{ResourceType: ec2types.ResourceTypeInstance}
		for k, v := range tags {
			spec.Tags = append(spec.Tags, ec2types.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
		in.TagSpecifications = []ec2types.TagSpecification{spec}
	}
	out, err := ec2.NewFromConfig(e.DirectConfig()).RunInstances(ctx, in)
	if err != nil {
		return "", fmt.Errorf("running an instance in %s: %w", subnetID, err)
	}
	return aws.ToString(out.Instances[0].InstanceId), nil
}

// TerminateInstance terminates instance id directly at moto.
//
// What moto 5.2.5 does on termination, unlike AWS in places (checked by
// test/harness's tests):
//   - The instance is "terminated" at once (TerminateInstances answers
//     "shutting-down"; the next describe says "terminated"); there is no
//     shutting-down period.
//   - Every attached volume is detached at once and is "available" with no
//     attachments; those with DeleteOnTermination (the root volume) are deleted.
//   - ENIs are NOT detached, unlike AWS: a secondary ENI with DeleteOnTermination=false
//     stays "in-use" with its attachment still naming the terminated instance
//     (AWS would make it "available"). The primary ENI also survives, because moto
//     creates it with DeleteOnTermination=false. DetachNetworkInterface with that old
//     attachment id still works, and AttachNetworkInterface to a new instance
//     succeeds even while the ENI is "in-use" (AWS would refuse), replacing the stale
//     attachment.
//
// Other moto behaviour worth knowing when reading test results: AttachVolume does
// not check that the volume is available or in the instance's AZ (attaching an in-use
// volume to a second instance "succeeds"); DetachVolume without InstanceId fails with
// HTTP 500 (moto needs the instance id); detaching and attaching are instant.
func (e *Emulator) TerminateInstance(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	if _, err := ec2.NewFromConfig(e.DirectConfig()).TerminateInstances(ctx, &ec2.TerminateInstancesInput{
		InstanceIds: []string{id},
	}); err != nil {
		return fmt.Errorf("terminating instance %s: %w", id, err)
	}
	return nil
}

// subnetByCIDR finds the subnet of vpc with the CIDR block cidr in az.
func subnetByCIDR(ctx context.Context, ec2c *ec2.Client, vpc, cidr, az string) (string, error) {
	out, err := ec2c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []ec2types.Filter{
		{Name: aws.String("vpc-id"), Values: []string{vpc}},
		{Name: aws.String("cidr-block"), Values: []string{cidr}},
		{Name: aws.String("availability-zone"), Values: []string{az}},
	}})
	if err != nil {
		return "", fmt.Errorf("finding subnet %s of %s: %w", cidr, vpc, err)
	}
	if len(out.Subnets) != 1 {
		return "", fmt.Errorf("finding subnet %s of %s in %s: %d subnets match", cidr, vpc, az, len(out.Subnets))
	}
	return aws.ToString(out.Subnets[0].SubnetId), nil
}

// securityGroupByName finds the security group called name in vpc.
func securityGroupByName(ctx context.Context, ec2c *ec2.Client, vpc, name string) (string, error) {
	out, err := ec2c.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []ec2types.Filter{
		{Name: aws.String("vpc-id"), Values: []string{vpc}},
		{Name: aws.String("group-name"), Values: []string{name}},
	}})
	if err != nil {
		return "", fmt.Errorf("finding security group %s of %s: %w", name, vpc, err)
	}
	if len(out.SecurityGroups) != 1 {
		return "", fmt.Errorf("finding security group %s of %s: %d groups match", name, vpc, len(out.SecurityGroups))
	}
	return aws.ToString(out.SecurityGroups[0].GroupId), nil
}
