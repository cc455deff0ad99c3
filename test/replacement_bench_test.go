package test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
	"github.com/slotkeeper/slotkeeper/test/emulator"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// replacementRuns is how many replacements BenchmarkReplacement times per sequence;
// SLOTKEEPER_BENCH_RUNS overrides it.
const replacementRuns = 10

// replacementSeed seeds the latency model of run i as replacementSeed+i.
const replacementSeed = 14

// replacementRun is what one timed replacement measured.
type replacementRun struct {
	elapsed time.Duration // from the event to the replacement's CONTINUE
	release time.Duration // health replacement: from the event to the old holder's release
	calls   int           // AWS calls on the path
	trips   int           // sequential round trips on the path
}

// replacementSequence is one of the sequences BenchmarkReplacement times.
type replacementSequence struct {
	name string
	run  func(tb testing.TB, h *harness.Harness, seq *replacementBench, model emulator.LatencyModel) replacementRun
}

// replacementBench is the state the runs share: the proxy's SendCommand override
// stops the broker of the current run's cluster in the current run's Kafka.
type replacementBench struct {
	cluster atomic.Pointer[cluster]
	kafka   atomic.Pointer[kafkaCluster]
}

var replacementSequences = []replacementSequence{
	{"reattach", reattachRun},
	{"health-replacement", healthReplacementRun},
}

