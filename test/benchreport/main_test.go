package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A sample of go test's benchmark output, with the noise between the lines.
const sample = `goos: linux
BenchmarkReplacement/reattach-2         	       1	39420261587 ns/op	      7000 bound-ms	        31.00 calls	      9998 p50-ms	     10474 p95-ms	        31.00 round-trips	         3.000 runs
        127.0.0.1 - - "POST / HTTP/1.1" 200 -
BenchmarkReplacement/health-replacement-2         	       1	97580892899 ns/op	      7000 bound-ms	        74.00 calls	     31428 p50-ms	     34610 p95-ms	  20000 release-p50-ms	        71.00 round-trips	         3.000 runs
BenchmarkClaim100/lowest-free-2 	       1	 123 ns/op	 2.50 writes/claim	 300 claims/op	 1500 ms-to-all-bound
BenchmarkRemovalSafe50k-2      	    6801	    326099 ns/op	       150.0 blockers	     50000 partitions	   68960 B/op	     309 allocs/op
BenchmarkScale/slots=30/reconcile-2 	 3	 5000000 ns/op	 12.0 aws-calls/op	 0.4 aws-calls/slot	 5.0 ms/pass
BenchmarkMetrics-2 	 1000	 1234 ns/op
PASS
`

// The report reads every figure from the benchmark lines and the build directory.
func TestReport(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "bench.txt")
	build := filepath.Join(dir, "build")
	for path, content := range map[string]string{in: sample, filepath.Join(build, "slotctl"): strings.Repeat("x", 3<<20),
		filepath.Join(build, "launch", "bootstrap"): strings.Repeat("y", 2<<20)} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	doc := filepath.Join(dir, "benchmarks.md")
	if err := run(in, build, doc, 0); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	got := string(raw)
	for _, want := range []string{
		"| replacement | reattach: launch event → CONTINUE, p50 | 10.00 s | bound 2 × attach + 2 s = 7.0 s (boot excluded) |",
		"| replacement | reattach: launch event → CONTINUE, p95 | 10.47 s | 3 runs |",
		"| replacement | health-replacement: terminate event → old holder's release, p50 | 20.00 s |",
		"| replacement | health-replacement: AWS calls / sequential round trips on the path | 74 / 71 | median |",
		"| claim | 100 concurrent launches, lowest-free: writes per claim / time until all bound | 2.50 / 1.50 s |",
		"| removal safety | the rule on 50,000 partitions (CPU, B, allocs per verdict) | 0.33 ms, 67.3 KiB, 309 allocs | target ≤ 50 ms |",
		"| scale (moto) | 30 slots, reconcile: AWS calls / wall time | 12.0 / 5.00 ms | 0.400 calls per slot |",
		"| size | slotctl (make slotctl, this machine) | 3.0 MiB |",
		"| size | launch function zip (bootstrap linux/arm64, -s -w) | ",
		"| other | BenchmarkMetrics | 1234 ns/op |",
		"Machine: ",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the report lacks %q:\n%s", want, got)
		}
	}
	// A zip of 2 MiB of one byte is far smaller than the bootstrap.
	if strings.Contains(got, "launch function zip (bootstrap linux/arm64, -s -w) | 2.0 MiB") {
		t.Errorf("the zip is as large as the bootstrap: not compressed\n%s", got)
	}
}
