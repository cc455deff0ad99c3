package demo

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// The events AWS delivers to the functions, in the shapes of events/*.json: what
// EventBridge sends for a lifecycle action, an instance state change and the reconcile
// schedule, and what a CloudWatch alarm action sends to the grow function.

const (
	account = "123456789012"
	region  = "us-east-1"
)

func eventID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encoding a demo event: %v", err)) // only maps of strings: cannot happen
	}
	return b
}

func envelope(detailType, source string, resources []string, detail any) map[string]any {
	return map[string]any{
		"version": "0", "id": eventID(), "detail-type": detailType, "source": source, "account": account,
		"time": time.Now().UTC().Format(time.RFC3339), "region": region, "resources": resources, "detail": detail,
	}
}

// LifecycleEvent is the EventBridge event of a lifecycle action of group asg for
// instance; launch selects the launch hook, otherwise the terminate hook.
func LifecycleEvent(asg, instance string, launch bool) []byte {
	detailType, transition, hook := "EC2 Instance-terminate Lifecycle Action", "autoscaling:EC2_INSTANCE_TERMINATING", TerminateHook
	origin, dest := "AutoScalingGroup", "EC2"
	if launch {
		detailType, transition, hook = "EC2 Instance-launch Lifecycle Action", "autoscaling:EC2_INSTANCE_LAUNCHING", LaunchHook
		origin, dest = "EC2", "AutoScalingGroup"
	}
	return mustJSON(envelope(detailType, "aws.autoscaling",
		[]string{"arn:aws:autoscaling:" + region + ":" + account + ":autoScalingGroup:" + eventID() + ":autoScalingGroupName/" + asg},
		map[string]string{
			"LifecycleActionToken": eventID(), "AutoScalingGroupName": asg, "LifecycleHookName": hook,
			"EC2InstanceId": instance, "LifecycleTransition": transition, "Origin": origin, "Destination": dest,
		}))
}

// StateChangeEvent is the EventBridge event of instance entering state.
func StateChangeEvent(instance, state string) []byte {
	return mustJSON(envelope("EC2 Instance State-change Notification", "aws.ec2",
		[]string{"arn:aws:ec2:" + region + ":" + account + ":instance/" + instance},
		map[string]string{"instance-id": instance, "state": state}))
}

// ScheduleEvent is the reconcile function's scheduled EventBridge event.
func ScheduleEvent() []byte {
	return mustJSON(envelope("Scheduled Event", "aws.events",
		[]string{"arn:aws:events:" + region + ":" + account + ":rule/slotkeeper-reconcile-schedule"}, map[string]string{}))
}

// AlarmEvent is what the alarm action of slot's disk alarm sends the grow function
// when the disk of instance passes the threshold: the last two one-minute maxima were
// previous and used percent.
func AlarmEvent(cluster string, slot int, instance, mount string, previous, used, threshold float64) []byte {
	now := time.Now().UTC()
	stamp := func(t time.Time) string { return t.Format("2006-01-02T15:04:05.000-0700") }
	name := fmt.Sprintf("slotkeeper-%s-disk-%d", cluster, slot)
	reasonData := mustJSON(map[string]any{
		"version": "1.0", "queryDate": stamp(now), "startDate": stamp(now.Add(-2 * time.Minute)), "statistic": "Maximum",
		"period": 60, "recentDatapoints": []float64{previous, used}, "threshold": threshold,
		"evaluatedDatapoints": []map[string]any{
			{"timestamp": stamp(now.Add(-time.Minute)), "sampleCount": 1.0, "value": used},
			{"timestamp": stamp(now.Add(-2 * time.Minute)), "sampleCount": 1.0, "value": previous},
		},
	})
	return mustJSON(map[string]any{
		"source": "aws.cloudwatch", "alarmArn": "arn:aws:cloudwatch:" + region + ":" + account + ":alarm:" + name,
		"accountId": account, "time": stamp(now), "region": region,
		"alarmData": map[string]any{
			"alarmName": name,
			"state": map[string]string{
				"value":      "ALARM",
				"reason":     fmt.Sprintf("Threshold Crossed: 2 out of the last 2 datapoints [%.2f, %.2f] were greater than or equal to the threshold (%.1f).", used, previous, threshold),
				"reasonData": string(reasonData), "timestamp": stamp(now),
			},
			"previousState": map[string]string{"value": "OK", "reason": "Threshold Crossed", "timestamp": stamp(now.Add(-time.Hour))},
			"configuration": map[string]any{
				"description": fmt.Sprintf("slotkeeper: %s slot %d data volume is full", cluster, slot),
				"metrics": []map[string]any{{
					"id": eventID(),
					"metricStat": map[string]any{
						"metric": map[string]any{"namespace": "CWAgent", "name": "disk_used_percent",
							"dimensions": map[string]string{"InstanceId": instance, "path": mount}},
						"period": 60, "stat": "Maximum", "unit": "Percent",
					},
					"returnData": true,
				}},
			},
		},
	})
}
