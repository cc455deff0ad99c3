package obs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

const testNamespace = "Slotkeeper/Test"

// emfResult is one parsed EMF document: its dimensions and metric values.
type emfResult struct {
	Dims    map[string]string
	Metrics map[string]emfValues
}

type emfValues struct {
	Unit   string
	Values []float64
}

// parseEMF parses the lines Flush wrote, checking each against the EMF
// specification: an "_aws" member with a millisecond Timestamp within
// [from, to] and one CloudWatchMetrics directive in testNamespace; every
// declared dimension a top-level string; every declared metric a top-level
// number or array of at most 100 numbers; no other members.
func parseEMF(t *testing.T, out string, from, to time.Time) []emfResult {
	t.Helper()
	var results []emfResult
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		var doc map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &doc); err != nil {
			t.Fatalf("EMF line %q is not a JSON object: %v", line, err)
		}
		var meta struct {
			Timestamp         int64
			CloudWatchMetrics []struct {
				Namespace  string
				Dimensions [][]string
				Metrics    []struct{ Name, Unit string }
			}
		}
		dec := json.NewDecoder(bytes.NewReader(doc["_aws"]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&meta); err != nil {
			t.Fatalf("decoding _aws of %s: %v", line, err)
		}
		if meta.Timestamp < from.UnixMilli() || meta.Timestamp > to.UnixMilli() {
			t.Errorf("Timestamp %d outside [%d, %d]", meta.Timestamp, from.UnixMilli(), to.UnixMilli())
		}
		if len(meta.CloudWatchMetrics) != 1 {
			t.Fatalf("got %d CloudWatchMetrics directives, want 1: %s", len(meta.CloudWatchMetrics), line)
		}
		dir := meta.CloudWatchMetrics[0]
		if dir.Namespace != testNamespace || len(dir.Dimensions) != 1 {
			t.Fatalf("directive %+v: want namespace %s and one dimension set", dir, testNamespace)
		}
		delete(doc, "_aws")

		res := emfResult{Dims: map[string]string{}, Metrics: map[string]emfValues{}}
		for _, k := range dir.Dimensions[0] {
			var v string
			if err := json.Unmarshal(doc[k], &v); err != nil {
				t.Fatalf("dimension %s of %s is not a string member: %v", k, line, err)
			}
			res.Dims[k] = v
			delete(doc, k)
		}
		for _, m := range dir.Metrics {
			var vals []float64
			if err := json.Unmarshal(doc[m.Name], &vals); err != nil {
				var v float64
				if err := json.Unmarshal(doc[m.Name], &v); err != nil {
					t.Fatalf("metric %s of %s is neither a number nor an array of numbers", m.Name, line)
				}
				vals = []float64{v}
			}
			if len(vals) > 100 {
				t.Errorf("metric %s has %d values, EMF allows 100", m.Name, len(vals))
			}
			res.Metrics[m.Name] = emfValues{Unit: m.Unit, Values: vals}
			delete(doc, m.Name)
		}
		if len(doc) != 0 {
			t.Errorf("undeclared members %v in %s", doc, line)
		}
		results = append(results, res)
	}
	sort.Slice(results, func(i, j int) bool {
		return fmt.Sprint(results[i].Dims, results[i].Metrics) < fmt.Sprint(results[j].Dims, results[j].Metrics)
	})
	return results
}

