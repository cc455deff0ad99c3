package obs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-xray-sdk-go/v2/strategy/ctxmissing"
	"github.com/aws/aws-xray-sdk-go/v2/strategy/sampling"
	"github.com/aws/aws-xray-sdk-go/v2/xray"
	"github.com/aws/aws-xray-sdk-go/v2/xraylog"

	"github.com/slotkeeper/slotkeeper/test/harness"
)

// restoreXRay registers a cleanup that puts the X-Ray SDK's global state
// back to what it is at start-up. Call it before t.Setenv, so that it runs
// after the environment is restored: xray.Configure then prefers
// AWS_XRAY_DAEMON_ADDRESS and AWS_XRAY_CONTEXT_MISSING when they are set,
// exactly as the SDK does when it initialises.
func restoreXRay(t *testing.T) {
	t.Cleanup(func() {
		err := xray.Configure(xray.Config{
			DaemonAddr:             "127.0.0.1:2000",
			ContextMissingStrategy: ctxmissing.NewDefaultLogErrorStrategy(),
		})
		if err != nil {
			t.Errorf("restoring X-Ray configuration: %v", err)
		}
		xray.SetLogger(xraylog.NewDefaultLogger(os.Stdout, xraylog.LogLevelInfo))
	})
}

// captureXRayLog sends the SDK's own warnings and errors to a buffer.
func captureXRayLog(t *testing.T) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	xray.SetLogger(xraylog.NewDefaultLogger(&buf, xraylog.LogLevelWarn))
	return &buf
}

func TestConfigureTracingContextMissing(t *testing.T) {
	tests := []struct {
		name        string
		env         map[string]string
		wantErr     bool
		wantPanic   bool
		wantXRayLog string // substring of the SDK's log, "" for an empty log
	}{
		{name: "unset ignores", env: map[string]string{"AWS_XRAY_CONTEXT_MISSING": ""}},
		{name: "IGNORE_ERROR", env: map[string]string{"AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR"}},
		{name: "LOG_ERROR logs", env: map[string]string{"AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR"}, wantXRayLog: "segment cannot be found"},
		{name: "RUNTIME_ERROR panics", env: map[string]string{"AWS_XRAY_CONTEXT_MISSING": "RUNTIME_ERROR"}, wantPanic: true},
		{name: "invalid value", env: map[string]string{"AWS_XRAY_CONTEXT_MISSING": "SOMETIMES"}, wantErr: true},
		{name: "SDK disabled", env: map[string]string{"AWS_XRAY_SDK_DISABLED": "true", "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			restoreXRay(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			xrayLog := captureXRayLog(t)

			err := ConfigureTracing()
			if (err != nil) != tt.wantErr {
				t.Fatalf("ConfigureTracing() error = %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}

			// A step outside any segment, as in a local run.
			o := &Obs{Log: NewLogger(io.Discard, slog.LevelInfo)}
			ran := false
			panicked := func() (p bool) {
				defer func() { p = recover() != nil }()
				if err := o.Step(context.Background(), "local", func(context.Context) error {
					ran = true
					return nil
				}); err != nil {
					t.Errorf("Step() error = %v", err)
				}
				return false
			}()

			if panicked != tt.wantPanic {
				t.Fatalf("Step panicked = %v, want %v", panicked, tt.wantPanic)
			}
			if !tt.wantPanic && !ran {
				t.Error("Step did not run fn")
			}
			got := xrayLog.String()
			if tt.wantXRayLog == "" && got != "" {
				t.Errorf("X-Ray log = %q, want it empty", got)
			}
			if !strings.Contains(got, tt.wantXRayLog) {
				t.Errorf("X-Ray log = %q, want it to contain %q", got, tt.wantXRayLog)
			}
		})
	}
}

// traceDoc is the part of an X-Ray segment or subsegment document the test
// looks at.
type traceDoc struct {
	Name        string         `json:"name"`
	ID          string         `json:"id"`
	TraceID     string         `json:"trace_id"`
	ParentID    string         `json:"parent_id"`
	Namespace   string         `json:"namespace"`
	AWS         map[string]any `json:"aws"`
	Fault       bool           `json:"fault"`
	Error       bool           `json:"error"`
	Subsegments []traceDoc     `json:"subsegments"`

	parent string // id of the enclosing (sub)segment
}

// flatten lists doc and its nested subsegments with their parent: the
// enclosing document for a nested subsegment (whose parent_id the SDK sets to
// the segment's id, whatever the nesting), parent_id for a streamed one.
func flatten(doc traceDoc) []traceDoc {
	if doc.parent == "" {
		doc.parent = doc.ParentID
	}
	out := []traceDoc{doc}
	for _, sub := range doc.Subsegments {
		sub.parent = doc.ID
		out = append(out, flatten(sub)...)
	}
	return out
}

// readTraces collects the documents arriving on conn until done reports
// that it has what it needs or the deadline passes. Each datagram must be
// the daemon protocol's JSON header line followed by one document.
func readTraces(t *testing.T, conn *net.UDPConn, wait time.Duration, done func([]traceDoc) bool) []traceDoc {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatalf("setting read deadline: %v", err)
	}
	var docs []traceDoc
	buf := make([]byte, 64<<10)
	for !done(docs) {
		n, err := conn.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return docs
		}
		if err != nil {
			t.Fatalf("reading from UDP listener: %v", err)
		}
		head, body, ok := bytes.Cut(buf[:n], []byte("\n"))
		var h struct {
			Format  string `json:"format"`
			Version int    `json:"version"`
		}
		if !ok || json.Unmarshal(head, &h) != nil || h.Format != "json" || h.Version != 1 {
			t.Fatalf("datagram %q lacks the daemon header line", buf[:n])
		}
		var doc traceDoc
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatalf("datagram body %q is not a segment document: %v", body, err)
		}
		docs = append(docs, flatten(doc)...)
	}
	return docs
}

