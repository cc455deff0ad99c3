package test

// The EventBridge rules of template.yaml, matched by EventBridge itself (moto's
// implementation, through the harness): every rule is created with its pattern as
// deployed, each targeting its own SQS queue, and every sample event of events/ and
// a foreign variant of each is put on the bus. The queues say which rules matched.
//
// moto 5.2.5 does not implement TestEventPattern (its handler is an empty stub), so
// the rules are exercised the way EventBridge runs them: PutRule, PutTargets,
// PutEvents, and the events delivered to the targets.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/slotkeeper/slotkeeper/test/harness"
)

// awsJSON calls an AWS JSON-protocol API (EventBridge, SQS) through the harness: the
// SDK has no EventBridge or SQS module in go.mod, and the wire format is small.
type awsJSON struct {
	h      *harness.Harness
	client *http.Client
}

func (a awsJSON) call(ctx context.Context, service, version, target string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.h.URL+"/", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-"+version)
	req.Header.Set("X-Amz-Target", target)
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: "testing", SecretAccessKey: "testing"}
	if err := v4.NewSigner().SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), service, a.h.Region, time.Now()); err != nil {
		return fmt.Errorf("signing %s: %w", target, err)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s: reading the response: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %s", target, resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s: decoding %s: %w", target, b, err)
	}
	return nil
}

func (a awsJSON) events(ctx context.Context, op string, in, out any) error {
	return a.call(ctx, "events", "1.1", "AWSEvents."+op, in, out)
}

func (a awsJSON) sqs(ctx context.Context, op string, in, out any) error {
	return a.call(ctx, "sqs", "1.0", "AmazonSQS."+op, in, out)
}

// busEvent is an event as a sample file holds it.
type busEvent struct {
	Source     string          `json:"source"`
	DetailType string          `json:"detail-type"`
	Resources  []string        `json:"resources"`
	Detail     json.RawMessage `json:"detail"`
}

func sampleEvent(t *testing.T, file string) busEvent {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(templateRepoDir(), "events", file))
	if err != nil {
		t.Fatal(err)
	}
	var e busEvent
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return e
}

