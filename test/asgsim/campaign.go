package asgsim

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Options configure a campaign.
type Options struct {
	// Cases are the runs to make.
	Cases []Case
	// Workers is how many runs go at once, each on its own emulator (default 1).
	Workers int
	// Timing is the time model (default DefaultTiming).
	Timing Timing
	// ShrinkRuns bounds the runs spent shrinking each failing case (0: no shrinking).
	ShrinkRuns int
	// Progress, when set, gets a line per finished run.
	Progress io.Writer
	// StopAtFirst ends the campaign after the first failing case (and its shrinking).
	StopAtFirst bool
}

// Failure is a failing case and what shrinking made of it.
type Failure struct {
	Result Result
	// First is the first violation; Prefix the case cut after the operation that
	// preceded it (the shortest failing prefix), Shrunk the smallest failing subset of
	// it found, each confirmed to fail again with the same invariant (nil when not).
	First          Violation
	Prefix, Shrunk *Case
	ShrinkRuns     int
}

// Report is a campaign's outcome.
type Report struct {
	Runs     []Result
	Failures []Failure
	Wall     time.Duration
	Workers  int
}

// Campaign runs every case, on Workers emulators at once, and shrinks each failing
// case.
func Campaign(ctx context.Context, opt Options) (Report, error) {
	if opt.Workers <= 0 {
		opt.Workers = 1
	}
	if opt.Timing.Scale == 0 {
		opt.Timing = DefaultTiming
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	start := time.Now()
	rep := Report{Workers: opt.Workers}
	jobs := make(chan int)
	results := make([]Result, len(opt.Cases))
	ran := make([]bool, len(opt.Cases))
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	envs := make([]*Env, opt.Workers)
	for w := range opt.Workers {
		env, err := NewEnv()
		if err != nil {
			for _, e := range envs[:w] {
				_ = e.Close()
			}
			return rep, err
		}
		envs[w] = env
	}
	defer func() {
		for _, e := range envs {
			_ = e.Close()
		}
	}()
	done := 0
	for w := range opt.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if runCtx.Err() != nil {
					continue
				}
				res := Simulate(runCtx, envs[w], opt.Cases[i], opt.Timing)
				if runCtx.Err() != nil && (len(res.Violations) == 0 || ctx.Err() != nil) {
					continue // cut short (StopAtFirst, or the campaign was interrupted): not a run
				}
				if len(res.Violations) > 0 && opt.ShrinkRuns > 0 && runCtx.Err() == nil {
					f := shrink(runCtx, envs[w], res, opt.Timing, opt.ShrinkRuns)
					mu.Lock()
					rep.Failures = append(rep.Failures, f)
					mu.Unlock()
				} else if len(res.Violations) > 0 {
					mu.Lock()
					rep.Failures = append(rep.Failures, Failure{Result: res, First: res.Violations[0]})
					mu.Unlock()
				}
				mu.Lock()
				results[i] = res
				ran[i] = true
				done++
				if opt.StopAtFirst && len(res.Violations) > 0 {
					stop()
				}
				if res.Err != nil && firstErr == nil {
					firstErr = fmt.Errorf("case %s: %w", res.Case, res.Err)
				}
				if opt.Progress != nil {
					fmt.Fprintf(opt.Progress, "[%d/%d] %s\n", done, len(opt.Cases), res.Summary())
				}
				mu.Unlock()
			}
		}()
	}
	for i := range opt.Cases {
		select {
		case jobs <- i:
		case <-runCtx.Done():
		}
		if runCtx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	for i, ok := range ran {
		if ok {
			rep.Runs = append(rep.Runs, results[i])
		}
	}
	rep.Wall = time.Since(start)
	slices.SortFunc(rep.Failures, func(a, b Failure) int {
		if a.Result.Case.Seed < b.Result.Case.Seed {
			return -1
		}
		return 1
	})
	return rep, firstErr
}

