package harness

import (
	"bytes"
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
)

// moto does not implement DescribeInstanceRefreshes; the proxy answers it with an
// empty list, which an Override can replace with a recorded AWS answer.
func TestDescribeInstanceRefreshes(t *testing.T) {
	h := Start(t)
	recorded := []byte(`<DescribeInstanceRefreshesResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
  <DescribeInstanceRefreshesResult><InstanceRefreshes><member>
    <InstanceRefreshId>08b91cf7-8fa6-48af-b6a6-d227f40f1b9b</InstanceRefreshId><AutoScalingGroupName>g</AutoScalingGroupName>
    <Status>InProgress</Status><Preferences><MinHealthyPercentage>100</MinHealthyPercentage><MaxHealthyPercentage>110</MaxHealthyPercentage></Preferences>
  </member></InstanceRefreshes></DescribeInstanceRefreshesResult>
  <ResponseMetadata><RequestId>c8d9e3b5-1f2a-4d3e-9b7a-0123456789ab</RequestId></ResponseMetadata>
</DescribeInstanceRefreshesResponse>`)
	h.Override(Override{Action: "DescribeInstanceRefreshes", Rewrite: func(req, resp []byte) []byte {
		if bytes.Contains(req, []byte("AutoScalingGroupName=g&")) || bytes.HasSuffix(req, []byte("AutoScalingGroupName=g")) {
			return recorded
		}
		return resp
	}})
	asg := autoscaling.NewFromConfig(h.AWSConfig())
	ctx := context.Background()
	none, err := asg.DescribeInstanceRefreshes(ctx, &autoscaling.DescribeInstanceRefreshesInput{AutoScalingGroupName: aws.String("other")})
	if err != nil || len(none.InstanceRefreshes) != 0 {
		t.Fatalf("a group never refreshed: %+v, %v; want an empty list", none, err)
	}
	one, err := asg.DescribeInstanceRefreshes(ctx, &autoscaling.DescribeInstanceRefreshesInput{AutoScalingGroupName: aws.String("g")})
	if err != nil || len(one.InstanceRefreshes) != 1 || aws.ToInt32(one.InstanceRefreshes[0].Preferences.MaxHealthyPercentage) != 110 {
		t.Fatalf("the recorded answer: %+v, %v", one, err)
	}
	if n := h.Calls("DescribeInstanceRefreshes"); n != 2 {
		t.Errorf("%d calls counted, want 2", n)
	}
}