// variant returns e with detail fields replaced (dotted paths, e.g. "state.value").
func variant(t *testing.T, e busEvent, set map[string]any) busEvent {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(e.Detail, &d); err != nil {
		t.Fatal(err)
	}
	for k, v := range set {
		m := d
		parts := strings.Split(k, ".")
		for _, p := range parts[:len(parts)-1] {
			m = m[p].(map[string]any)
		}
		m[parts[len(parts)-1]] = v
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	e.Detail = b
	return e
}

// without returns e with the detail fields keys removed.
func without(t *testing.T, e busEvent, keys ...string) busEvent {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(e.Detail, &d); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		delete(d, k)
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	e.Detail = b
	return e
}

// Every EventBridge rule of the template matches exactly the events it exists for:
// its sample events in events/, and not their foreign variants (another group,
// another hook, another state, another cluster's alarm) nor the other rules' events.
func TestTemplateEventRulesMatchTheirEvents(t *testing.T) {
	s := deployStack(t, "growth-by-eventbridge") // the scenario with every pattern rule...
	dns := deployStack(t, "dns")                 // ...but the dns function's
	rules := map[string]map[string]any{}
	for _, st := range []*cfnStack{s, dns} {
		for id, r := range st.resources("AWS::Events::Rule") {
			p := st.props(r)
			if p["EventPattern"] == nil {
				continue
			}
			rules[id] = p
		}
	}

	launch := sampleEvent(t, "launch-lifecycle.json")
	terminate := sampleEvent(t, "terminate-lifecycle.json")
	alarm := sampleEvent(t, "alarm-state-change.json")
	cases := []struct {
		name    string
		event   busEvent
		matches []string // rule logical ids
	}{
		{"launch-lifecycle.json", launch, []string{"LaunchFunctionLaunchLifecycleAction"}},
		{"launch of another group", variant(t, launch, map[string]any{"AutoScalingGroupName": "kafka-test"}), nil},
		{"launch for another hook", variant(t, launch, map[string]any{"LifecycleHookName": "other-launch-hook"}), nil},
		{"launch into the warm pool", variant(t, launch, map[string]any{"Origin": "EC2", "Destination": "WarmPool"}), nil},
		{"launch out of the warm pool into the group", variant(t, launch, map[string]any{"Origin": "WarmPool", "Destination": "AutoScalingGroup"}),
			[]string{"LaunchFunctionLaunchLifecycleAction"}},
		{"launch of a group without a warm pool", without(t, launch, "Origin", "Destination"), []string{"LaunchFunctionLaunchLifecycleAction"}},
		{"terminate-lifecycle.json", terminate, []string{"TerminateFunctionTerminateLifecycleAction"}},
		{"terminate of another group", variant(t, terminate, map[string]any{"AutoScalingGroupName": "kafka-test"}), nil},
		{"terminate for another hook", variant(t, terminate, map[string]any{"LifecycleHookName": "slotkeeper-launch"}), nil},
		// A broker returning to the warm pool leaves the group: it is a removal.
		{"terminate into the warm pool", variant(t, terminate, map[string]any{"Destination": "WarmPool"}), []string{"TerminateFunctionTerminateLifecycleAction"}},
		{"state-change-running.json", sampleEvent(t, "state-change-running.json"), []string{"DnsFunctionInstanceStateChange"}},
		{"state-change-stopping.json", sampleEvent(t, "state-change-stopping.json"), []string{"DnsFunctionInstanceStateChange"}},
		{"state-change-shutting-down.json", sampleEvent(t, "state-change-shutting-down.json"), []string{"DnsFunctionInstanceStateChange"}},
		{"state-change-terminated.json", sampleEvent(t, "state-change-terminated.json"), []string{"DnsFunctionInstanceStateChange", "ReconcileFunctionInstanceTerminated"}},
		{"state change to pending", variant(t, sampleEvent(t, "state-change-running.json"), map[string]any{"state": "pending"}), nil},
		{"state change to stopped", variant(t, sampleEvent(t, "state-change-running.json"), map[string]any{"state": "stopped"}), nil},
		{"alarm-state-change.json", alarm, []string{"GrowAlarmStateRule"}},
		{"alarm back to OK", variant(t, alarm, map[string]any{"state.value": "OK"}), nil},
		{"another cluster's disk alarm", variant(t, alarm, map[string]any{"alarmName": "slotkeeper-kafka-test-disk-2"}), nil},
		{"the cluster's dead-letter alarm", variant(t, alarm, map[string]any{"alarmName": "slotkeeper-kafka-prod-dead-letters"}), nil},
		{"schedule.json (not a pattern's)", sampleEvent(t, "schedule.json"), nil},
	}
	var covered []string
	for _, c := range cases {
		covered = append(covered, c.matches...)
	}
	if got, want := slices.Sorted(maps.Keys(rules)), slices.Compact(slices.Sorted(slices.Values(covered))); !slices.Equal(got, want) {
		t.Fatalf("the template's pattern rules are %v, the cases cover %v", got, want)
	}

	h := harness.Start(t)
	api := awsJSON{h: h, client: &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}}
	ctx := context.Background()
	queues := map[string]string{} // rule id -> queue URL
	for _, id := range slices.Sorted(maps.Keys(rules)) {
		p := rules[id]
		var q struct{ QueueUrl string }
		if err := api.sqs(ctx, "CreateQueue", map[string]any{"QueueName": "rule-" + id}, &q); err != nil {
			t.Fatal(err)
		}
		var attrs struct{ Attributes map[string]string }
		if err := api.sqs(ctx, "GetQueueAttributes", map[string]any{"QueueUrl": q.QueueUrl, "AttributeNames": []string{"QueueArn"}}, &attrs); err != nil {
			t.Fatal(err)
		}
		pattern, err := json.Marshal(p["EventPattern"])
		if err != nil {
			t.Fatal(err)
		}
		name := cfnStr(p["Name"])
		if err := api.events(ctx, "PutRule", map[string]any{"Name": name, "EventPattern": string(pattern)}, nil); err != nil {
			t.Fatalf("rule %s (%s): %v", id, pattern, err)
		}
		target := map[string]any{"Id": "queue", "Arn": attrs.Attributes["QueueArn"]}
		if err := api.events(ctx, "PutTargets", map[string]any{"Rule": name, "Targets": []any{target}}, nil); err != nil {
			t.Fatal(err)
		}
		queues[id] = q.QueueUrl
		t.Logf("%s: %s", id, pattern)
	}

	for _, c := range cases {
		var out struct{ FailedEntryCount int }
		entry := map[string]any{"Source": c.event.Source, "DetailType": c.event.DetailType, "Resources": c.event.Resources, "Detail": string(c.event.Detail)}
		if err := api.events(ctx, "PutEvents", map[string]any{"Entries": []any{entry}}, &out); err != nil || out.FailedEntryCount != 0 {
			t.Fatalf("%s: PutEvents: %v (%d failed)", c.name, err, out.FailedEntryCount)
		}
		var matched []string
		for id, url := range queues {
			var msgs struct {
				Messages []struct{ Body, ReceiptHandle string }
			}
			if err := api.sqs(ctx, "ReceiveMessage", map[string]any{"QueueUrl": url, "MaxNumberOfMessages": 10}, &msgs); err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs.Messages {
				var got busEvent
				if err := json.Unmarshal([]byte(m.Body), &got); err != nil || got.DetailType != c.event.DetailType {
					t.Errorf("%s: rule %s delivered %q", c.name, id, m.Body)
				}
				if err := api.sqs(ctx, "DeleteMessage", map[string]any{"QueueUrl": url, "ReceiptHandle": m.ReceiptHandle}, nil); err != nil {
					t.Fatal(err)
				}
			}
			if len(msgs.Messages) > 0 {
				matched = append(matched, id)
			}
		}
		sort.Strings(matched)
		if !slices.Equal(matched, c.matches) {
			t.Errorf("%s matched rules %v, want %v", c.name, matched, c.matches)
		}
	}
}