// Summary is a run's one-line summary.
func (res Result) Summary() string {
	s := fmt.Sprintf("case %s: %d slots, %d ops, %d steps, %d checks, sim %s, wall %s", res.Case, res.Slots, sumValues(res.Ops), res.Steps,
		res.Checks, res.Sim.Round(time.Second), res.Wall.Round(100*time.Millisecond))
	if len(res.Violations) > 0 {
		s += fmt.Sprintf(": %d VIOLATION(S), first %s", len(res.Violations), res.Violations[0])
	}
	if res.Err != nil {
		s += ": simulator error: " + res.Err.Error()
	}
	return s
}

// fails runs c and reports whether it breaks the invariant named.
func fails(ctx context.Context, env *Env, c Case, tm Timing, invariant string) bool {
	res := Simulate(ctx, env, c, tm)
	return slices.ContainsFunc(res.Violations, func(v Violation) bool { return v.Invariant == invariant })
}

// shrink cuts a failing run's plan to the operations applied before its first
// violation (the shortest failing prefix), then removes operations while it still
// fails with the same invariant (delta debugging), within budget runs. Each candidate
// runs once: a run's handler scheduling varies, so a candidate that passes once is
// kept out, and the final answer is run again to confirm it.
func shrink(ctx context.Context, env *Env, res Result, tm Timing, budget int) Failure {
	f := Failure{Result: res, First: res.Violations[0]}
	inv := f.First.Invariant
	full := res.Case.Plan()
	idx := res.Case.Keep
	if idx == nil {
		idx = make([]int, len(full.Ops))
		for i := range idx {
			idx[i] = i
		}
	}
	runs := 0
	try := func(keep []int) bool {
		if runs >= budget || ctx.Err() != nil {
			return false
		}
		runs++
		return fails(ctx, env, Case{Seed: res.Case.Seed, Keep: slices.Clone(keep)}, tm, inv)
	}
	prefix := idx[:min(f.First.Ops, len(idx))]
	if try(prefix) {
		p := Case{Seed: res.Case.Seed, Keep: slices.Clone(prefix)}
		f.Prefix = &p
	} else {
		prefix = idx
	}
	cur := slices.Clone(prefix)
	n := 2
	for len(cur) >= 2 && runs < budget {
		chunk := (len(cur) + n - 1) / n
		reduced := false
		for start := 0; start < len(cur); start += chunk {
			cand := append(slices.Clone(cur[:start]), cur[min(start+chunk, len(cur)):]...)
			if try(cand) {
				cur, n, reduced = cand, max(n-1, 2), true
				break
			}
		}
		if !reduced {
			if n >= len(cur) {
				break
			}
			n = min(n*2, len(cur))
		}
	}
	if len(cur) < len(prefix) && try(cur) {
		s := Case{Seed: res.Case.Seed, Keep: cur}
		f.Shrunk = &s
	}
	f.ShrinkRuns = runs
	return f
}

