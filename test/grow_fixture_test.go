package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// growFunctionARN is the grow function the test clusters' disk alarms invoke.
const growFunctionARN = "arn:aws:lambda:us-east-1:123456789012:function:slotkeeper-grow"

// growDataMount is the data mount of the test clusters: not the default, to show the
// mount in the alarm and in the filesystem command comes from the configuration.
const growDataMount = "/srv/kafka-data"

// growRig is a cluster with the grow path wired as the functions wire it: the disk
// alarm follower on the launch handler, and a grow handler on the proxied endpoint.
type growRig struct {
	*cluster
	grow        *grow.Handler
	alarms      *grow.Alarms
	growLogs    *syncBuffer        // the grow handler's log
	growMetrics *syncBuffer        // the grow handler's embedded metrics
	ssm         *ssm.Client        // direct to moto
	cw          *cloudwatch.Client // direct to moto
}

// newGrowRig builds a cluster of slots slots for the grow path; env overrides
// SLOTKEEPER_ variables as for newCluster.
func newGrowRig(t testing.TB, h *harness.Harness, slots int, env map[string]string) *growRig {
	t.Helper()
	vars := map[string]string{"GROW_FUNCTION_ARN": growFunctionARN, "DATA_MOUNT": growDataMount}
	for k, v := range env {
		vars[k] = v
	}
	c := newCluster(t, h, slots, vars)
	r := &growRig{cluster: c, growLogs: &syncBuffer{}, growMetrics: &syncBuffer{}}
	awsCfg := h.AWSConfig()
	r.alarms = grow.NewAlarms(c.cfg, awsapi.NewCloudWatch(awsCfg), obs.NewLogger(c.logs, slog.LevelDebug))
	c.launch.Followers = append(c.launch.Followers, r.alarms)
	r.grow = grow.New(c.cfg, ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg), ssm.NewFromConfig(awsCfg),
		sns.NewFromConfig(awsCfg), awsapi.NewCloudWatch(awsCfg), obs.NewLogger(r.growLogs, slog.LevelDebug), r.growMetrics)
	r.grow.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond, Timeout: time.Second}
	r.grow.Remote.Poll, r.grow.Remote.Timeout = 20*time.Millisecond, 10*time.Second
	r.ssm = ssm.NewFromConfig(h.DirectConfig())
	r.cw = awsapi.NewCloudWatch(h.DirectConfig())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("grow logs of %s:\n%s", c.cfg.Cluster, tail(r.growLogs.String(), 80))
		}
	})
	return r
}

// cwTime is CloudWatch's timestamp format in alarm payloads (not RFC 3339).
const cwTime = "2006-01-02T15:04:05.000-0700"

// alarmEdit returns an edit of a sample alarm payload that makes it the ALARM of
// slot's disk alarm in this cluster, breached at `at` with datapoints peaking at used,
// on the metric of instance.
func (r *growRig) alarmEdit(slot int, used float64, at time.Time, instance string) func(detail map[string]any) {
	name := grow.AlarmName(r.cfg.Cluster, slot)
	stamp := at.UTC().Format(cwTime)
	reasonData, _ := json.Marshal(map[string]any{
		"version": "1.0", "queryDate": stamp, "statistic": "Maximum", "period": 60, "threshold": r.cfg.Grow.ThresholdPercent,
		"recentDatapoints": []float64{used - 1, used},
		"evaluatedDatapoints": []map[string]any{
			{"timestamp": at.Add(-time.Minute).UTC().Format(cwTime), "sampleCount": 1.0, "value": used},
			{"timestamp": at.Add(-2 * time.Minute).UTC().Format(cwTime), "sampleCount": 1.0, "value": used - 1},
		},
	})
	return func(d map[string]any) {
		d["alarmName"] = name
		st := d["state"].(map[string]any)
		st["value"], st["timestamp"], st["reasonData"] = grow.StateAlarm, stamp, string(reasonData)
		m := d["configuration"].(map[string]any)["metrics"].([]any)[0].(map[string]any)["metricStat"].(map[string]any)["metric"].(map[string]any)
		m["dimensions"] = map[string]any{"InstanceId": instance, "path": r.cfg.Grow.DataMount}
	}
}

// alarmAction is events/alarm-action.json as slot's disk alarm sends it (see alarmEdit).
func (r *growRig) alarmAction(slot int, used float64, at time.Time) []byte {
	edit := r.alarmEdit(slot, used, at, r.lease(slot).Holder)
	return r.event("alarm-action.json", func(m map[string]any) {
		m["alarmArn"] = "arn:aws:cloudwatch:us-east-1:123456789012:alarm:" + grow.AlarmName(r.cfg.Cluster, slot)
		m["time"] = at.UTC().Format(cwTime)
		edit(m["alarmData"].(map[string]any))
	})
}

// stateChange is events/alarm-state-change.json for the same breach.
func (r *growRig) stateChange(slot int, used float64, at time.Time) []byte {
	edit := r.alarmEdit(slot, used, at, r.lease(slot).Holder)
	return r.event("alarm-state-change.json", func(m map[string]any) {
		m["resources"] = []any{"arn:aws:cloudwatch:us-east-1:123456789012:alarm:" + grow.AlarmName(r.cfg.Cluster, slot)}
		m["time"] = at.UTC().Format(time.RFC3339)
		edit(m["detail"].(map[string]any))
	})
}

var growRequestSeq struct {
	sync.Mutex
	n int
}

// deliver invokes the grow handler with payload exactly as the Lambda runtime does and
// returns the result it answered.
func (r *growRig) deliver(payload []byte) (grow.Result, error) {
	growRequestSeq.Lock()
	growRequestSeq.n++
	id := fmt.Sprintf("grow-req-%04d", growRequestSeq.n)
	growRequestSeq.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: id})
	out, err := lambda.NewHandler(r.grow).Invoke(ctx, payload)
	if err != nil {
		return grow.Result{}, err
	}
	var res grow.Result
	if err := json.Unmarshal(out, &res); err != nil {
		r.t.Fatalf("grow answered %q: %v", out, err)
	}
	return res, nil
}

