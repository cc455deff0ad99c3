package asgsim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/alert"
	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
)

type ec2Filter = ec2types.Filter

// handlers are the five functions of the deployment, wired in process as their
// main.go wires them, talking to the proxy.
type handlers struct {
	launch, terminate, reconcile, dns, grow *target
}

// direct are clients straight to moto (uncounted, unfaulted), for the simulator and
// the invariants.
type direct struct {
	ec2   *ec2.Client
	asg   *autoscaling.Client
	store *lease.Store
	r53   *route53.Client
	cw    *cloudwatch.Client
}

// topicsFor are the simulated cluster's topics (partitions, replication factor):
// the stage's "orders" (3, 3), "events" with a partition per slot (RF 3) when there
// are more than three slots, and "scratch" (2, 2), which is at min ISR and never
// blocks a removal.
func topicsFor(slots int) map[string][2]int {
	t := map[string][2]int{demo.Topic: {3, 3}, "scratch": {2, 2}}
	if slots > 3 {
		t["events"] = [2]int{slots, 3}
	}
	return t
}

// deployment sets the configuration the template deploys, with every duration divided
// by the time scale (config.Load accepts only production ranges, so the scaled values
// are set after loading).
func (r *run) deployment() {
	c := &r.cfg
	s := func(d time.Duration) time.Duration { return r.tm.Real(d) }
	c.HeartbeatInterval = s(30 * time.Second)
	c.AttachTimeout = s(2 * time.Minute)
	c.SafetyMaxWait = s(5 * time.Minute)
	c.SafetyRecheck = s(2 * time.Second)
	c.UnplannedSafetyMaxWait = s(2 * time.Minute)
	c.SSMTimeout = s(2 * time.Minute)
	c.ForceDetachAfter = s(5 * time.Minute)
	c.HandoverMaxWait = s(7 * time.Minute)
	c.ClaimTTL = s(15 * time.Minute)
	c.AlertTopicARN = "arn:aws:sns:us-east-1:123456789012:slotkeeper-" + c.Cluster + "-alerts"
	c.LogLevel = slog.LevelInfo
}

// setup builds the deployment: the stage (world, group with both hooks, hosted zone,
// kfake with a broker per slot), the topics, and the handlers.
func (r *run) setup(name string) error {
	st, err := demo.NewStageWith(r.ctx, r.e, name, demo.StageOptions{Slots: r.plan.Slots})
	if err != nil {
		return fmt.Errorf("building the stage: %w", err)
	}
	r.st = st
	for topic, pr := range topicsFor(r.plan.Slots) {
		if topic == demo.Topic {
			continue
		}
		if err := st.Kafka.CreateTopic(r.ctx, topic, int32(pr[0]), int16(pr[1]), nil); err != nil {
			return err
		}
	}
	r.cfg = st.Config
	r.deployment()
	if r.kcl, err = kafka.NewClient(r.cfg.Kafka); err != nil {
		return fmt.Errorf("a Kafka client: %w", err)
	}
	dc := r.e.DirectConfig()
	r.d = &direct{
		ec2: ec2.NewFromConfig(dc), asg: autoscaling.NewFromConfig(dc),
		store: lease.NewStore(dynamodb.NewFromConfig(dc), r.cfg.Table, r.cfg.Cluster),
		r53:   route53.NewFromConfig(dc), cw: awsapi.NewCloudWatch(dc),
	}
	r.wire()
	return r.initKafka()
}

