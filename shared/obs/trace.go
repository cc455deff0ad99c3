package obs

import (
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-xray-sdk-go/v2/instrumentation/awsv2"
	"github.com/aws/aws-xray-sdk-go/v2/strategy/ctxmissing"
	"github.com/aws/aws-xray-sdk-go/v2/xray"
)

// envContextMissing selects what the X-Ray SDK does when code asks for a
// segment and the context has none: RUNTIME_ERROR, LOG_ERROR or IGNORE_ERROR.
const envContextMissing = "AWS_XRAY_CONTEXT_MISSING"

// InstrumentAWS makes every client built from cfg record each AWS call as an
// X-Ray subsegment (namespace "aws", with service, operation and request id)
// of the segment in the call's context, and propagate the trace header.
func InstrumentAWS(cfg *aws.Config) {
	awsv2.AWSV2Instrumentor(&cfg.APIOptions)
}

// ConfigureTracing configures the X-Ray SDK from the environment. Call it
// once at cold start.
//
//   - AWS_XRAY_SDK_DISABLED=true: the SDK records nothing; nothing to do.
//   - AWS_XRAY_DAEMON_ADDRESS: where segments are sent (UDP); re-read here.
//   - AWS_XRAY_CONTEXT_MISSING: used when set; when unset, missing segments
//     are ignored instead of the SDK's default of logging an error, so local
//     runs and tests outside a traced invocation stay quiet and never panic.
//
// It returns an error for an invalid AWS_XRAY_CONTEXT_MISSING or daemon address.
func ConfigureTracing() error {
	if xray.SdkDisabled() {
		return nil
	}
	var cfg xray.Config
	switch v := os.Getenv(envContextMissing); v {
	case "":
		cfg.ContextMissingStrategy = ctxmissing.NewDefaultIgnoreErrorStrategy()
	case ctxmissing.RuntimeErrorStrategy, ctxmissing.LogErrorStrategy, ctxmissing.IgnoreErrorStrategy:
		// xray.Configure applies the variable itself.
	default:
		return fmt.Errorf("%s=%q: want %s, %s or %s", envContextMissing, v,
			ctxmissing.RuntimeErrorStrategy, ctxmissing.LogErrorStrategy, ctxmissing.IgnoreErrorStrategy)
	}
	// With an empty DaemonAddr, xray.Configure takes AWS_XRAY_DAEMON_ADDRESS
	// when it is set and otherwise keeps the current address.
	if err := xray.Configure(cfg); err != nil {
		return fmt.Errorf("configuring X-Ray: %w", err)
	}
	return nil
}
