package emulator

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// The SDK retries a create whose answer was lost, and the first attempt may have
// taken effect (campaign seeds 775 and 378 failed to build their stage that way). Each
// of the world's creates, run a second time, must get moto's conflict and adopt what
// the first made, and must not adopt a different thing that conflicts.
func TestWorldCreatesAdoptWhatARetryFinds(t *testing.T) {
	e, err := Start()
	if errors.Is(err, ErrNoMoto) && os.Getenv("CI") != "true" {
		t.Skipf("skipping integration test: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("stopping the emulator: %v", err)
		}
	})
	ctx := t.Context()
	cfg := e.DirectConfig()
	ec2c, ddb := ec2.NewFromConfig(cfg), dynamodb.NewFromConfig(cfg)
	vpc, err := ec2c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.0.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	vpcID := aws.ToString(vpc.Vpc.VpcId)

	// conflicts asserts that moto itself refuses the repeated create with code, so
	// the adoption below is what makes the retry pass.
	conflicts := func(t *testing.T, code string, err error) {
		t.Helper()
		if got := awsapi.Code(err); got != code {
			t.Fatalf("repeated create answered %q (%v), want %s", got, err, code)
		}
	}

	t.Run("subnet", func(t *testing.T) {
		first, err := createSubnet(ctx, ec2c, vpcID, "10.0.1.0/24", "us-east-1a")
		if err != nil {
			t.Fatal(err)
		}
		_, err = ec2c.CreateSubnet(ctx, &ec2.CreateSubnetInput{
			VpcId: aws.String(vpcID), CidrBlock: aws.String("10.0.1.0/24"), AvailabilityZone: aws.String("us-east-1a"),
		})
		conflicts(t, "InvalidSubnet.Conflict", err)
		again, err := createSubnet(ctx, ec2c, vpcID, "10.0.1.0/24", "us-east-1a")
		if err != nil || again != first {
			t.Fatalf("retried create = %q, %v; want the first subnet %q", again, err, first)
		}
		// A different subnet that overlaps is not ours to adopt.
		other, err := createSubnet(ctx, ec2c, vpcID, "10.0.1.0/25", "us-east-1a")
		if err == nil || !strings.Contains(err.Error(), "0 subnets match") {
			t.Fatalf("overlapping create = %q, %v; want an error naming no match", other, err)
		}
	})

	t.Run("security group", func(t *testing.T) {
		first, err := createSecurityGroup(ctx, ec2c, vpcID, "brokers")
		if err != nil {
			t.Fatal(err)
		}
		_, err = ec2c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName: aws.String("brokers"), Description: aws.String("x"), VpcId: aws.String(vpcID),
		})
		conflicts(t, "InvalidGroup.Duplicate", err)
		again, err := createSecurityGroup(ctx, ec2c, vpcID, "brokers")
		if err != nil || again != first {
			t.Fatalf("retried create = %q, %v; want the first group %q", again, err, first)
		}
		// The same name in another VPC is another group.
		vpc2, err := ec2c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("10.1.0.0/16")})
		if err != nil {
			t.Fatal(err)
		}
		elsewhere, err := createSecurityGroup(ctx, ec2c, aws.ToString(vpc2.Vpc.VpcId), "brokers")
		if err != nil || elsewhere == first {
			t.Fatalf("create in another VPC = %q, %v; want a new group", elsewhere, err)
		}
	})

	t.Run("lease table", func(t *testing.T) {
		if err := createLeaseTable(ctx, ddb, "leases"); err != nil {
			t.Fatal(err)
		}
		if _, err := ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String("leases"), Item: leaseKey("c", "0")}); err != nil {
			t.Fatal(err)
		}
		_, err := ddb.CreateTable(ctx, leaseTableInput("leases"))
		conflicts(t, "ResourceInUseException", err)
		if err := createLeaseTable(ctx, ddb, "leases"); err != nil {
			t.Fatalf("retried create: %v", err)
		}
		out, err := ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String("leases"), Key: leaseKey("c", "0")})
		if err != nil || len(out.Item) == 0 {
			t.Fatalf("the first table's item after the retried create: %v, %v", out, err)
		}
	})
}

func leaseKey(cluster, slot string) map[string]ddbtypes.AttributeValue {
	return map[string]ddbtypes.AttributeValue{
		"cluster": &ddbtypes.AttributeValueMemberS{Value: cluster},
		"slot":    &ddbtypes.AttributeValueMemberN{Value: slot},
	}
}
