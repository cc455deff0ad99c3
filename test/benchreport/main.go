// Command benchreport turns the output of the benchmarks (`go test -bench`) and the
// built binaries into one table, and writes it with the machine it ran on to
// docs/benchmarks.md. `make bench` runs it after the benchmarks and the builds:
//
//	go run ./test/benchreport -in bench.txt -build build -doc docs/benchmarks.md
//
// Every figure in the table comes from a benchmark line of the input or from a file
// it measures; nothing is typed in. A benchmark it does not know is listed with all
// its figures.
package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	in := flag.String("in", "bench.txt", "the benchmarks' output (go test -bench)")
	build := flag.String("build", "build", "the build directory: <function>/bootstrap (make build) and slotctl (make slotctl)")
	doc := flag.String("doc", "", "write the report to this Markdown file too (docs/benchmarks.md)")
	wall := flag.Duration("wall", 0, "the benchmarks' wall time, for the report (0: not stated)")
	flag.Parse()
	if err := run(*in, *build, *doc, *wall); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(in, build, doc string, wall time.Duration) error {
	f, err := os.Open(in)
	if err != nil {
		return fmt.Errorf("reading the benchmarks' output: %w", err)
	}
	defer f.Close()
	results, err := parse(f)
	if err != nil {
		return err
	}
	if len(results) == 0 {
		return fmt.Errorf("no benchmark lines in %s", in)
	}
	sizes, err := measureSizes(build)
	if err != nil {
		return err
	}
	table := render(results, sizes)
	fmt.Print(table)
	if doc == "" {
		return nil
	}
	return os.WriteFile(doc, []byte(document(table, wall)), 0o644)
}

// result is one benchmark line: its name (without the -GOMAXPROCS suffix) and its
// figures by unit.
type result struct {
	name    string
	figures map[string]float64
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)

// parse reads the benchmark lines of go test's output; the rest is ignored.
func parse(r io.Reader) ([]result, error) {
	var out []result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		fields := strings.Fields(m[3])
		if len(fields)%2 != 0 {
			continue
		}
		res := result{name: m[1], figures: map[string]float64{}}
		for i := 0; i < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark %s: figure %q: %w", m[1], fields[i], err)
			}
			res.figures[fields[i+1]] = v
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

// sizes are the product binaries' sizes in bytes.
type sizes struct {
	slotctl   int64
	functions []functionSize
}

type functionSize struct {
	name           string
	bootstrap, zip int64
}

// measureSizes reads slotctl's size and zips each function's bootstrap as SAM does
// (one file, bootstrap, deflated) to measure the archive Lambda receives.
func measureSizes(build string) (sizes, error) {
	var s sizes
	fi, err := os.Stat(filepath.Join(build, "slotctl"))
	if err != nil {
		return s, fmt.Errorf("slotctl (run make slotctl): %w", err)
	}
	s.slotctl = fi.Size()
	boots, err := filepath.Glob(filepath.Join(build, "*", "bootstrap"))
	if err != nil || len(boots) == 0 {
		return s, errors.Join(errors.New("no build/<function>/bootstrap (run make build)"), err)
	}
	for _, b := range boots {
		raw, err := os.ReadFile(b)
		if err != nil {
			return s, err
		}
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, err := zw.CreateHeader(&zip.FileHeader{Name: "bootstrap", Method: zip.Deflate})
		if err == nil {
			_, err = w.Write(raw)
		}
		if err == nil {
			err = zw.Close()
		}
		if err != nil {
			return s, fmt.Errorf("zipping %s: %w", b, err)
		}
		s.functions = append(s.functions, functionSize{name: filepath.Base(filepath.Dir(b)), bootstrap: int64(len(raw)), zip: int64(buf.Len())})
	}
	return s, nil
}

// row is one line of the table.
type row struct{ area, what, value, compare string }