// BenchmarkReplacement measures how long a broker is away when its instance is
// replaced, with the proxy delaying every AWS call and state change as AWS does
// (test/emulator's latency model, at scale 1), over replacementRuns runs per sequence:
//
//   - reattach: the launch of a replacement whose slot is free and whose ENI and volume
//     wait detached (the old holder's termination ran before): from the launch event to
//     its CONTINUE;
//   - health-replacement: an Unhealthy holder's terminate event and its replacement's
//     launch event delivered together, as Auto Scaling does (the replacement launches
//     while the old instance waits in Terminating:Wait): from the terminate event to the
//     replacement's CONTINUE. The old holder's broker is stopped through SSM (kfake
//     drops it), its volume and ENI detached, the slot released and handed over.
//
// Each reports p50 and p95 of the time (ms), the AWS calls and the sequential round
// trips on the path (median; for the health replacement, the terminate's up to the
// release plus the launch's after it, and the median time to the release), and the bound 2 × attach + 2 s at the model's mean attach
// window (the instance's boot is not included: the launch event arrives once the
// instance is pending, and both times are measured from an event).
func BenchmarkReplacement(b *testing.B) {
	runs := replacementRuns
	if v, err := strconv.Atoi(os.Getenv("SLOTKEEPER_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	h := harness.Start(b)
	var rb replacementBench
	stopsBrokersOf(h, &rb.cluster, &rb.kafka)
	lo, hi := emulator.StateWindow("attach")
	bound := 2*(lo+hi)/2 + 2*time.Second
	for _, seq := range replacementSequences {
		b.Run(seq.name, func(b *testing.B) {
			var out []replacementRun
			for i := range runs {
				out = append(out, seq.run(b, h, &rb, emulator.LatencyModel{Seed: uint64(replacementSeed + i), Scale: 1}))
			}
			p50, p95 := percentiles(out)
			b.ReportMetric(ms(p50), "p50-ms")
			b.ReportMetric(ms(p95), "p95-ms")
			b.ReportMetric(float64(median(out, func(r replacementRun) int { return r.calls })), "calls")
			b.ReportMetric(float64(median(out, func(r replacementRun) int { return r.trips })), "round-trips")
			b.ReportMetric(ms(bound), "bound-ms")
			if seq.name == "health-replacement" {
				b.ReportMetric(float64(median(out, func(r replacementRun) int { return int(r.release / time.Millisecond) })), "release-p50-ms")
			}
			b.ReportMetric(float64(len(out)), "runs")
		})
	}
}

// percentiles returns the nearest-rank p50 and p95 of the runs' times.
func percentiles(runs []replacementRun) (p50, p95 time.Duration) {
	d := make([]time.Duration, len(runs))
	for i, r := range runs {
		d[i] = r.elapsed
	}
	slices.Sort(d)
	rank := func(p float64) time.Duration {
		i := int(float64(len(d))*p+0.999999) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return rank(0.50), rank(0.95)
}

func median(runs []replacementRun, f func(replacementRun) int) int {
	v := make([]int, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[(len(v)-1)/2]
}

// benchCluster builds a 3-slot cluster with every instance launched and bound, the
// launch and terminate handlers waiting as in production (Lambda's defaults), each
// naming itself in its User-Agent so the proxy's spans say who called.
func benchCluster(tb testing.TB, h *harness.Harness, rb *replacementBench) (c *cluster, ids []string, term *terminate.Handler) {
	tb.Helper()
	// The template's settings: the handover wait fits in the launch function's 900 s.
	c = newCluster(tb, h, 3, map[string]string{"ATTACH_TIMEOUT": "2m", "HANDOVER_MAX_WAIT": "7m"})
	rb.cluster.Store(c)
	ids = []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	c.inGroup("InService", "Healthy", ids...)
	lcfg, tcfg := h.AWSConfig(), h.AWSConfig()
	lcfg.AppID, tcfg.AppID = "launch", "terminate"
	c.launch = launch.New(c.cfg, ec2.NewFromConfig(lcfg), autoscaling.NewFromConfig(lcfg), dynamodb.NewFromConfig(lcfg), newLogger(c.logs), c.metrics)
	term = terminate.New(c.cfg, ec2.NewFromConfig(tcfg), autoscaling.NewFromConfig(tcfg), dynamodb.NewFromConfig(tcfg),
		ssm.NewFromConfig(tcfg), newLogger(c.logs), c.metrics)
	return c, ids, term
}

// lambdaRun runs a handler as Lambda would, with a 15-minute deadline.
func lambdaRun[R any](run func(context.Context, []byte) (R, error), payload []byte, request string) (R, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	return run(lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: request}), payload)
}

// reattachRun: slot 1's holder was terminated (its terminate function ran, without
// latency); a replacement launches in its AZ and reattaches the ENI and volume.
func reattachRun(tb testing.TB, h *harness.Harness, rb *replacementBench, model emulator.LatencyModel) replacementRun {
	tb.Helper()
	rb.kafka.Store(nil)
	c, ids, term := benchCluster(tb, h, rb)
	c.inGroup("Terminating:Wait", "Unhealthy", ids[1])
	if res, err := lambdaRun(term.Run, c.terminateEvent(ids[1]), "terminate-old"); err != nil || res.Outcome != terminate.OutcomeReleased {
		tb.Fatalf("terminate of the old holder: %+v, %v", res, err)
	}
	h.TerminateInstance(tb, ids[1])
	replacement := c.run(1)
	c.inGroup("Pending:Wait", "Healthy", replacement)

	h.SetLatency(&model)
	began := time.Now()
	res, err := lambdaRun(c.launch.Run, c.launchEvent(replacement), "launch-replacement")
	elapsed := time.Since(began)
	spans := h.Spans()
	h.SetLatency(nil)
	checkReplaced(tb, c, res, err, replacement, ids[1])
	return replacementRun{elapsed: elapsed, calls: len(spans), trips: emulator.RoundTrips(spans)}
}

// healthReplacementRun: slot 1's holder is Unhealthy; its terminate event and its
// replacement's launch event arrive together.
func healthReplacementRun(tb testing.TB, h *harness.Harness, rb *replacementBench, model emulator.LatencyModel) replacementRun {
	tb.Helper()
	k := newKafka(tb, 3)
	rb.kafka.Store(k)
	c, ids, term := benchCluster(tb, h, rb)
	term.Kafka = k.client(tb)
	c.inGroup("Terminating:Wait", "Unhealthy", ids[1])
	replacement := c.run(1)
	c.inGroup("Pending:Wait", "Healthy", replacement)

	h.SetLatency(&model)
	began := time.Now()
	var (
		wg   sync.WaitGroup
		tres terminate.Result
		lres launch.Result
		terr error
		lerr error
	)
	wg.Add(2)
	go func() { defer wg.Done(); tres, terr = lambdaRun(term.Run, c.terminateEvent(ids[1]), "terminate-old") }()
	go func() {
		defer wg.Done()
		lres, lerr = lambdaRun(c.launch.Run, c.launchEvent(replacement), "launch-replacement")
	}()
	wg.Wait()
	elapsed := time.Since(began)
	spans := h.Spans()
	h.SetLatency(nil)
	if terr != nil || tres.Outcome != terminate.OutcomeReleased || !tres.Stopped {
		tb.Fatalf("terminate of the old holder: %+v, %v", tres, terr)
	}
	checkReplaced(tb, c, lres, lerr, replacement, ids[1])
	// The path: the terminate's calls up to the release, then the launch's after it.
	recs := c.records()
	i := first(recs, ids[1], "slot handed back")
	if i < 0 {
		tb.Fatalf("no release of the old holder in the log")
	}
	released := recs[i].At
	var before, after []emulator.CallSpan
	for _, sp := range spans {
		switch {
		case sp.Caller == "terminate" && sp.Start.Before(released):
			before = append(before, sp)
		case sp.Caller == "launch" && !sp.Start.Before(released):
			after = append(after, sp)
		}
	}
	return replacementRun{elapsed: elapsed, release: released.Sub(began),
		calls: len(before) + len(after), trips: emulator.RoundTrips(before) + emulator.RoundTrips(after)}
}

// checkReplaced fails unless the replacement CONTINUEd holding slot 1, bound.
func checkReplaced(tb testing.TB, c *cluster, res launch.Result, err error, replacement, old string) {
	tb.Helper()
	if err != nil || res.Outcome != launch.OutcomeContinue || res.Slot != 1 {
		tb.Fatalf("launch of the replacement: %+v, %v; want CONTINUE for slot 1", res, err)
	}
	if l := c.lease(1); l.State != lease.Bound || l.Holder != replacement || l.LastHolder != old {
		tb.Fatalf("slot 1 after the replacement: %s by %s (last %s), want bound by %s after %s", l.State, l.Holder, l.LastHolder, replacement, old)
	}
}

// TestReplacementBenchmarkRuns runs each sequence of BenchmarkReplacement once with
// the latency model at a hundredth of real time: the machinery works (the replacement
// CONTINUEs with its slot; calls and round trips are counted). It checks no timing.
func TestReplacementBenchmarkRuns(t *testing.T) {
	h := harness.Start(t)
	var rb replacementBench
	stopsBrokersOf(h, &rb.cluster, &rb.kafka)
	for _, seq := range replacementSequences {
		t.Run(seq.name, func(t *testing.T) {
			r := seq.run(t, h, &rb, emulator.LatencyModel{Seed: 1, Scale: 0.01})
			if r.calls == 0 || r.trips == 0 || r.trips > r.calls || r.elapsed <= 0 {
				t.Errorf("run %+v: want calls and round trips counted, round trips <= calls", r)
			}
			t.Logf("%s: %s, %d calls, %d round trips", seq.name, r.elapsed.Round(time.Millisecond), r.calls, r.trips)
		})
	}
}
