package test

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// In ENI mode the slot's DNS name and address do not change with its holder: Route 53
// and CloudWatch failing (throttled by someone else's load) after the bind does not
// keep the broker out of service. The launch completes with CONTINUE, the failures are
// logged and counted (FollowerFailures, by follower), and the next reconcile repairs
// the record and the alarm. In instance mode the same failures hold the completion
// back (the record would still send clients to the old holder).
func TestFollowerFailureDoesNotBlockContinueInENIMode(t *testing.T) {
	h := harness.Start(t)
	for _, tt := range []struct {
		name         string
		env          map[string]string
		wantContinue bool
	}{
		{"ENI mode", map[string]string{"GROW_FUNCTION_ARN": growFunctionARN}, true},
		{"instance mode", map[string]string{"GROW_FUNCTION_ARN": growFunctionARN, "ENI": "false", "SECURITY_GROUPS": ""}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newDNSCluster(t, h, 3, tt.env)
			alarms := grow.NewAlarms(c.cfg, awsapi.NewCloudWatch(h.AWSConfig()), obs.NewLogger(c.logs, slog.LevelDebug))
			c.launch.Followers = []launch.Follower{alarms, c.syncer}
			id := c.run(1)
			h.Inject(harness.Fault{Action: "ChangeResourceRecordSets", Kind: harness.Throttle})
			h.Inject(harness.Fault{Action: "PutMetricAlarm", Kind: harness.Throttle})
			t.Cleanup(h.ClearFaults)

			err := c.invoke(c.launchEvent(id))
			h.ClearFaults()
			if !tt.wantContinue {
				if err == nil || !strings.Contains(err.Error(), "after binding slot 1") {
					t.Fatalf("launch: %v, want the follower's error", err)
				}
				if got := c.completions(id); len(got) != 0 {
					t.Fatalf("completed %v although a follower failed in instance mode", got)
				}
				if err := c.invoke(c.launchEvent(id)); err != nil { // the redelivery, once AWS answers
					t.Fatal(err)
				}
				if got := c.completions(id); !slices.Equal(got, []string{"CONTINUE"}) {
					t.Fatalf("completions after the redelivery %v", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("launch: %v, want CONTINUE despite the followers", err)
			}
			if got := c.completions(id); !slices.Equal(got, []string{"CONTINUE"}) {
				t.Fatalf("completions %v, want [CONTINUE]", got)
			}
			if l := c.lease(1); l.State != lease.Bound || l.Holder != id {
				t.Fatalf("lease %+v", l)
			}
			m := emfValues(t, c.metrics.String(), launch.MetricFollowerFailures)
			if !slices.Equal(m["Follower=alarm"], []float64{1}) || !slices.Equal(m["Follower=dns"], []float64{1}) {
				t.Errorf("FollowerFailures %v, want 1 for alarm and 1 for dns", m)
			}
			if n := strings.Count(c.logs.String(), `"message":"follower failed; continuing, the reconciler repairs it"`); n != 2 {
				t.Errorf("%d follower-failure log lines, want 2", n)
			}
			if recs := c.zone(); slices.ContainsFunc(recs, func(r rr) bool { return r.Name == c.name("broker-1") }) {
				t.Fatalf("broker-1 record exists although Route 53 was refusing: %v", recs)
			}

			// The reconciler repairs what the followers could not do.
			r := c.reconciler()
			r.Repairers = []reconcile.Repairer{alarms, c.syncer}
			rep, err := c.runReconcile(r, c.scheduleEvent())
			if err != nil || rep.Outcome != reconcile.OutcomeReconciled || rep.Repairs["alarm"] != 1 || rep.Repairs["dns"] == 0 {
				t.Fatalf("reconcile: %+v, %v; want the alarm and the records repaired", rep, err)
			}
			if !slices.ContainsFunc(c.zone(), func(r rr) bool {
				return r.Name == c.name("broker-1") && slices.Equal(r.Values, []string{c.lease(1).IP})
			}) {
				t.Errorf("broker-1 record not repaired: %v", c.zone())
			}
			if ok, err := alarms.Point(context.Background(), 1, id); err != nil || ok {
				t.Errorf("the alarm does not watch %s after reconcile (rewritten: %v, %v)", id, ok, err)
			}
			t.Logf("ENI mode: CONTINUE with both followers failing; FollowerFailures %v; reconcile repairs %v", m, rep.Repairs)
		})
	}
}

// emfValues returns the values of metric name in embedded-metric-format lines, by the
// extra dimension that distinguishes them ("Follower=dns"), or "" when there is none.
func emfValues(t testing.TB, lines, name string) map[string][]float64 {
	t.Helper()
	out := map[string][]float64{}
	for _, doc := range emfDocs(t, lines) {
		v, ok := doc[name].(float64)
		if !ok {
			continue
		}
		key := ""
		for k, val := range doc {
			s, isStr := val.(string)
			if isStr && k != "Cluster" && k != "Function" && k != "_aws" {
				key = k + "=" + s
			}
		}
		out[key] = append(out[key], v)
	}
	return out
}

// emfDocs returns the embedded-metric-format documents among lines (JSON objects with
// an "_aws" member).
func emfDocs(t testing.TB, lines string) []map[string]any {
	t.Helper()
	var docs []map[string]any
	for _, line := range strings.Split(lines, "\n") {
		var doc map[string]any
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &doc) != nil {
			continue
		}
		if _, ok := doc["_aws"]; ok {
			docs = append(docs, doc)
		}
	}
	return docs
}