func render(results []result, sz sizes) string {
	byName := map[string]result{}
	for _, r := range results {
		byName[r.name] = r
	}
	used := map[string]bool{}
	get := func(name string) (result, bool) {
		r, ok := byName[name]
		if ok {
			used[name] = true
		}
		return r, ok
	}
	var rows []row

	// The replacement's critical path.
	for _, seq := range []struct{ name, what string }{
		{"reattach", "reattach: launch event → CONTINUE"},
		{"health-replacement", "health replacement: terminate event → replacement's CONTINUE"},
	} {
		r, ok := get("BenchmarkReplacement/" + seq.name)
		if !ok {
			continue
		}
		f := r.figures
		cmp := fmt.Sprintf("bound 2 × attach + 2 s = %.1f s (boot excluded)", f["bound-ms"]/1000)
		rows = append(rows,
			row{"replacement", seq.what + ", p50", seconds(f["p50-ms"]), cmp},
			row{"replacement", seq.what + ", p95", seconds(f["p95-ms"]), fmt.Sprintf("%.0f runs", f["runs"])})
		if v, ok := f["release-p50-ms"]; ok {
			rows = append(rows, row{"replacement", seq.name + ": terminate event → old holder's release, p50", seconds(v), ""})
		}
		rows = append(rows, row{"replacement", seq.name + ": AWS calls / sequential round trips on the path", fmt.Sprintf("%.0f / %.0f", f["calls"], f["round-trips"]), "median"})
	}

	// Claim contention.
	for _, n := range []string{"30", "100"} {
		for _, order := range []string{"matched+rendezvous", "rendezvous-only", "lowest-free"} {
			r, ok := get("BenchmarkClaim" + n + "/" + order)
			if !ok {
				continue
			}
			note := ""
			if order == "matched+rendezvous" {
				note = "production order"
			}
			rows = append(rows, row{"claim", fmt.Sprintf("%s concurrent launches, %s: writes per claim / time until all bound", n, order),
				fmt.Sprintf("%.2f / %s", r.figures["writes/claim"], seconds(r.figures["ms-to-all-bound"])), note})
		}
	}

	// Removal safety.
	if r, ok := get("BenchmarkRemovalSafe50k"); ok {
		rows = append(rows, row{"removal safety", "the rule on 50,000 partitions (CPU, B, allocs per verdict)", cpuAllocs(r.figures), "target ≤ 50 ms"})
	}
	if r, ok := get("BenchmarkRemovalVerdict50k"); ok {
		rows = append(rows, row{"removal safety", "a verdict's whole computation from two Metadata answers, 50,000 partitions", cpuAllocs(r.figures), "target ≤ 50 ms"})
	}

	// Scale.
	for _, n := range []string{"3", "30", "300", "1000"} {
		for _, op := range []string{"claim", "reconcile", "status"} {
			r, ok := get("BenchmarkScale/slots=" + n + "/" + op)
			if !ok {
				continue
			}
			calls := r.figures["aws-calls/op"]
			extra := ""
			if op == "reconcile" {
				slots, _ := strconv.ParseFloat(n, 64)
				extra = fmt.Sprintf("%.3f calls per slot", calls/slots)
			}
			took, ok := r.figures[map[string]string{"claim": "ms/claim", "reconcile": "ms/pass", "status": "ms/status"}[op]]
			if !ok {
				took = r.figures["ns/op"] / 1e6
			}
			rows = append(rows, row{"scale (moto)", fmt.Sprintf("%s slots, %s: AWS calls / wall time", n, op),
				fmt.Sprintf("%.1f / %s", calls, millis(took)), extra})
		}
	}

	// Sizes.
	rows = append(rows, row{"size", "slotctl (make slotctl, this machine)", mib(sz.slotctl), ""})
	for _, f := range sz.functions {
		rows = append(rows, row{"size", f.name + " function zip (bootstrap linux/arm64, -s -w)", mib(f.zip), "bootstrap " + mib(f.bootstrap)})
	}

	// Anything else.
	for _, r := range results {
		if used[r.name] || strings.HasPrefix(r.name, "BenchmarkScale/slots=") && !strings.Contains(strings.TrimPrefix(r.name, "BenchmarkScale/slots="), "/") {
			continue
		}
		units := make([]string, 0, len(r.figures))
		for u := range r.figures {
			units = append(units, u)
		}
		slices.Sort(units)
		var parts []string
		for _, u := range units {
			parts = append(parts, fmt.Sprintf("%s %s", strconv.FormatFloat(r.figures[u], 'g', 4, 64), u))
		}
		rows = append(rows, row{"other", r.name, strings.Join(parts, ", "), ""})
	}

	var b strings.Builder
	b.WriteString("| area | measure | value | compare |\n|---|---|--:|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.area, r.what, r.value, r.compare)
	}
	return b.String()
}

func seconds(ms float64) string { return fmt.Sprintf("%.2f s", ms/1000) }