// findDoc returns the first document named name, or nil.
func findDoc(docs []traceDoc, name string) *traceDoc {
	for i := range docs {
		if docs[i].Name == name {
			return &docs[i]
		}
	}
	return nil
}

// TestStepTracesToDaemon runs a step making a real instrumented AWS call
// against moto (through test/harness) and checks what reaches a UDP listener standing in for the
// X-Ray daemon: the segment, the step's subsegment under it, and the AWS
// call's subsegment under the step.
func TestStepTracesToDaemon(t *testing.T) {
	h := harness.Start(t) // moto behind the test harness's proxy

	tests := []struct {
		name       string
		disabled   bool
		call       func(context.Context, *dynamodb.Client) error
		wantOp     string
		wantFailed bool // the step and the call fail, and their subsegments say so
	}{
		{
			name: "traced",
			call: func(ctx context.Context, db *dynamodb.Client) error {
				_, err := db.ListTables(ctx, &dynamodb.ListTablesInput{})
				return err
			},
			wantOp: "ListTables",
		},
		{
			name: "failed call traced as failed",
			call: func(ctx context.Context, db *dynamodb.Client) error {
				_, err := db.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String("missing")})
				return err
			},
			wantOp:     "DescribeTable",
			wantFailed: true,
		},
		{
			name:     "SDK disabled sends nothing",
			disabled: true,
			call: func(ctx context.Context, db *dynamodb.Client) error {
				_, err := db.ListTables(ctx, &dynamodb.ListTablesInput{})
				return err
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			restoreXRay(t)
			daemon, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatalf("listening on UDP: %v", err)
			}
			t.Cleanup(func() { daemon.Close() })
			t.Setenv("AWS_XRAY_DAEMON_ADDRESS", daemon.LocalAddr().String())
			t.Setenv("AWS_XRAY_CONTEXT_MISSING", "")
			t.Setenv("AWS_XRAY_SDK_DISABLED", fmt.Sprint(tt.disabled))
			if err := ConfigureTracing(); err != nil {
				t.Fatalf("ConfigureTracing() error = %v", err)
			}

			cfg := h.AWSConfig()
			InstrumentAWS(&cfg)
			db := dynamodb.NewFromConfig(cfg)

			// Sample every segment (the default keeps one a second) through a
			// per-context configuration, leaving the global one alone.
			all, err := sampling.NewLocalizedStrategyFromJSONBytes([]byte(`{"version": 2, "default": {"fixed_target": 1, "rate": 1.0}}`))
			if err != nil {
				t.Fatalf("building sampling strategy: %v", err)
			}
			ctx, err := xray.ContextWithConfig(context.Background(), xray.Config{SamplingStrategy: all})
			if err != nil {
				t.Fatalf("xray.ContextWithConfig: %v", err)
			}
			ctx, seg := xray.BeginSegment(ctx, "slotkeeper-test")
			o := &Obs{Log: NewLogger(io.Discard, slog.LevelDebug), Metrics: NewMetrics(io.Discard, testNamespace, nil)}
			err = o.Step(ctx, "claim", func(ctx context.Context) error { return tt.call(ctx, db) })
			seg.Close(nil)
			if (err != nil) != tt.wantFailed {
				t.Fatalf("Step(claim) error = %v, want error %v", err, tt.wantFailed)
			}

			if tt.disabled {
				if docs := readTraces(t, daemon, 300*time.Millisecond, func([]traceDoc) bool { return false }); len(docs) != 0 {
					t.Errorf("disabled SDK sent %+v", docs)
				}
				return
			}

			// The segment is sent when it closes, after any subsegment
			// streamed on its own, so its arrival means everything is in.
			docs := readTraces(t, daemon, 5*time.Second, func(docs []traceDoc) bool {
				return findDoc(docs, "slotkeeper-test") != nil
			})
			root, claim, call := findDoc(docs, "slotkeeper-test"), findDoc(docs, "claim"), findDoc(docs, "DynamoDB")
			if root == nil || claim == nil || call == nil {
				t.Fatalf("got documents %+v, want segment slotkeeper-test with subsegments claim and DynamoDB", docs)
			}
			if root.TraceID == "" || root.ID == "" || root.parent != "" {
				t.Errorf("segment %+v: want a root segment with trace id and id", root)
			}
			if claim.parent != root.ID || claim.TraceID != root.TraceID {
				t.Errorf("claim subsegment %+v: want a child of segment %s", claim, root.ID)
			}
			if call.parent != claim.ID || call.Namespace != "aws" || call.AWS["operation"] != tt.wantOp {
				t.Errorf("AWS call subsegment %+v: want namespace aws, operation %s, child of claim %s", call, tt.wantOp, claim.ID)
			}
			if failed := claim.Fault || claim.Error; failed != tt.wantFailed {
				t.Errorf("claim subsegment failed = %v, want %v", failed, tt.wantFailed)
			}
			if failed := call.Fault || call.Error; failed != tt.wantFailed {
				t.Errorf("AWS call subsegment failed = %v, want %v", failed, tt.wantFailed)
			}
		})
	}
}
