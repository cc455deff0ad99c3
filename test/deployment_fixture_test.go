package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// deployment is a whole slotkeeper deployment in the emulator (demo.Stage: the group
// with both hooks, the lease table, the private zone, kfake with a topic) with every
// function's handler wired exactly as its functions/<name>/main.go wires it: launch
// with the disk-alarm and DNS followers, terminate with the DNS drainer and Kafka,
// reconcile with the growth, alarm and DNS repairers, grow. Handlers talk through the
// proxy, so their calls are counted; set-up and assertions go to moto directly.
type deployment struct {
	t   testing.TB
	h   *harness.Harness
	st  *demo.Stage
	cfg config.Config

	launch    *launch.Handler
	terminate *terminate.Handler
	reconcile *reconcile.Handler
	grow      *grow.Handler
	store     *lease.Store // direct to moto
	logs      *syncBuffer
}

// deploymentOptions choose what differs between deployments.
type deploymentOptions struct {
	// env overrides the stage's SLOTKEEPER_ variables (names without the prefix).
	env map[string]string
	// production keeps the functions' own poll intervals (1 s, backing off to 10 s), as
	// in Lambda; otherwise waits poll every 20 ms, as the other tests do.
	production bool
}

// newDeployment builds a deployment named cluster in h.
func newDeployment(t testing.TB, h *harness.Harness, cluster string, opt deploymentOptions) *deployment {
	t.Helper()
	st, err := demo.NewStage(context.Background(), h.Emulator, cluster)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(st.Close)
	vars := maps.Clone(st.Vars)
	maps.Copy(vars, opt.env)
	cfg, err := config.Load(func(k string) string { return vars[strings.TrimPrefix(k, config.Prefix)] })
	if err != nil {
		t.Fatalf("configuration: %v", err)
	}
	d := &deployment{t: t, h: h, st: st, cfg: cfg, logs: &syncBuffer{}}
	d.store = lease.NewStore(dynamodb.NewFromConfig(h.DirectConfig()), cfg.Table, cfg.Cluster)
	log := newLogger(d.logs)
	awsCfg := h.AWSConfig()
	ec2c, asg, ddb := ec2.NewFromConfig(awsCfg), autoscaling.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg)
	r53, ssmc, snsc, cw := route53.NewFromConfig(awsCfg), ssm.NewFromConfig(awsCfg), sns.NewFromConfig(awsCfg), awsapi.NewCloudWatch(awsCfg)
	k, err := kafka.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	t.Cleanup(k.Close)

	// As functions/launch/main.go.
	d.launch = launch.New(cfg, ec2c, asg, ddb, log, io.Discard)
	d.launch.Followers = []launch.Follower{grow.NewAlarms(cfg, cw, log), dns.New(cfg, r53, ec2c, ddb, log)}
	// As functions/terminate/main.go.
	d.terminate = terminate.New(cfg, ec2c, asg, ddb, ssmc, log, io.Discard)
	d.terminate.Drainers = []terminate.Drainer{dns.New(cfg, r53, ec2c, ddb, log)}
	d.terminate.Kafka = k
	// As functions/reconcile/main.go.
	d.reconcile = reconcile.New(cfg, ec2c, asg, ddb, log, io.Discard)
	d.reconcile.Repairers = []reconcile.Repairer{
		grow.New(cfg, ec2c, ddb, ssmc, snsc, cw, log, io.Discard), grow.NewAlarms(cfg, cw, log), dns.New(cfg, r53, ec2c, ddb, log),
	}
	d.reconcile.Kafka = k
	// As functions/grow/main.go.
	d.grow = grow.New(cfg, ec2c, ddb, ssmc, snsc, cw, log, io.Discard)

	if !opt.production {
		fast := resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 20 * time.Second}
		d.launch.Poll, d.terminate.Poll, d.reconcile.Poll = fast, fast, fast
		d.launch.HandoverReserve = 10 * time.Second
		d.terminate.HeartbeatInterval = time.Second
		d.terminate.SafetyRecheck = 50 * time.Millisecond
		d.terminate.LeaveTimeout = 300 * time.Millisecond
		d.terminate.SSMPoll = 10 * time.Millisecond
		d.terminate.GateReserve = 20 * time.Second
		d.grow.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond, Timeout: 5 * time.Second}
		d.grow.Remote.Poll = 20 * time.Millisecond
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of %s:\n%s", cfg.Cluster, tail(d.logs.String(), 80))
		}
	})
	return d
}

// invoke delivers payload to handler as the Lambda runtime does (a 15-minute
// invocation, as the template gives the functions) and returns the decoded response.
func (d *deployment) invoke(handler lambda.Handler, payload []byte) (map[string]any, error) {
	requestSeq.Lock()
	requestSeq.n++
	id := fmt.Sprintf("req-%04d", requestSeq.n)
	requestSeq.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: id})
	out, err := lambda.NewHandler(handler).Invoke(ctx, payload)
	if err != nil {
		return nil, err
	}
	var res map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("response %q: %w", out, err)
	}
	return res, nil
}

// must is invoke that fails the test on an error or an outcome other than want.
func (d *deployment) must(handler lambda.Handler, payload []byte, want string) map[string]any {
	d.t.Helper()
	res, err := d.invoke(handler, payload)
	if err != nil {
		d.t.Fatalf("invocation: %v", err)
	}
	if res["outcome"] != want {
		d.t.Fatalf("outcome %v (%v), want %s", res["outcome"], res["reason"], want)
	}
	return res
}

// launchEvent and terminateEvent are the lifecycle actions of instance.
func (d *deployment) launchEvent(instance string) []byte {
	return demo.LifecycleEvent(d.cfg.ASGName, instance, true)
}

func (d *deployment) terminateEvent(instance string) []byte {
	return demo.LifecycleEvent(d.cfg.ASGName, instance, false)
}

// run starts an instance of the group in subnet i (AZ a, b, c for 0, 1, 2).
func (d *deployment) run(i int) string {
	d.t.Helper()
	id, err := d.st.Launch(context.Background(), i)
	if err != nil {
		d.t.Fatalf("%v", err)
	}
	return id
}

// join puts instances into moto's group, InService.
func (d *deployment) join(ids ...string) {
	d.t.Helper()
	if err := d.st.Join(context.Background(), ids...); err != nil {
		d.t.Fatalf("%v", err)
	}
}

// formatted does what the broker's user data does at its first boot: it makes the
// filesystem and removes the volume's never-formatted mark (directly at moto).
func (d *deployment) formatted(slot int) {
	d.t.Helper()
	l := d.lease(slot)
	if _, err := ec2.NewFromConfig(d.h.DirectConfig()).DeleteTags(context.Background(), &ec2.DeleteTagsInput{
		Resources: []string{l.VolumeID}, Tags: []ec2types.Tag{{Key: aws.String(resources.TagNeverFormatted)}},
	}); err != nil {
		d.t.Fatalf("removing the never-formatted mark of %s: %v", l.VolumeID, err)
	}
}

// lease reads slot's lease directly at moto.
func (d *deployment) lease(slot int) lease.Lease {
	d.t.Helper()
	l, err := d.store.Get(context.Background(), slot)
	if err != nil {
		d.t.Fatal(err)
	}
	return l
}
