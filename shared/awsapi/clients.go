package awsapi

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
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