// mustDeliver delivers payload and fails the test on an error.
func (r *growRig) mustDeliver(payload []byte) grow.Result {
	r.t.Helper()
	res, err := r.deliver(payload)
	if err != nil {
		r.t.Fatalf("grow: %v", err)
	}
	return res
}

// reconcileGrowth runs the grow path's reconcile repair as the reconcile function
// does: with the leases as stored.
func (r *growRig) reconcileGrowth() (int, error) {
	r.t.Helper()
	leases, err := r.store.List(context.Background())
	if err != nil {
		r.t.Fatal(err)
	}
	return r.grow.Reconcile(context.Background(), leases)
}

// growth returns slot's growth state as stored.
func (r *growRig) growth(slot int) lease.Growth {
	r.t.Helper()
	g, err := r.store.Growth(context.Background(), slot)
	if err != nil {
		r.t.Fatal(err)
	}
	return g
}

// volumeSize is the size of slot's volume at moto.
func (r *growRig) volumeSize(slot int) int32 {
	r.t.Helper()
	vols := r.volumes(slot)
	if len(vols) != 1 {
		r.t.Fatalf("slot %d has %d volumes", slot, len(vols))
	}
	return vols[0].Size
}

// ssmCommand is a command SSM received, as moto reports it.
type ssmCommand struct {
	ID, Document, Comment string
	Instances             []string
	Script                []string
}

// commandsTo returns the SSM commands sent to instance, read back from moto.
func (r *growRig) commandsTo(instance string) []ssmCommand {
	r.t.Helper()
	out, err := r.ssm.ListCommands(context.Background(), &ssm.ListCommandsInput{InstanceId: aws.String(instance)})
	if err != nil {
		r.t.Fatal(err)
	}
	var cmds []ssmCommand
	for _, c := range out.Commands {
		cmds = append(cmds, ssmCommand{ID: aws.ToString(c.CommandId), Document: aws.ToString(c.DocumentName),
			Comment: aws.ToString(c.Comment), Instances: c.InstanceIds, Script: c.Parameters["commands"]})
	}
	return cmds
}

// sentCommand is an SSM SendCommand request as the code under test made it.
type sentCommand struct {
	InstanceIds  []string
	DocumentName string
	Comment      string
	Parameters   map[string][]string
}

// recordSendCommands records every SendCommand request made through the proxy (moto's
// own record of a command lists every instance it knows when the request names no
// Targets, so the request is the only faithful account of where a command went). Call
// it right after harness.Start: see harness.Override.
func recordSendCommands(t testing.TB, h *harness.Harness) func() []sentCommand {
	var mu sync.Mutex
	var sent []sentCommand
	h.Override(harness.Override{Action: "SendCommand", Rewrite: func(req, resp []byte) []byte {
		var c sentCommand
		if err := json.Unmarshal(req, &c); err != nil {
			t.Errorf("SendCommand request %q: %v", req, err)
		}
		mu.Lock()
		sent = append(sent, c)
		mu.Unlock()
		return resp
	}})
	return func() []sentCommand {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(sent)
	}
}

// alarm returns slot's disk alarm as stored at moto, or nil.
func (r *growRig) alarm(slot int) *cwtypes.MetricAlarm {
	r.t.Helper()
	out, err := r.cw.DescribeAlarms(context.Background(), &cloudwatch.DescribeAlarmsInput{AlarmNames: []string{grow.AlarmName(r.cfg.Cluster, slot)}})
	if err != nil {
		r.t.Fatal(err)
	}
	if len(out.MetricAlarms) == 0 {
		return nil
	}
	return &out.MetricAlarms[0]
}

// emf returns the values of metric name in the grow handler's embedded metric lines.
func (r *growRig) emf(name string) []float64 {
	r.t.Helper()
	var vals []float64
	for _, line := range strings.Split(strings.TrimSpace(r.growMetrics.String()), "\n") {
		var doc map[string]any
		if line == "" || json.Unmarshal([]byte(line), &doc) != nil {
			continue
		}
		switch v := doc[name].(type) {
		case float64:
			vals = append(vals, v)
		case []any:
			for _, x := range v {
				if f, ok := x.(float64); ok {
					vals = append(vals, f)
				}
			}
		}
	}
	return vals
}

// snsPublished returns the (subject, message) pairs moto's SNS recorded as published
// to topic, read from moto's model API (/moto-api/data.json).
func snsPublished(t testing.TB, h *harness.Harness, topic string) [][2]string {
	t.Helper()
	resp, err := http.Get(h.MotoURL + "/moto-api/data.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var data struct {
		SNS struct {
			Topic []struct {
				ARN  string  `json:"arn"`
				Sent [][]any `json:"sent_notifications"` // (id, message, subject, attributes, group)
			} `json:"Topic"`
		} `json:"sns"`
	}
	if err := json.Unmarshal(body, &data); err != nil {
		t.Fatalf("moto model data: %v", err)
	}
	var out [][2]string
	for _, tp := range data.SNS.Topic {
		if tp.ARN != topic {
			continue
		}
		for _, n := range tp.Sent {
			if len(n) >= 3 {
				msg, _ := n[1].(string)
				subject, _ := n[2].(string)
				out = append(out, [2]string{subject, msg})
			}
		}
	}
	return out
}

// countAction returns how often action appears in calls.
func countAction(calls []string, action string) int {
	return len(slices.DeleteFunc(slices.Clone(calls), func(a string) bool { return a != action }))
}
