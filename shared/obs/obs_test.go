package obs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"
)

type ctxKey struct{}

func TestStep(t *testing.T) {
	// Tracing has its own tests; here only logs and metrics matter.
	t.Setenv("AWS_XRAY_SDK_DISABLED", "true")
	errLeaseLost := errors.New("lease lost")

	tests := []struct {
		name      string
		fnErr     error
		wantLevel string
		wantMsg   string
		wantOut   string
	}{
		{name: "success", wantLevel: "INFO", wantMsg: "step done", wantOut: OutcomeOK},
		{name: "failure", fnErr: fmt.Errorf("claiming slot 2: %w", errLeaseLost), wantLevel: "WARN", wantMsg: "step failed", wantOut: OutcomeFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs, emf bytes.Buffer
			o := (&Obs{
				Log:     NewLogger(&logs, slog.LevelDebug),
				Metrics: NewMetrics(&emf, testNamespace, map[string]string{"Function": "launch"}),
			}).With(KeySlot, 2)

			ctx := context.WithValue(context.Background(), ctxKey{}, "v")
			const pause = 5 * time.Millisecond
			err := o.Step(ctx, "claim", func(ctx context.Context) error {
				if ctx.Value(ctxKey{}) != "v" {
					t.Error("fn's context does not derive from Step's")
				}
				time.Sleep(pause)
				return tt.fnErr
			})
			if !errors.Is(err, tt.fnErr) {
				t.Errorf("Step() error = %v, want fn's error %v unchanged", err, tt.fnErr)
			}

			recs := logLines(t, &logs)
			if len(recs) != 2 {
				t.Fatalf("got %d log records, want start and end: %s", len(recs), logs.String())
			}
			start, end := recs[0], recs[1]
			if start["level"] != "DEBUG" || start["message"] != "step start" || start[KeyStep] != "claim" || start[KeySlot] != 2.0 {
				t.Errorf("start record %v: want debug \"step start\" with step claim and slot 2", start)
			}
			if end["level"] != tt.wantLevel || end["message"] != tt.wantMsg || end[KeyStep] != "claim" ||
				end[KeySlot] != 2.0 || end[KeyOutcome] != tt.wantOut {
				t.Errorf("end record %v: want %s %q with step claim, slot 2, outcome %s", end, tt.wantLevel, tt.wantMsg, tt.wantOut)
			}
			if ms, _ := end[KeyDurationMS].(float64); ms < float64(pause.Milliseconds()) {
				t.Errorf("end record %s = %v, want at least %d", KeyDurationMS, end[KeyDurationMS], pause.Milliseconds())
			}
			wantErrField := any(nil)
			if tt.fnErr != nil {
				wantErrField = tt.fnErr.Error()
			}
			if end[KeyErr] != wantErrField {
				t.Errorf("end record %s = %v, want %v", KeyErr, end[KeyErr], wantErrField)
			}

			if err := o.Metrics.Flush(); err != nil {
				t.Fatalf("Flush() error = %v", err)
			}
			docs := parseEMF(t, emf.String(), time.Time{}, time.Now())
			if len(docs) != 1 {
				t.Fatalf("got %d EMF documents, want 1: %s", len(docs), emf.String())
			}
			d := docs[0]
			sd := d.Metrics["StepDuration"]
			if d.Dims["Step"] != "claim" || d.Dims["Function"] != "launch" || sd.Unit != "Milliseconds" ||
				len(sd.Values) != 1 || sd.Values[0] < float64(pause.Milliseconds()) {
				t.Errorf("EMF document %+v: want StepDuration >= %v ms with Step=claim, Function=launch", d, pause.Milliseconds())
			}
		})
	}
}

func TestWithKeepsOriginal(t *testing.T) {
	var logs bytes.Buffer
	m := NewMetrics(&bytes.Buffer{}, testNamespace, nil)
	o := &Obs{Log: NewLogger(&logs, slog.LevelInfo), Metrics: m}

	w := o.With(KeyInstance, "i-1")
	if w.Metrics != m {
		t.Error("With returned a copy with different Metrics")
	}
	w.Log.Info("with")
	o.Log.Info("original")
	recs := logLines(t, &logs)
	if len(recs) != 2 || recs[0][KeyInstance] != "i-1" || recs[1][KeyInstance] != nil {
		t.Errorf("records %v: want instance only on the With logger's record", recs)
	}
}