func millis(ms float64) string {
	if ms < 10 {
		return fmt.Sprintf("%.2f ms", ms)
	}
	return fmt.Sprintf("%.0f ms", ms)
}

func cpuAllocs(f map[string]float64) string {
	return fmt.Sprintf("%s, %s, %.0f allocs", millis(f["ns/op"]/1e6), mib(int64(f["B/op"])), f["allocs/op"])
}

func mib(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// document is docs/benchmarks.md: what the figures are, the machine, the table.
func document(table string, wall time.Duration) string {
	var b strings.Builder
	b.WriteString(`# Benchmarks

The last figures ` + "`make bench`" + ` produced, and the machine it ran on. This file is
written by ` + "`make bench`" + ` (the benchmarks, then ` + "`go run ./test/benchreport`" + `): run it
again to regenerate every figure; none is typed in by hand.

What the figures are:

- **replacement**: ` + "`BenchmarkReplacement`" + ` (test/replacement_bench_test.go) against moto
  behind the emulator's latency model (test/emulator/latency.go: every AWS call delayed
  as AWS answers it, ~100 ms for an EC2 describe, ~10 ms for DynamoDB; a volume or ENI
  stays attaching/detaching 1–4 s; an SSM stop-and-unmount runs 2–5 s; the sources are
  in that file), with the functions' production waits (first poll after 1 s, backing
  off to 10 s). *reattach*: a replacement launches while its slot is free and its ENI
  and volume wait detached. *health replacement*: an Unhealthy holder's terminate event
  and its replacement's launch event arrive together; the old broker is stopped through
  SSM (kfake), its volume and ENI detached, the slot released, and the waiting
  replacement claims it. p50 and p95 are nearest-rank over the runs (p95 of 10 runs is
  the slowest). Calls and sequential round trips are those on the path (for the health
  replacement, the terminate's up to the release and the launch's after it). The bound
  is *instance boot + 2 × attach + 2 s* with the model's mean attach window (2.5 s) and
  boot excluded: the launch event arrives when the instance is already pending, and
  both times are measured from an event.
- **claim**: ` + "`BenchmarkClaim30`" + ` and ` + "`BenchmarkClaim100`" + ` (test/claim_bench_test.go): that
  many instances over 3 AZs claim as many slots at once, under the latency model, in
  each claim order; conditional writes per claim, and the time from the first claim
  until every slot is bound (claim and bind writes; the attaches are each instance's
  own and do not contend).
- **removal safety**: ` + "`BenchmarkRemovalSafe50k`" + ` and ` + "`BenchmarkRemovalVerdict50k`" + `
  (shared/kafka/safety_bench_test.go) on a synthetic 50,000-partition metadata (500
  topics × 100 partitions, 30 brokers, RF 3 and some RF 2, 1 % under-replicated): the
  rule alone, and the whole computation of a verdict from two Metadata answers (without
  the Kafka round trips). CPU time, bytes and allocations per verdict.
- **scale (moto)**: ` + "`BenchmarkScale`" + ` (test/scale_bench_test.go): AWS calls and moto's wall
  time per launch claim, reconcile pass and ` + "`slotctl status`" + ` at 3 to 1,000 slots (no
  latency model: moto's own time, see the README's Scale section).
- **size**: ` + "`build/slotctl`" + ` as ` + "`make slotctl`" + ` builds it for the machine, and each
  function's ` + "`bootstrap`" + ` as ` + "`make build`" + ` (and ` + "`sam build`" + `) builds it (linux/arm64,
  ` + "`-tags lambda.norpc -trimpath -ldflags='-s -w'`" + `), zipped alone with deflate as SAM
  packages it.

Timed figures depend on the machine and on its load (the machine below is shared);
AWS call counts and sizes do not.

`)
	fmt.Fprintf(&b, "Machine: %d CPUs (%s), %s, %s/%s; run %s UTC", runtime.NumCPU(), cpuModel(), runtime.Version(), runtime.GOOS, runtime.GOARCH,
		time.Now().UTC().Format("2006-01-02 15:04"))
	if wall > 0 {
		fmt.Fprintf(&b, "; the benchmarks took %s of wall time", wall.Round(time.Second))
	}
	b.WriteString(".\n\n")
	b.WriteString(table)
	return b.String()
}

// cpuModel is the first "model name" of /proc/cpuinfo, or "CPU model unknown".
func cpuModel() string {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				return strings.TrimSpace(v)
			}
		}
	}
	return "CPU model unknown"
}
