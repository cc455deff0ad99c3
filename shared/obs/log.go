package obs

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/aws/aws-lambda-go/lambdacontext"
)

// Field names used in log records. They are part of the operational contract:
// dashboards and Logs Insights queries filter on them, so keep them stable.
const (
	KeyCluster      = "cluster"       // cluster name
	KeySlot         = "slot"          // slot number
	KeyInstance     = "instance"      // EC2 instance id
	KeyLeaseVersion = "lease_version" // lease fencing token
	KeyStep         = "step"          // name of the step (see Obs.Step)
	KeyOutcome      = "outcome"       // result of a step or an invocation
	KeyReason       = "reason"        // why a decision was taken
	KeyFunction     = "function"      // Lambda function role: launch, terminate, ...
	KeyDurationMS   = "duration_ms"   // elapsed time in milliseconds
	KeyErr          = "error"         // error text
	KeyEvent        = "event_id"      // id of the triggering event
)

// requestIDKey is the field lambdacontext's own handler uses for the request id.
const requestIDKey = "requestId"

// NewLogger returns a JSON logger writing to w that drops records below level.
// Field names follow the Lambda JSON log format ("timestamp", "message",
// "level"), and every record logged with a context that carries a Lambda
// invocation (lambdacontext.FromContext) gets "requestId".
//
// lambdacontext.NewLogHandler does the same but always writes to stdout and
// reads its level from the environment, so this wraps a slog.JSONHandler
// instead, to keep the writer and the level injectable.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level:       level,
		ReplaceAttr: lambdacontext.ReplaceAttr,
	})
	return slog.New(requestIDHandler{h})
}

// requestIDHandler adds the Lambda request id, if any, to each record.
// Like lambdacontext's handler, it adds it as a record attribute, so after
// Logger.WithGroup it lands inside the group.
type requestIDHandler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if lc, ok := lambdacontext.FromContext(ctx); ok {
		r.AddAttrs(slog.String(requestIDKey, lc.AwsRequestID))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler.
func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}

// ParseLevel parses a log level name, case-insensitively. It accepts slog's
// names ("debug", "info", "warn", "error", with optional offsets such as
// "info+2") and the extra names Lambda's AWS_LAMBDA_LOG_LEVEL can hold:
// "trace" (below debug) and "fatal" (above error). The empty string means info.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "":
		return slog.LevelInfo, nil
	case "TRACE":
		return slog.LevelDebug - 4, nil
	case "FATAL":
		return slog.LevelError + 4, nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return 0, fmt.Errorf("parsing log level %q: %w", s, err)
	}
	return l, nil
}
