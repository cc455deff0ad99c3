// Package obs gives every slotkeeper function the same logs, metrics and
// traces:
//
//   - logs: JSON slog records in the Lambda log format, tagged with the
//     Lambda request id, using the stable field names Key*;
//   - metrics: CloudWatch embedded metric format documents written to stdout;
//   - traces: AWS X-Ray subsegments for each step and each AWS call.
//
// Obs.Step ties them together: a unit of work gets a subsegment, a start and
// an end log record, and a StepDuration metric.
package obs

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-xray-sdk-go/v2/xray"
)

// Outcome values logged under KeyOutcome by Step.
const (
	OutcomeOK     = "ok"
	OutcomeFailed = "failed"
	// OutcomeRetry is an invocation's outcome when it failed and the event will be
	// delivered again.
	OutcomeRetry = "retry"
)

// Obs bundles the logger and the metrics of one function invocation.
// Log must not be nil; Metrics may be (metrics are then discarded).
type Obs struct {
	Log     *slog.Logger
	Metrics *Metrics
}

// With returns a copy of o whose logger adds args (slog key, value pairs or
// attributes) to every record. The copy shares o's Metrics.
func (o *Obs) With(args ...any) *Obs {
	return &Obs{Log: o.Log.With(args...), Metrics: o.Metrics}
}

// Step runs fn as the named step of an invocation:
//
//   - fn runs inside an X-Ray subsegment called name (xray.Capture), whose
//     context it receives, so AWS calls made with it nest under the step; a
//     returned error marks the subsegment as failed;
//   - "step start" is logged at debug, then "step done" at info or
//     "step failed" at warn, with KeyStep, KeyOutcome, KeyDurationMS and, on
//     failure, KeyErr;
//   - the duration is recorded as metric StepDuration with dimension Step=name.
//
// Step returns fn's error unchanged; callers add their own context.
func (o *Obs) Step(ctx context.Context, name string, fn func(context.Context) error) error {
	log := o.Log.With(KeyStep, name)
	log.DebugContext(ctx, "step start")

	start := time.Now()
	err := xray.Capture(ctx, name, fn)
	d := time.Since(start)

	o.Metrics.Duration("StepDuration", d, "Step", name)
	ms := float64(d) / float64(time.Millisecond)
	if err != nil {
		log.WarnContext(ctx, "step failed", KeyOutcome, OutcomeFailed, KeyDurationMS, ms, KeyErr, err.Error())
		return err
	}
	log.InfoContext(ctx, "step done", KeyOutcome, OutcomeOK, KeyDurationMS, ms)
	return nil
}

// Begin starts one invocation of function: its Metrics (dimensions Cluster and
// Function, written to w) and an Obs whose logger carries the function and cluster.
// finish records the invocation's outcome (metric Invocations, dimension Outcome;
// "retry" when it failed before deciding one) and duration (InvocationDuration), then
// flushes the metrics.
func Begin(log *slog.Logger, w io.Writer, namespace, function, cluster string) (o *Obs, finish func(ctx context.Context, outcome string, err error)) {
	start := time.Now()
	m := NewMetrics(w, namespace, map[string]string{"Cluster": cluster, "Function": function})
	o = &Obs{Log: log.With(KeyFunction, function, KeyCluster, cluster), Metrics: m}
	return o, func(ctx context.Context, outcome string, err error) {
		if err != nil && outcome == "" {
			outcome = OutcomeRetry
		}
		m.Count("Invocations", 1, "Outcome", outcome)
		m.Duration("InvocationDuration", time.Since(start))
		if err := m.Flush(); err != nil {
			o.Log.WarnContext(ctx, "flushing metrics", KeyErr, err.Error())
		}
	}
}

// Actor names who writes, for the lease history: the function and, inside Lambda, the
// request id ("launch/8f1c…").
func Actor(ctx context.Context, function string) string {
	if lc, ok := lambdacontext.FromContext(ctx); ok {
		return function + "/" + lc.AwsRequestID
	}
	return function
}
