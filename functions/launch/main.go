// Command launch is the Lambda function that turns a newly launched instance into a
// slot's broker. It only wires configuration, clients and the handler; the logic lives
// in shared/launch.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/obs"
)

func main() {
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		fail(err)
	}
	if err := obs.ConfigureTracing(); err != nil {
		fail(err)
	}
	awsCfg, err := awsapi.LoadConfig(context.Background(), obs.InstrumentAWS)
	if err != nil {
		fail(err)
	}
	log := obs.NewLogger(os.Stdout, cfg.LogLevel)
	h := launch.New(cfg, ec2.NewFromConfig(awsCfg), autoscaling.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg), log, os.Stdout)
	lambda.Start(h)
}

// fail reports a cold-start error in the Lambda log and exits; Lambda reports the
// init failure and retries the event later.
func fail(err error) {
	slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error("launch function cannot start", "error", err.Error())
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
