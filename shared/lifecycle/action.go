package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/autoscaling"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// Results of a lifecycle action.
const (
	Continue = "CONTINUE"
	Abandon  = "ABANDON"
)

// Actions completes and extends one lifecycle action.
type Actions struct {
	API    awsapi.AutoScaling
	Action Action
	Log    *slog.Logger
}

// Complete ends the lifecycle action with result. An action that is no longer pending
// (an earlier delivery of this event completed it, or it timed out) is not an error:
// there is nothing left to complete, and done is false.
func (a *Actions) Complete(ctx context.Context, result string) (done bool, err error) {
	_, err = a.API.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName:  &a.Action.AutoScalingGroupName,
		LifecycleHookName:     &a.Action.LifecycleHookName,
		InstanceId:            &a.Action.EC2InstanceID,
		LifecycleActionToken:  &a.Action.LifecycleActionToken,
		LifecycleActionResult: &result,
	})
	if awsapi.IsNoActiveLifecycleAction(err) {
		a.Log.InfoContext(ctx, "lifecycle action already completed or expired", "result", result, "error", err.Error())
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("completing lifecycle action of %s with %s: %w", a.Action.EC2InstanceID, result, err)
	}
	return true, nil
}

// Heartbeat extends the lifecycle action by the hook's heartbeat timeout.
func (a *Actions) Heartbeat(ctx context.Context) error {
	_, err := a.API.RecordLifecycleActionHeartbeat(ctx, &autoscaling.RecordLifecycleActionHeartbeatInput{
		AutoScalingGroupName: &a.Action.AutoScalingGroupName,
		LifecycleHookName:    &a.Action.LifecycleHookName,
		InstanceId:           &a.Action.EC2InstanceID,
		LifecycleActionToken: &a.Action.LifecycleActionToken,
	})
	if err != nil {
		return fmt.Errorf("recording heartbeat for %s: %w", a.Action.EC2InstanceID, err)
	}
	return nil
}

// ErrNotActive means the lifecycle action is no longer pending: it was completed (by
// an earlier delivery of the same event) or it expired (the hook's heartbeat timeout
// passed; Lambda keeps async events up to an hour, longer than the hook waits).
var ErrNotActive = errors.New("the lifecycle action is no longer active")

// Active records a heartbeat and reports whether the action is still pending. It is
// the first thing a handler does with an event it may act on: an action that is no
// longer active returns ErrNotActive, and the event must change nothing (the
// instance's fate has been decided without us). Any other error is returned as is.
func (a *Actions) Active(ctx context.Context) error {
	err := a.Heartbeat(ctx)
	if awsapi.IsNoActiveLifecycleAction(err) {
		return fmt.Errorf("%w: %w", ErrNotActive, err)
	}
	return err
}

// KeepAlive sends a heartbeat every interval until the returned stop function is
// called. Heartbeat failures are logged, not fatal: the wait they protect has its own
// bound, and the hook's default result still applies if the action expires.
func (a *Actions) KeepAlive(ctx context.Context, interval time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := a.Heartbeat(ctx); err != nil && ctx.Err() == nil {
					a.Log.WarnContext(ctx, "lifecycle heartbeat failed", "error", err.Error())
				}
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}
