// Package app is the cold start every function shares: configuration, tracing, AWS
// configuration and the logger. A problem at cold start is logged and ends the
// process; Lambda reports the init failure and retries the event later.
package app

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/obs"
)

// Init loads and validates the configuration from the environment, configures X-Ray,
// loads the instrumented AWS configuration and returns them with a JSON logger. It
// exits the process when any of that fails.
func Init(function string) (config.Config, aws.Config, *slog.Logger) {
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		Fail(function, err)
	}
	if err := obs.ConfigureTracing(); err != nil {
		Fail(function, err)
	}
	awsCfg, err := awsapi.LoadConfig(context.Background(), obs.InstrumentAWS)
	if err != nil {
		Fail(function, err)
	}
	return cfg, awsCfg, obs.NewLogger(os.Stdout, cfg.LogLevel)
}

// Fail logs a cold-start error as JSON and in plain text, and exits.
func Fail(function string, err error) {
	slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error(function+" function cannot start", obs.KeyFunction, function, obs.KeyErr, err.Error())
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// Respond turns a handler's result into the Lambda response: the result as JSON, or
// the error, which makes Lambda deliver the event again. Every function's Invoke is
// `return app.Respond(h.Run(ctx, payload))`.
func Respond[R any](res R, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	return json.Marshal(res)
}
