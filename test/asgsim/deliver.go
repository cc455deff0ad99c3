package asgsim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/slotkeeper/slotkeeper/shared/grow"
)

// The delivery model: every event EventBridge sends is delivered after a short
// delay (EventDelay); a delivery fault of the plan, armed for the next event of its
// kind, makes it a duplicate delivered at about the same time, a duplicate delivered
// late (after its lifecycle action may have timed out), a late one (only), or a
// reordered one. An invocation that returns an error is retried by Lambda twice
// (about one and two minutes later), then dropped (the dead-letter queue). Several
// invocations run at once as Lambda's execution environments do, each with its
// function's timeout.

// target is a function the events go to.
type target struct {
	name    string
	timeout time.Duration
	run     func(ctx context.Context, payload []byte) (outcome string, err error)
}

// samples are the events/ sample payloads, read once.
var samples struct {
	once sync.Once
	m    map[string]map[string]any
	err  error
}

// sample returns a fresh copy of events/<file> as a map.
func sample(file string) (map[string]any, error) {
	samples.once.Do(func() {
		samples.m = map[string]map[string]any{}
		root, err := repoRoot()
		if err != nil {
			samples.err = err
			return
		}
		for _, f := range []string{"launch-lifecycle.json", "terminate-lifecycle.json", "state-change-terminated.json", "schedule.json", "alarm-action.json"} {
			raw, err := os.ReadFile(filepath.Join(root, "events", f))
			if err != nil {
				samples.err = fmt.Errorf("reading the sample event: %w", err)
				return
			}
			var m map[string]any
			if err := json.Unmarshal(raw, &m); err != nil {
				samples.err = fmt.Errorf("parsing events/%s: %w", f, err)
				return
			}
			samples.m[f] = m
		}
	})
	if samples.err != nil {
		return nil, samples.err
	}
	raw, _ := json.Marshal(samples.m[file])
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return m, nil
}

// repoRoot is the nearest directory at or above the working directory with go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// eventID makes an EventBridge event id for the n-th event of a run.
func (r *run) eventID(n int) string {
	return fmt.Sprintf("%08x-0000-4000-8000-%012d", uint32(r.plan.Seed), n)
}

// payload builds an event from a sample. r.mu must be held.
func (r *run) payload(file string, edit func(m, detail map[string]any)) []byte {
	m, err := sample(file)
	if err != nil {
		r.simError(err)
		return []byte("{}")
	}
	r.res.Events++
	m["id"] = r.eventID(r.res.Events)
	m["time"] = time.Now().UTC().Format(time.RFC3339)
	d, _ := m["detail"].(map[string]any)
	edit(m, d)
	out, _ := json.Marshal(m)
	return out
}

// emit sends in's lifecycle action event (kind EvLaunch or EvTerminate). r.mu must be
// held.
func (r *run) emit(kind string, in *instance, a *action) {
	file, t := "terminate-lifecycle.json", r.h.terminate
	if kind == EvLaunch {
		file, t = "launch-lifecycle.json", r.h.launch
	}
	p := r.payload(file, func(m, d map[string]any) {
		d["AutoScalingGroupName"] = r.cfg.ASGName
		d["LifecycleHookName"] = a.key.hook
		d["EC2InstanceId"] = in.id
		d["LifecycleActionToken"] = fmt.Sprintf("%08x-%s-%s", uint32(r.plan.Seed), a.key.hook, in.id)
	})
	r.deliver(kind, p, t, a)
}

// stateChange sends in's EC2 state change to dns (the states its rule matches) and,
// when terminated, to reconcile. r.mu must be held.
func (r *run) stateChange(in *instance, state string) {
	if state == ec2Pending {
		return
	}
	p := r.payload("state-change-terminated.json", func(m, d map[string]any) {
		d["instance-id"] = in.id
		d["state"] = state
		m["resources"] = []string{"arn:aws:ec2:us-east-1:123456789012:instance/" + in.id}
	})
	r.deliver(EvState, p, r.h.dns, nil)
	if state == ec2Terminated {
		r.deliver(EvState, p, r.h.reconcile, nil)
	}
}

// schedule sends the reconcile schedule's event. r.mu must be held.
func (r *run) scheduled() {
	r.deliver(EvSchedule, r.payload("schedule.json", func(map[string]any, map[string]any) {}), r.h.reconcile, nil)
}