// wire builds the handlers as functions/*/main.go does, on the proxied endpoint, with
// every wait the template sets divided by the time scale.
func (r *run) wire() {
	cfg := r.cfg
	awsCfg := r.e.AWSConfig()
	ec2c, ddb := ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg)
	asgc := &observedASG{Client: autoscaling.NewFromConfig(awsCfg), r: r}
	ssmc, r53 := ssm.NewFromConfig(awsCfg), route53.NewFromConfig(awsCfg)
	cw := awsapi.NewCloudWatch(awsCfg)
	log := obs.NewLogger(r.logs, cfg.LogLevel)
	metrics := io.Discard
	sink := &alertSink{r: r}
	alerts := &alert.Notifier{SNS: sink, TopicARN: cfg.AlertTopicARN, Cluster: cfg.Cluster}
	s := func(d time.Duration) time.Duration { return r.tm.Real(d) }
	poll := resources.Poll{Initial: s(2 * time.Second), Max: s(10 * time.Second), Timeout: cfg.AttachTimeout}
	syncer := func() *dns.Syncer {
		d := dns.New(cfg, r53, ec2c, ddb, log)
		d.Backoff, d.MaxBackoff = s(time.Second), s(10*time.Second)
		return d
	}

	l := launch.New(cfg, ec2c, asgc, ddb, log, metrics)
	l.Alerts = alerts
	l.Followers = []launch.Follower{grow.NewAlarms(cfg, cw, log), syncer()}
	l.Poll = poll
	l.HandoverReserve = s(4*2*time.Minute + 3*time.Minute)

	tcfg := cfg
	tcfg.AttachTimeout = s(45 * time.Second) // the template's terminate function
	t := terminate.New(tcfg, ec2c, asgc, ddb, ssmc, log, metrics)
	t.Drainers = []terminate.Drainer{syncer()}
	t.Alerts = alerts
	t.Kafka = r.kcl
	t.Poll = resources.Poll{Initial: s(2 * time.Second), Max: s(10 * time.Second), Timeout: tcfg.AttachTimeout}
	t.GateReserve = 2*tcfg.SSMTimeout + 4*tcfg.AttachTimeout + s(3*time.Minute)
	t.StampTTL = 2 * cfg.HeartbeatInterval
	t.SSMPoll = s(time.Second)

	growFor := func() *grow.Handler {
		g := grow.New(cfg, ec2c, ddb, ssmc, sink, cw, log, metrics)
		g.Poll = resources.Poll{Initial: s(2 * time.Second), Max: s(15 * time.Second), Timeout: cfg.AttachTimeout}
		g.Remote.Poll = s(time.Second)
		return g
	}
	gh := growFor()
	rc := reconcile.New(cfg, ec2c, asgc, ddb, log, metrics)
	rc.Repairers = []reconcile.Repairer{growFor(), grow.NewAlarms(cfg, cw, log), syncer()}
	rc.Kafka = r.kcl
	rc.Poll = poll
	dh := dns.NewHandler(cfg, syncer(), log, metrics)

	w := r.tm.Windows
	r.h = &handlers{
		launch: &target{name: "launch", timeout: w.Invocation, run: func(ctx context.Context, p []byte) (string, error) {
			res, err := l.Run(ctx, p)
			return res.Outcome, err
		}},
		terminate: &target{name: "terminate", timeout: w.Invocation, run: func(ctx context.Context, p []byte) (string, error) {
			res, err := t.Run(ctx, p)
			return res.Outcome, err
		}},
		reconcile: &target{name: "reconcile", timeout: w.ReconcileTimeout, run: func(ctx context.Context, p []byte) (string, error) {
			res, err := rc.Run(ctx, p)
			return res.Outcome, err
		}},
		dns: &target{name: "dns", timeout: w.DNSTimeout, run: func(ctx context.Context, p []byte) (string, error) {
			res, err := dh.Run(ctx, p)
			return res.Outcome, err
		}},
		grow: &target{name: "grow", timeout: w.GrowTimeout, run: func(ctx context.Context, p []byte) (string, error) {
			res, err := gh.Run(ctx, p)
			return res.Outcome, err
		}},
	}
}

// demoSlotctl runs slotctl with args against the stage, through the endpoint of
// awsCfg, configured by the stage's variables.
func demoSlotctl(ctx context.Context, st *demo.Stage, awsCfg aws.Config, args []string, out io.Writer) int {
	return slotctl.Main(ctx, args, slotctl.IO{
		Stdout: out, Stderr: out, Clients: slotctl.NewClients(awsCfg),
		Getenv: func(k string) string { return st.Vars[strings.TrimPrefix(k, config.Prefix)] },
	})
}

// observedASG is the handlers' Auto Scaling client: the real one, whose heartbeats
// the simulator watches (a heartbeat extends its lifecycle action's timeout; the
// proxy answers heartbeats but keeps no timeout).
type observedASG struct {
	*autoscaling.Client
	r *run
}

func (o *observedASG) RecordLifecycleActionHeartbeat(ctx context.Context, in *autoscaling.RecordLifecycleActionHeartbeatInput, opts ...func(*autoscaling.Options)) (*autoscaling.RecordLifecycleActionHeartbeatOutput, error) {
	out, err := o.Client.RecordLifecycleActionHeartbeat(ctx, in, opts...)
	if err == nil || awsapi.Code(err) == "InjectedCrash" { // a crash after the call took effect
		o.r.beat(aws.ToString(in.LifecycleHookName), aws.ToString(in.InstanceId))
	}
	return out, err
}

// alertSink is the alert topic: it records every alert the handlers publish.
type alertSink struct{ r *run }

// alertRec is one alert.
type alertRec struct {
	at               time.Duration
	subject, message string
}

func (a *alertSink) Publish(_ context.Context, in *sns.PublishInput, _ ...func(*sns.Options)) (*sns.PublishOutput, error) {
	a.r.mu.Lock()
	defer a.r.mu.Unlock()
	rec := alertRec{at: a.r.now(), subject: aws.ToString(in.Subject), message: aws.ToString(in.Message)}
	a.r.alerts = append(a.r.alerts, rec)
	for _, k := range []string{"unsafe termination forced", "forced detach", "volume left attached"} {
		if strings.Contains(rec.subject, k) {
			a.r.res.Alerts[k]++
		}
	}
	return &sns.PublishOutput{MessageId: aws.String(fmt.Sprintf("alert-%d", len(a.r.alerts)))}, nil
}

// alerted reports whether an alert whose subject contains subject and whose message
// contains every one of words was raised.
func (r *run) alerted(subject string, words ...string) bool {
	for _, a := range r.alerts {
		if !strings.Contains(a.subject, subject) {
			continue
		}
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(a.message, w)
		}
		if ok {
			return true
		}
	}
	return false
}
