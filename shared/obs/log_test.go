package obs

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/aws/aws-lambda-go/lambdacontext"
)

// logLines decodes each line written by a JSON logger.
func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

func TestNewLogger(t *testing.T) {
	lambdaCtx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{AwsRequestID: "req-1"})

	tests := []struct {
		name      string
		ctx       context.Context
		level     slog.Level
		log       func(context.Context, *slog.Logger)
		wantLevel string // "" means no record
		wantReqID string // "" means no requestId field
	}{
		{
			name:  "request id from Lambda context",
			ctx:   lambdaCtx,
			level: slog.LevelInfo,
			log: func(ctx context.Context, l *slog.Logger) {
				l.InfoContext(ctx, "hello", KeySlot, 3)
			},
			wantLevel: "INFO",
			wantReqID: "req-1",
		},
		{
			name:  "no Lambda context",
			ctx:   context.Background(),
			level: slog.LevelInfo,
			log: func(ctx context.Context, l *slog.Logger) {
				l.WarnContext(ctx, "hello", KeySlot, 3)
			},
			wantLevel: "WARN",
		},
		{
			name:  "request id survives With",
			ctx:   lambdaCtx,
			level: slog.LevelDebug,
			log: func(ctx context.Context, l *slog.Logger) {
				l.With(KeySlot, 3).DebugContext(ctx, "hello")
			},
			wantLevel: "DEBUG",
			wantReqID: "req-1",
		},
		{
			name:  "below level is dropped",
			ctx:   lambdaCtx,
			level: slog.LevelInfo,
			log: func(ctx context.Context, l *slog.Logger) {
				l.DebugContext(ctx, "hello", KeySlot, 3)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			tt.log(tt.ctx, NewLogger(&buf, tt.level))
			recs := logLines(t, &buf)

			if tt.wantLevel == "" {
				if len(recs) != 0 {
					t.Fatalf("got records %v, want none", recs)
				}
				return
			}
			if len(recs) != 1 {
				t.Fatalf("got %d records, want 1: %s", len(recs), buf.String())
			}
			rec := recs[0]
			if rec["level"] != tt.wantLevel || rec["message"] != "hello" || rec[KeySlot] != 3.0 {
				t.Errorf("record %v: want level %s, message hello, slot 3", rec, tt.wantLevel)
			}
			if _, ok := rec["timestamp"]; !ok {
				t.Errorf("record %v has no timestamp", rec)
			}
			got, has := rec["requestId"]
			switch {
			case tt.wantReqID == "" && has:
				t.Errorf("requestId = %v, want none", got)
			case tt.wantReqID != "" && got != tt.wantReqID:
				t.Errorf("requestId = %v, want %s", got, tt.wantReqID)
			}
		})
	}
}

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in      string
		want    slog.Level
		wantErr bool
	}{
		{in: "", want: slog.LevelInfo},
		{in: "debug", want: slog.LevelDebug},
		{in: "INFO", want: slog.LevelInfo},
		{in: " Warn ", want: slog.LevelWarn},
		{in: "error", want: slog.LevelError},
		{in: "info+2", want: slog.LevelInfo + 2},
		{in: "TRACE", want: slog.LevelDebug - 4},
		{in: "fatal", want: slog.LevelError + 4},
		{in: "verbose", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseLevel(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseLevel(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.want {
				t.Errorf("ParseLevel(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}
