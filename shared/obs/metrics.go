package obs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// CloudWatch units used by Metrics.
const (
	unitCount        = "Count"
	unitMilliseconds = "Milliseconds"
)

// Limits of the CloudWatch embedded metric format (EMF).
const (
	maxDimensions      = 30  // dimension keys per dimension set
	maxMetricsPerDoc   = 100 // metric definitions per document
	maxValuesPerMetric = 100 // values in one metric's array
)

// Metrics collects metric values in memory and writes them as CloudWatch
// embedded metric format (EMF) documents, one JSON object per line, when
// flushed. In Lambda the writer is stdout: CloudWatch Logs extracts the
// metrics from the log stream, with no API call and no extra latency.
//
// Every metric carries the dimensions given to NewMetrics, plus any extra
// dimensions passed when recording it. Values recorded with the same
// dimension set are flushed together in one document.
//
// Metrics is safe for concurrent use. A nil *Metrics discards everything.
type Metrics struct {
	w         io.Writer
	namespace string
	dims      map[string]string
	now       func() time.Time

	mu     sync.Mutex
	groups map[string]*metricGroup // keyed by dimsKey of the extra dimensions
	errs   []error                 // invalid recordings, reported by the next Flush
}

// metricGroup holds the values recorded under one dimension set.
type metricGroup struct {
	dims    map[string]string // base and extra dimensions merged
	metrics map[string]*metricValues
}

// metricValues holds the values recorded for one metric name.
type metricValues struct {
	unit   string
	values []float64
}

// NewMetrics returns a Metrics that writes EMF documents for the CloudWatch
// namespace to w. dims are the dimensions of every metric, for example
// {"Cluster": "c1", "Function": "launch"}; the map is copied.
func NewMetrics(w io.Writer, namespace string, dims map[string]string) *Metrics {
	return &Metrics{
		w:         w,
		namespace: namespace,
		dims:      maps.Clone(dims),
		now:       time.Now,
		groups:    map[string]*metricGroup{},
	}
}

// Count records v (unit Count) for the metric name. extra are key, value
// pairs of additional dimensions; they override a base dimension of the same
// key. Invalid input (odd extra, empty dimension, NaN, ...) is dropped and
// reported by the next Flush.
func (m *Metrics) Count(name string, v float64, extra ...string) {
	m.record(name, unitCount, v, extra)
}

// Duration records d in milliseconds (unit Milliseconds) for the metric name,
// with extra dimensions as for Count.
func (m *Metrics) Duration(name string, d time.Duration, extra ...string) {
	m.record(name, unitMilliseconds, float64(d)/float64(time.Millisecond), extra)
}

func (m *Metrics) record(name, unit string, v float64, extra []string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()

	switch {
	case name == "" || name == "_aws":
		m.reject(name, "invalid metric name")
		return
	case math.IsNaN(v) || math.IsInf(v, 0):
		m.reject(name, "value %v is not a finite number", v)
		return
	case len(extra)%2 != 0:
		m.reject(name, "odd number of extra dimension arguments %q", extra)
		return
	}

	key := dimsKey(extra)
	g := m.groups[key]
	if g == nil {
		dims := maps.Clone(m.dims)
		if dims == nil {
			dims = map[string]string{}
		}
		for i := 0; i < len(extra); i += 2 {
			dims[extra[i]] = extra[i+1]
		}
		if err := checkDims(dims); err != nil {
			m.reject(name, "%w", err)
			return
		}
		g = &metricGroup{dims: dims, metrics: map[string]*metricValues{}}
		m.groups[key] = g
	}
	if _, clash := g.dims[name]; clash {
		m.reject(name, "name is also a dimension name")
		return
	}
	mv := g.metrics[name]
	if mv == nil {
		mv = &metricValues{unit: unit}
		g.metrics[name] = mv
	}
	if mv.unit != unit {
		m.reject(name, "recorded with unit %s, earlier with %s", unit, mv.unit)
		return
	}
	mv.values = append(mv.values, v)
}

// reject records why a value of the metric name was dropped. m.mu must be held.
func (m *Metrics) reject(name, format string, args ...any) {
	m.errs = append(m.errs, fmt.Errorf("metric %q: "+format, append([]any{name}, args...)...))
}