func TestMetricsFlush(t *testing.T) {
	base := map[string]string{"Cluster": "c1", "Function": "launch"}
	baseWith := func(kv ...string) map[string]string {
		d := map[string]string{"Cluster": "c1", "Function": "launch"}
		for i := 0; i < len(kv); i += 2 {
			d[kv[i]] = kv[i+1]
		}
		return d
	}
	count := func(vals ...float64) emfValues { return emfValues{Unit: "Count", Values: vals} }
	seq := func(from, n int) []float64 {
		var v []float64
		for i := from; i < from+n; i++ {
			v = append(v, float64(i))
		}
		return v
	}

	tests := []struct {
		name    string
		record  func(m *Metrics)
		want    []emfResult
		wantErr []string // substrings of the Flush error
	}{
		{
			name:   "nothing recorded writes nothing",
			record: func(m *Metrics) {},
		},
		{
			name:   "single value is a number",
			record: func(m *Metrics) { m.Count("Claims", 1) },
			want:   []emfResult{{Dims: base, Metrics: map[string]emfValues{"Claims": count(1)}}},
		},
		{
			name: "repeated values are an array, with units per metric",
			record: func(m *Metrics) {
				m.Count("Claims", 1)
				m.Count("Claims", 2)
				m.Duration("Latency", 1500*time.Microsecond)
			},
			want: []emfResult{{Dims: base, Metrics: map[string]emfValues{
				"Claims":  count(1, 2),
				"Latency": {Unit: "Milliseconds", Values: []float64{1.5}},
			}}},
		},
		{
			name: "one document per dimension set, extras in any order",
			record: func(m *Metrics) {
				m.Count("Claims", 1)
				m.Count("Attach", 1, "Slot", "2", "Kind", "eni")
				m.Count("Attach", 1, "Kind", "eni", "Slot", "2")
				m.Count("Attach", 1, "Kind", "volume", "Slot", "2")
			},
			want: []emfResult{
				{Dims: base, Metrics: map[string]emfValues{"Claims": count(1)}},
				{Dims: baseWith("Kind", "eni", "Slot", "2"), Metrics: map[string]emfValues{"Attach": count(1, 1)}},
				{Dims: baseWith("Kind", "volume", "Slot", "2"), Metrics: map[string]emfValues{"Attach": count(1)}},
			},
		},
		{
			name:   "extra dimension overrides a base one",
			record: func(m *Metrics) { m.Count("Claims", 1, "Function", "reconcile") },
			want:   []emfResult{{Dims: baseWith("Function", "reconcile"), Metrics: map[string]emfValues{"Claims": count(1)}}},
		},
		{
			name: "more than 100 values split into documents",
			record: func(m *Metrics) {
				for i := range 150 {
					m.Count("Claims", float64(i))
				}
			},
			want: []emfResult{
				{Dims: base, Metrics: map[string]emfValues{"Claims": count(seq(0, 100)...)}},
				{Dims: base, Metrics: map[string]emfValues{"Claims": count(seq(100, 50)...)}},
			},
		},
		{
			name: "invalid recordings are dropped and reported",
			record: func(m *Metrics) {
				m.Count("Claims", 1)
				m.Count("Odd", 1, "Slot")
				m.Count("NaN", math.NaN())
				m.Count("EmptyDim", 1, "Slot", "")
				m.Count("Cluster", 1)
				m.Duration("Claims", time.Second)
			},
			want: []emfResult{{Dims: base, Metrics: map[string]emfValues{"Claims": count(1)}}},
			wantErr: []string{
				`"Odd": odd number`,
				`"NaN": value NaN`,
				`"EmptyDim": dimension "Slot"=""`,
				`"Cluster": name is also a dimension`,
				`"Claims": recorded with unit Milliseconds, earlier with Count`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			m := NewMetrics(&buf, testNamespace, base)
			from := time.Now()
			tt.record(m)
			err := m.Flush()
			got := parseEMF(t, buf.String(), from, time.Now())

			if len(tt.wantErr) == 0 && err != nil {
				t.Errorf("Flush() error = %v", err)
			}
			for _, want := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Flush() error = %v, want it to contain %s", err, want)
				}
			}
			want := tt.want
			sort.Slice(want, func(i, j int) bool {
				return fmt.Sprint(want[i].Dims, want[i].Metrics) < fmt.Sprint(want[j].Dims, want[j].Metrics)
			})
			if !reflect.DeepEqual(got, want) {
				t.Errorf("documents:\n got %+v\nwant %+v\noutput:\n%s", got, want, buf.String())
			}
		})
	}
}

func TestMetricsFlushResets(t *testing.T) {
	var buf bytes.Buffer
	m := NewMetrics(&buf, testNamespace, nil)
	m.Count("Odd", 1, "Slot")
	m.Count("Claims", 1)
	if err := m.Flush(); err == nil {
		t.Fatal("first Flush() returned no error for the odd recording")
	}
	got := parseEMF(t, buf.String(), time.Time{}, time.Now())
	want := []emfResult{{Dims: map[string]string{}, Metrics: map[string]emfValues{"Claims": {Unit: "Count", Values: []float64{1}}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("first Flush wrote %+v, want %+v", got, want)
	}
	if !strings.Contains(buf.String(), `"Dimensions":[[]]`) {
		t.Errorf("no-dimension document %s lacks an empty dimension set", buf.String())
	}

	buf.Reset()
	if err := m.Flush(); err != nil || buf.Len() != 0 {
		t.Errorf("second Flush() = %v and wrote %q, want nil and nothing", err, buf.String())
	}
}

func TestMetricsConcurrent(t *testing.T) {
	var buf bytes.Buffer
	m := NewMetrics(&buf, testNamespace, nil)
	const workers, each = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				m.Count("Calls", 1, "Worker", fmt.Sprint(w%2))
			}
		})
	}
	wg.Wait()
	if err := m.Flush(); err != nil {
		t.Fatalf("Flush() error = %v", err)
	}
	total := 0
	for _, doc := range parseEMF(t, buf.String(), time.Time{}, time.Now()) {
		total += len(doc.Metrics["Calls"].Values)
	}
	if total != workers*each {
		t.Errorf("flushed %d values, want %d", total, workers*each)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestMetricsWriteError(t *testing.T) {
	m := NewMetrics(failingWriter{}, testNamespace, nil)
	m.Count("Claims", 1)
	if err := m.Flush(); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("Flush() error = %v, want %v", err, io.ErrClosedPipe)
	}
}

func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.Count("Claims", 1)
	m.Duration("Latency", time.Second)
	if err := m.Flush(); err != nil {
		t.Errorf("nil Metrics Flush() = %v, want nil", err)
	}
}

func BenchmarkMetrics(b *testing.B) {
	m := NewMetrics(io.Discard, testNamespace, map[string]string{"Cluster": "c1", "Function": "launch"})
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m.Count("Claims", 1)
		m.Duration("StepDuration", time.Millisecond, "Step", "claim")
		if i%100 == 99 {
			if err := m.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