// Table renders the campaign's table: totals, faults by kind, operations by kind,
// alerts raised knowingly, and every violation with its seed and shortest prefix.
func (rep Report) Table() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	var steps, events, deliveries, checks, violations int
	var sim time.Duration
	faults, ops, alerts, known := map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}
	errs := 0
	slots := map[int]int{}
	for _, r := range rep.Runs {
		steps += r.Steps
		events += r.Events
		deliveries += r.Deliveries
		checks += r.Checks
		violations += len(r.Violations)
		sim += r.Sim
		slots[r.Slots]++
		for k, n := range r.Faults {
			faults[k] += n
		}
		for k, n := range r.Ops {
			ops[k] += n
		}
		for k, n := range r.Alerts {
			alerts[k] += n
		}
		for k, n := range r.Known {
			known[k] += n
		}
		if r.Err != nil {
			errs++
		}
	}
	fmt.Fprintf(w, "seeds\t%d\t(%s)\n", len(rep.Runs), joinCounts(slots, "%d slots"))
	fmt.Fprintf(w, "steps\t%d\t\n", steps)
	fmt.Fprintf(w, "events\t%d\t(%d deliveries)\n", events, deliveries)
	fmt.Fprintf(w, "invariant checks\t%d\t(each of %d invariants, after every step)\n", checks, len(Invariants))
	fmt.Fprintf(w, "violations\t%d\t\n", violations)
	fmt.Fprintf(w, "simulator errors\t%d\t\n", errs)
	fmt.Fprintf(w, "simulated time\t%s\t\n", sim.Round(time.Second))
	fmt.Fprintf(w, "wall time\t%s\t(%d workers, %.1f seeds/minute)\n", rep.Wall.Round(time.Second), rep.Workers,
		float64(len(rep.Runs))/max(rep.Wall.Minutes(), 1e-9))
	fmt.Fprintf(w, "faults injected, by kind\t\t\n")
	for _, k := range faultKinds(faults) {
		fmt.Fprintf(w, "  %s\t%d\t\n", k, faults[k])
	}
	fmt.Fprintf(w, "operations, by kind\t\t\n")
	for _, k := range sortedKeys(ops) {
		fmt.Fprintf(w, "  %s\t%d\t\n", k, ops[k])
	}
	fmt.Fprintf(w, "alerts raised knowingly\t\t\n")
	for _, k := range sortedKeys(alerts) {
		fmt.Fprintf(w, "  %s\t%d\t\n", k, alerts[k])
	}
	if len(known) > 0 {
		fmt.Fprintf(w, "documented outcomes needing an operator\t\t\n")
		for _, k := range sortedKeys(known) {
			fmt.Fprintf(w, "  %s\t%d\t\n", k, known[k])
		}
	}
	_ = w.Flush()
	for _, f := range rep.Failures {
		fmt.Fprintf(&b, "VIOLATION seed %d: %s\n", f.Result.Case.Seed, f.First)
		fmt.Fprintf(&b, "  case: %s (%d ops)\n", f.Result.Case, len(f.Result.Case.Plan().Ops))
		if f.Prefix != nil {
			fmt.Fprintf(&b, "  shortest failing prefix: %s (%d ops)\n", f.Prefix, len(f.Prefix.Keep))
		}
		if f.Shrunk != nil {
			fmt.Fprintf(&b, "  shrunk (%d runs): %s (%d ops)\n", f.ShrinkRuns, f.Shrunk, len(f.Shrunk.Keep))
			for _, op := range f.Shrunk.Plan().Ops {
				fmt.Fprintf(&b, "    %s\n", op)
			}
		}
		for _, v := range f.Result.Violations[1:] {
			fmt.Fprintf(&b, "  also: %s\n", v)
		}
	}
	return b.String()
}

// FaultKindNames are every fault kind the campaign injects, so the table shows each
// (a zero means a kind was never exercised).
var FaultKindNames = []string{
	"aws:Throttle", "aws:ServerError", "aws:Latency", "aws:Crash", "aws:LostResponse",
	"delivery:" + DupConcurrent, "delivery:" + DupLate, "delivery:" + Late, "delivery:" + Reorder,
	"stop:" + StopStillActive, "stop:" + StopBusy, "stop:" + StopNoResult,
	"broker-dies", "kafka-gone", "lost-heartbeats",
}

func faultKinds(m map[string]int) []string {
	out := slices.Clone(FaultKindNames)
	for _, k := range sortedKeys(m) {
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func joinCounts(m map[int]int, format string) string {
	var keys []int
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d × "+format, m[k], k))
	}
	return strings.Join(parts, ", ")
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// ReadRegressions reads a regression list: one case per line ("<seed>" or "<seed>
// ops=i,j,..."), with "#" comments and blank lines ignored.
func ReadRegressions(path string) ([]Case, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the regression list: %w", err)
	}
	defer f.Close()
	var out []Case
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if strings.TrimSpace(line) == "" {
			continue
		}
		c, err := ParseCase(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}