// dimsKey returns a canonical key for a list of extra dimension pairs, so
// that the same dimensions given in any order land in the same group.
func dimsKey(extra []string) string {
	switch len(extra) {
	case 0:
		return ""
	case 2:
		return extra[0] + "\x00" + extra[1]
	}
	pairs := make([]string, 0, len(extra)/2)
	for i := 0; i < len(extra); i += 2 {
		pairs = append(pairs, extra[i]+"\x00"+extra[i+1])
	}
	sort.Strings(pairs)
	return strings.Join(pairs, "\x01")
}

// checkDims rejects dimension sets CloudWatch would not accept.
func checkDims(dims map[string]string) error {
	if len(dims) > maxDimensions {
		return fmt.Errorf("%d dimensions, CloudWatch allows %d", len(dims), maxDimensions)
	}
	for k, v := range dims {
		if k == "" || v == "" {
			return fmt.Errorf("dimension %q=%q: names and values must not be empty", k, v)
		}
	}
	return nil
}

// Flush writes everything recorded since the last Flush, one EMF document
// per distinct dimension set (split further only where EMF limits of 100
// metrics per document or 100 values per metric require it), and resets.
// It writes nothing when nothing was recorded. It returns write errors and
// the invalid recordings that were dropped. Call it before each invocation
// returns, so metrics are not lost when the execution environment is frozen.
func (m *Metrics) Flush() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()

	groups, errs := m.groups, m.errs
	m.groups, m.errs = map[string]*metricGroup{}, nil

	ts := m.now().UnixMilli()
	for _, key := range slices.Sorted(maps.Keys(groups)) {
		for _, doc := range groups[key].documents(m.namespace, ts) {
			line, err := json.Marshal(doc)
			if err != nil {
				errs = append(errs, fmt.Errorf("encoding EMF document: %w", err))
				continue
			}
			if _, err := m.w.Write(append(line, '\n')); err != nil {
				return errors.Join(append(errs, fmt.Errorf("writing EMF document: %w", err))...)
			}
		}
	}
	return errors.Join(errs...)
}

// emfMetadata is the "_aws" member of an EMF document.
type emfMetadata struct {
	Timestamp         int64          `json:"Timestamp"` // milliseconds since the epoch
	CloudWatchMetrics []emfDirective `json:"CloudWatchMetrics"`
}

// emfDirective tells CloudWatch which members of the document are metrics
// and which are their dimensions.
type emfDirective struct {
	Namespace  string      `json:"Namespace"`
	Dimensions [][]string  `json:"Dimensions"`
	Metrics    []emfMetric `json:"Metrics"`
}

// emfMetric declares one metric of the document.
type emfMetric struct {
	Name string `json:"Name"`
	Unit string `json:"Unit"`
}

// documents renders the group as EMF documents: dimension values and metric
// values are top-level members, a metric with several values an array.
func (g *metricGroup) documents(namespace string, ts int64) []map[string]any {
	dimKeys := slices.Sorted(maps.Keys(g.dims))
	if dimKeys == nil {
		dimKeys = []string{} // "Dimensions": [[]] publishes without dimensions
	}
	names := slices.Sorted(maps.Keys(g.metrics))

	var docs []map[string]any
	for batch := range slices.Chunk(names, maxMetricsPerDoc) {
		for off := 0; ; off += maxValuesPerMetric {
			doc := map[string]any{}
			var defs []emfMetric
			for _, name := range batch {
				mv := g.metrics[name]
				if off >= len(mv.values) {
					continue
				}
				vals := mv.values[off:min(len(mv.values), off+maxValuesPerMetric)]
				defs = append(defs, emfMetric{Name: name, Unit: mv.unit})
				if len(vals) == 1 {
					doc[name] = vals[0]
				} else {
					doc[name] = vals
				}
			}
			if len(defs) == 0 {
				break
			}
			for k, v := range g.dims {
				doc[k] = v
			}
			doc["_aws"] = emfMetadata{
				Timestamp: ts,
				CloudWatchMetrics: []emfDirective{{
					Namespace:  namespace,
					Dimensions: [][]string{dimKeys},
					Metrics:    defs,
				}},
			}
			docs = append(docs, doc)
		}
	}
	return docs
}
