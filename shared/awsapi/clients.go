package awsapi

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/schemas"
	"github.com/aws/smithy-go/transport/http/protocol/awsquery"
)

// LoadConfig returns the AWS configuration every function uses: the default credential
// and region chain (AWS_ENDPOINT_URL is honoured, so the same binary runs against a
// local emulator), a standard retryer with jittered exponential backoff that outlasts
// EC2's per-account throttling, and instrument applied (X-Ray in the functions).
func LoadConfig(ctx context.Context, instrument func(*aws.Config)) (aws.Config, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRetryer(func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 8
			o.MaxBackoff = 20 * time.Second
		})
	}))
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading AWS configuration: %w", err)
	}
	if instrument != nil {
		instrument(&cfg)
	}
	return cfg, nil
}

// NewCloudWatch returns a CloudWatch client. The SDK speaks Smithy RPC v2 CBOR to
// CloudWatch; local emulators (moto) speak only the older awsquery protocol, so when
// an endpoint override is set the client is switched to awsquery, which AWS also
// still serves.
func NewCloudWatch(cfg aws.Config) *cloudwatch.Client {
	return cloudwatch.NewFromConfig(cfg, func(o *cloudwatch.Options) {
		if cfg.BaseEndpoint != nil || os.Getenv("AWS_ENDPOINT_URL") != "" || os.Getenv("AWS_ENDPOINT_URL_CLOUDWATCH") != "" {
			o.Protocol = awsquery.New(schemas.GraniteServiceVersion20100801)
		}
	})
}
