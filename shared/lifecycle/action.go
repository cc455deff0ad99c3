package lifecycle

import (
	"context"
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
