// Package remote runs shell commands on broker instances through SSM Run Command and
// waits, within a bound, for their result.
package remote

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// ErrFailed means the command ran and did not succeed (non-zero exit, cancelled,
// timed out on the instance, or the instance was unreachable).
var ErrFailed = errors.New("remote command failed")

// ErrNoResult means the command was sent but its result was not known within the
// Runner's Timeout.
var ErrNoResult = errors.New("no result in time")

// Runner runs commands on instances.
type Runner struct {
	SSM awsapi.SSM
	// Timeout bounds the wait for a command's result.
	Timeout time.Duration
	// Poll is the first interval between result checks; it backs off to 10 s.
	Poll time.Duration
}

// Result is the outcome of one command.
type Result struct {
	CommandID, Status, Stdout, Stderr string
	ExitCode                          int32
}

// Run sends commands (run by /bin/sh as one script) to instance and waits for their
// result. It returns ErrFailed (wrapped, with the output) when the command did not
// succeed, and a plain error when the result could not be learnt in time.
func (r *Runner) Run(ctx context.Context, instance, comment string, commands []string) (Result, error) {
	out, err := r.SSM.SendCommand(ctx, &ssm.SendCommandInput{
		DocumentName:   aws.String("AWS-RunShellScript"),
		InstanceIds:    []string{instance},
		Comment:        aws.String(truncate(comment, 100)),
		Parameters:     map[string][]string{"commands": commands},
		TimeoutSeconds: aws.Int32(int32(max(r.Timeout/time.Second, 30))),
	})
	if err != nil {
		return Result{}, fmt.Errorf("sending %q to %s: %w", comment, instance, err)
	}
	id := aws.ToString(out.Command.CommandId)
	deadline := time.Now().Add(r.Timeout)
	delay := max(r.Poll, 10*time.Millisecond)
	for {
		inv, err := r.SSM.GetCommandInvocation(ctx, &ssm.GetCommandInvocationInput{CommandId: &id, InstanceId: &instance})
		if err != nil && awsapi.Code(err) != "InvocationDoesNotExist" { // not registered yet: keep waiting
			return Result{CommandID: id}, fmt.Errorf("reading result of command %s on %s: %w", id, instance, err)
		}
		if err == nil {
			res := Result{
				CommandID: id, Status: string(inv.Status), ExitCode: inv.ResponseCode,
				Stdout: aws.ToString(inv.StandardOutputContent), Stderr: aws.ToString(inv.StandardErrorContent),
			}
			switch inv.Status {
			case types.CommandInvocationStatusSuccess:
				return res, nil
			case types.CommandInvocationStatusFailed, types.CommandInvocationStatusCancelled,
				types.CommandInvocationStatusTimedOut, types.CommandInvocationStatusCancelling:
				return res, fmt.Errorf("%q on %s: status %s, exit %d, stderr %q: %w", comment, instance, res.Status, res.ExitCode, truncate(res.Stderr, 500), ErrFailed)
			}
		}
		if time.Now().After(deadline) {
			return Result{CommandID: id}, fmt.Errorf("%q on %s: %w within %s", comment, instance, ErrNoResult, r.Timeout)
		}
		select {
		case <-ctx.Done():
			return Result{CommandID: id}, fmt.Errorf("waiting for %q on %s: %w", comment, instance, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Second)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
