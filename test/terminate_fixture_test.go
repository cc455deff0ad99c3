package test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
)

// terminate returns a terminate handler of this cluster talking through the proxy,
// with waits short enough for tests. k may be nil (no Kafka checks).
func (c *cluster) terminate(k terminate.Kafka) *terminate.Handler {
	cfg := c.h.AWSConfig()
	t := terminate.New(c.cfg, ec2.NewFromConfig(cfg), autoscaling.NewFromConfig(cfg), dynamodb.NewFromConfig(cfg),
		ssm.NewFromConfig(cfg), newLogger(c.logs), c.metrics)
	if k != nil {
		t.Kafka = k
	}
	t.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 5 * time.Second}
	t.HeartbeatInterval = 50 * time.Millisecond
	t.SafetyRecheck = 50 * time.Millisecond
	t.SafetyMaxWait = 3 * time.Second
	t.LeaveTimeout = 300 * time.Millisecond
	t.SSMPoll = 10 * time.Millisecond
	// The tests' invocations have 2 minutes; the rest of a removal needs seconds here.
	t.GateReserve = 20 * time.Second
	// Renewed every 5 s: no test's removal takes that long, so the stamps the tests
	// see are the ones taken (a test of a silent death writes its own).
	t.StampTTL = 10 * time.Second
	return t
}

// reconciler returns a reconcile handler of this cluster talking through the proxy.
func (c *cluster) reconciler() *reconcile.Handler {
	cfg := c.h.AWSConfig()
	r := reconcile.New(c.cfg, ec2.NewFromConfig(cfg), autoscaling.NewFromConfig(cfg), dynamodb.NewFromConfig(cfg), newLogger(c.logs), c.metrics)
	r.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 5 * time.Second}
	return r
}

// terminateEvent is events/terminate-lifecycle.json for instance, in this cluster's ASG.
func (c *cluster) terminateEvent(instance string) []byte {
	return c.event("terminate-lifecycle.json", func(m map[string]any) {
		d := m["detail"].(map[string]any)
		d["AutoScalingGroupName"] = c.cfg.ASGName
		d["EC2InstanceId"] = instance
		d["LifecycleActionToken"] = "token-" + instance
	})
}

// scheduleEvent and terminatedEvent are the reconcile triggers.
func (c *cluster) scheduleEvent() []byte { return c.event("schedule.json", nil) }

func (c *cluster) terminatedEvent(instance string) []byte {
	return c.event("state-change-terminated.json", func(m map[string]any) {
		m["detail"].(map[string]any)["instance-id"] = instance
	})
}

// invokeWith delivers payload to handler exactly as the Lambda runtime does.
func invokeWith(handler lambda.Handler, payload []byte) error {
	requestSeq.Lock()
	requestSeq.n++
	id := fmt.Sprintf("req-%04d", requestSeq.n)
	requestSeq.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: id})
	_, err := lambda.NewHandler(handler).Invoke(ctx, payload)
	return err
}

// ssmCommands returns the SSM commands the code under test sent to instance since the
// last ResetCounts, as (comment, script) pairs, read from the requests themselves.
func (c *cluster) ssmCommands(instance string) [][2]string {
	c.t.Helper()
	var res [][2]string
	for _, body := range c.h.Bodies("SendCommand") {
		var in struct {
			InstanceIds []string
			Comment     string
			Parameters  map[string][]string
		}
		if err := json.Unmarshal(body, &in); err != nil {
			c.t.Fatalf("decoding a SendCommand request: %v", err)
		}
		if slices.Contains(in.InstanceIds, instance) {
			res = append(res, [2]string{in.Comment, strings.Join(in.Parameters["commands"], "\n")})
		}
	}
	return res
}
