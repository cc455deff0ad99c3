package lifecycle

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// GroupInstance is an instance as its Auto Scaling group sees it.
type GroupInstance struct {
	Group string
	// LifecycleState is e.g. Pending:Wait, InService, Terminating:Wait, Warmed:Pending.
	LifecycleState string
	// HealthStatus is Healthy or Unhealthy.
	HealthStatus string
}

// DescribeGroupInstances returns the group view of each of ids that belongs to an Auto
// Scaling group; ids of no group are absent.
func DescribeGroupInstances(ctx context.Context, api awsapi.AutoScaling, ids []string) (map[string]GroupInstance, error) {
	out := make(map[string]GroupInstance, len(ids))
	// DescribeAutoScalingInstances takes at most 50 ids per call.
	for start := 0; start < len(ids); start += 50 {
		page := ids[start:min(start+50, len(ids))]
		resp, err := api.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: page})
		if err != nil {
			return nil, fmt.Errorf("describing %v in their Auto Scaling group: %w", page, err)
		}
		for _, i := range resp.AutoScalingInstances {
			out[aws.ToString(i.InstanceId)] = GroupInstance{
				Group: aws.ToString(i.AutoScalingGroupName), LifecycleState: aws.ToString(i.LifecycleState),
				HealthStatus: aws.ToString(i.HealthStatus),
			}
		}
	}
	return out, nil
}
