package asgsim_test

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/test/asgsim"
)

var (
	seedFlag    = flag.Uint64("seed", 0, "run only this seed (TestOneSeed)")
	seedsFlag   = flag.Int("seeds", 2, "how many seeds TestCampaign runs")
	firstFlag   = flag.Uint64("first", 1, "the first seed TestCampaign runs (then first+1, ...)")
	workersFlag = flag.Int("workers", 1, "how many seeds run at once, each on its own moto")
	shrinkFlag  = flag.Int("shrink", 30, "runs spent shrinking each failing seed")
	tableFlag   = flag.String("table", "", "also write the campaign's table to this file")
	casesFlag   = flag.String("cases", "", "TestCampaign runs the cases of this file (the regression list's format) instead of -seeds from -first")
)

func TestMain(m *testing.M) {
	if err := obs.ConfigureTracing(); err != nil {
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// env starts a simulator environment for the test (skipped without moto, failed
// under CI=true).
func env(t *testing.T) *asgsim.Env {
	t.Helper()
	e, err := asgsim.NewEnv()
	if errors.Is(err, asgsim.ErrNoMoto) {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func TestOneSeed(t *testing.T) {
	if *seedFlag == 0 {
		t.Skip("no -seed")
	}
	e := env(t)
	res := asgsim.Simulate(context.Background(), e, asgsim.Case{Seed: *seedFlag}, asgsim.DefaultTiming)
	t.Logf("seed %d: %d slots, %d steps, %d events, %d deliveries, %d checks, sim %s, wall %s, faults %v, ops %v, alerts %v",
		*seedFlag, res.Slots, res.Steps, res.Events, res.Deliveries, res.Checks, res.Sim, res.Wall, res.Faults, res.Ops, res.Alerts)
	for _, op := range res.Case.Plan().Ops {
		t.Logf("  op %s", op)
	}
	if res.Err != nil {
		t.Errorf("simulator error: %v", res.Err)
	}
	for _, v := range res.Violations {
		t.Errorf("violation: %s", v)
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("log tail:\n%s", res.Log)
	}
}

// TestCampaign runs -seeds seeds from -first (make test: 2; make campaign SEEDS=N: N)
// and prints the campaign's table; any violation fails it, with its seed and shortest
// failing prefix.
func TestCampaign(t *testing.T) {
	env(t).Close() // skip (or fail under CI) early without moto
	var cases []asgsim.Case
	for i := range *seedsFlag {
		cases = append(cases, asgsim.Case{Seed: *firstFlag + uint64(i)})
	}
	if *casesFlag != "" {
		var err error
		if cases, err = asgsim.ReadRegressions(*casesFlag); err != nil {
			t.Fatal(err)
		}
	}
	runCampaign(t, cases)
}

// TestRegressions replays every case of testdata/regressions.txt: the seeds (and shrunk
// operation lists) of every failure the campaign has found.
func TestRegressions(t *testing.T) {
	cases, err := asgsim.ReadRegressions("testdata/regressions.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) == 0 {
		t.Fatal("the regression list is empty")
	}
	env(t).Close()
	runCampaign(t, cases)
}

func runCampaign(t *testing.T, cases []asgsim.Case) {
	t.Helper()
	// An interrupt (Ctrl-C, SIGTERM) ends the campaign early: the runs that finished
	// make the table.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := asgsim.Campaign(ctx, asgsim.Options{
		Cases: cases, Workers: *workersFlag, ShrinkRuns: *shrinkFlag, Progress: progress{t}, StopAtFirst: *stopFirstFlag,
	})
	table := rep.Table()
	t.Logf("campaign of %d cases:\n%s", len(cases), table)
	if *tableFlag != "" {
		if werr := os.WriteFile(*tableFlag, []byte(table), 0o644); werr != nil {
			t.Error(werr)
		}
	}
	if err != nil {
		t.Errorf("simulator error: %v", err)
	}
	for _, f := range rep.Failures {
		t.Errorf("seed %d broke %s: %s\nlog tail:\n%s", f.Result.Case.Seed, f.First.Invariant, f.First, f.Result.Log)
	}
	switch {
	case ctx.Err() != nil:
		t.Errorf("interrupted: %d of %d cases ran", len(rep.Runs), len(cases))
	case len(rep.Runs) != len(cases):
		t.Errorf("%d of %d cases ran", len(rep.Runs), len(cases))
	}
}

// progress writes the campaign's progress lines to the test log as they come.
type progress struct{ t *testing.T }

func (p progress) Write(b []byte) (int, error) {
	p.t.Logf("%s %s", time.Now().Format("15:04:05"), b)
	return len(b), nil
}