// Every rule's target is its function, with a retry policy and the dead-letter queue,
// and a permission that lets only that rule invoke the function; the reconcile
// schedule runs every 5 minutes.
func TestTemplateEventRuleTargets(t *testing.T) {
	want := map[string]string{
		"LaunchFunctionLaunchLifecycleAction":       "LaunchFunction",
		"TerminateFunctionTerminateLifecycleAction": "TerminateFunction",
		"DnsFunctionInstanceStateChange":            "DnsFunction",
		"ReconcileFunctionSchedule":                 "ReconcileFunction",
		"ReconcileFunctionInstanceTerminated":       "ReconcileFunction",
		"GrowAlarmStateRule":                        "GrowFunction",
	}
	seen := map[string]bool{}
	for _, sc := range deployScenarios {
		s := deployStack(t, sc.name)
		perms := map[string]map[string]any{}
		for _, r := range s.resources("AWS::Lambda::Permission") {
			p := s.props(r)
			perms[cfnStr(p["SourceArn"])] = p
		}
		for id, r := range s.resources("AWS::Events::Rule") {
			seen[id] = true
			fn, ok := want[id]
			if !ok {
				t.Errorf("%s: rule %s has no expectation here", sc.name, id)
				continue
			}
			p := s.props(r)
			targets := cfnList(p["Targets"])
			if len(targets) != 1 {
				t.Errorf("%s: rule %s has %d targets", sc.name, id, len(targets))
				continue
			}
			tg := cfnObj(targets[0])
			retry := cfnObj(tg["RetryPolicy"])
			switch {
			case tg["Arn"] != s.getAtt(fn, "Arn"):
				t.Errorf("%s: rule %s targets %v, want %s", sc.name, id, tg["Arn"], fn)
			case cfnObj(tg["DeadLetterConfig"])["Arn"] != s.getAtt("DeadLetterQueue", "Arn"):
				t.Errorf("%s: rule %s has no dead-letter queue: %v", sc.name, id, tg)
			case retry == nil || cfnNum(retry["MaximumEventAgeInSeconds"]) < 60 || cfnNum(retry["MaximumRetryAttempts"]) < 1:
				t.Errorf("%s: rule %s has no retry policy: %v", sc.name, id, tg)
			}
			perm, ok := perms[cfnStr(s.getAtt(id, "Arn"))]
			if !ok || perm["Principal"] != "events.amazonaws.com" || perm["FunctionName"] != s.ref(fn) && perm["FunctionName"] != s.getAtt(fn, "Arn") {
				t.Errorf("%s: no permission for rule %s to invoke %s (%v)", sc.name, id, fn, perm)
			}
			if group := cfnObj(cfnObj(p["EventPattern"])["detail"])["AutoScalingGroupName"]; strings.Contains(id, "Lifecycle") &&
				fmt.Sprint(group) != fmt.Sprint([]any{s.params["AsgName"]}) {
				t.Errorf("%s: rule %s matches group %v, not %v", sc.name, id, group, s.params["AsgName"])
			}
			if id == "ReconcileFunctionSchedule" && p["ScheduleExpression"] != "rate(5 minutes)" {
				t.Errorf("%s: reconcile schedule %v", sc.name, p["ScheduleExpression"])
			}
			// An action older than the hook's heartbeat timeout has expired: no point
			// delivering it later.
			if strings.Contains(id, "Lifecycle") && cfnNum(retry["MaximumEventAgeInSeconds"]) > 900 {
				t.Errorf("%s: rule %s keeps lifecycle events %v s", sc.name, id, retry["MaximumEventAgeInSeconds"])
			}
		}
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("no scenario has rule %s", id)
		}
	}
}