// alarm fires slot s's disk alarm on holder, at used percent. r.mu must be held.
func (r *run) alarm(s int, holder string, used float64) {
	name := grow.AlarmName(r.cfg.Cluster, s)
	at := time.Now().UTC()
	stamp := at.Format("2006-01-02T15:04:05.000-0700")
	reason, _ := json.Marshal(map[string]any{
		"version": "1.0", "queryDate": stamp, "statistic": "Maximum", "period": 60, "threshold": float64(r.cfg.Grow.ThresholdPercent),
		"recentDatapoints": []float64{used - 1, used},
		"evaluatedDatapoints": []map[string]any{
			{"timestamp": at.Add(-time.Minute).Format("2006-01-02T15:04:05.000-0700"), "sampleCount": 1.0, "value": used},
		},
	})
	p := r.payload("alarm-action.json", func(m, _ map[string]any) {
		m["alarmArn"] = "arn:aws:cloudwatch:us-east-1:123456789012:alarm:" + name
		m["time"] = stamp
		ad := m["alarmData"].(map[string]any)
		ad["alarmName"] = name
		st := ad["state"].(map[string]any)
		st["value"], st["timestamp"], st["reasonData"] = grow.StateAlarm, stamp, string(reason)
		cfgm := ad["configuration"].(map[string]any)
		metrics := cfgm["metrics"].([]any)
		mm := metrics[0].(map[string]any)["metricStat"].(map[string]any)["metric"].(map[string]any)
		mm["dimensions"] = map[string]any{"InstanceId": holder, "path": r.cfg.Grow.DataMount}
	})
	r.deliver(EvAlarm, p, r.h.grow, nil)
}

// deliver schedules the deliveries of one event to t, as the delivery model says.
// r.mu must be held.
func (r *run) deliver(kind string, payload []byte, t *target, a *action) {
	rng := r.rng("event", r.res.Events)
	base := r.tm.EventDelay.draw(rng)
	times := []time.Duration{base}
	if !r.quiet {
		for i, op := range r.armedDel {
			if op.Event != kind || t == r.h.reconcile && kind == EvState {
				continue
			}
			r.armedDel = append(r.armedDel[:i:i], r.armedDel[i+1:]...)
			r.fault("delivery:" + op.Mode)
			switch op.Mode {
			case DupConcurrent:
				times = append(times, base+time.Duration(rng.Int64N(int64(time.Second))))
			case DupLate:
				times = append(times, base+r.tm.LateDelay.draw(rng))
			case Late:
				times = []time.Duration{base + r.tm.LateDelay.draw(rng)}
				if a != nil {
					a.late = true
				}
			case Reorder:
				times = []time.Duration{base + r.tm.ReorderDelay.draw(rng)}
			}
			break
		}
	}
	for _, d := range times {
		r.after(d, "deliver "+kind+" to "+t.name, func() { r.invoke(t, payload, a, 0) })
	}
}

// invoke runs one invocation of t in the background, as Lambda does. Its end is a
// step: a failed invocation is retried (twice), one that succeeded is checked against
// its lifecycle action.
func (r *run) invoke(t *target, payload []byte, a *action, attempt int) {
	r.mu.Lock()
	r.inflight++
	r.res.Deliveries++
	if a != nil {
		a.deliveries++
	}
	r.seq++
	request := fmt.Sprintf("%s-%d-%d", t.name, r.plan.Seed, r.seq)
	r.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(r.ctx, r.tm.Real(t.timeout))
		ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: request})
		outcome, err := t.run(ctx, payload)
		cancel()
		r.mu.Lock()
		defer r.mu.Unlock()
		r.inflight--
		r.after(0, "returned "+t.name, func() { r.returned(t, payload, a, attempt, outcome, err) })
	}()
}

// returned handles the end of an invocation.
func (r *run) returned(t *target, payload []byte, a *action, attempt int, outcome string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.note("%s failed (attempt %d): %v", t.name, attempt+1, err)
		if a != nil {
			a.failures++
		}
		if attempt < len(r.tm.LambdaRetry) && r.ctx.Err() == nil {
			r.after(r.tm.LambdaRetry[attempt], "retry "+t.name, func() { r.invoke(t, payload, a, attempt+1) })
		} else if a != nil {
			a.dropped++
		}
		return
	}
	if a == nil {
		return
	}
	a.succeeded++
	if !a.done && outcome != "ignored" {
		r.violate("lifecycle-once", "%s returned %q without error, and the lifecycle action of %s (%s) is still pending: nothing will complete it",
			t.name, outcome, a.key.instance, a.key.hook)
	}
}
