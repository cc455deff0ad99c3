// Package lifecycle parses Auto Scaling lifecycle-action events as EventBridge delivers
// them and completes or extends the actions.
//
// A launch lifecycle action, as EventBridge delivers it (events/launch-lifecycle.json):
//
//	{
//	  "version": "0",
//	  "id": "12345678-1234-1234-1234-123456789012",
//	  "detail-type": "EC2 Instance-launch Lifecycle Action",
//	  "source": "aws.autoscaling",
//	  "account": "123456789012",
//	  "time": "2026-11-21T20:00:00Z",
//	  "region": "us-east-1",
//	  "resources": ["arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:...:autoScalingGroupName/kafka-prod"],
//	  "detail": {
//	    "LifecycleActionToken": "87654321-4321-4321-4321-210987654321",
//	    "AutoScalingGroupName": "kafka-prod",
//	    "LifecycleHookName": "slotkeeper-launch",
//	    "EC2InstanceId": "i-0123456789abcdef0",
//	    "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
//	    "Origin": "EC2",
//	    "Destination": "AutoScalingGroup"
//	  }
//	}
//
// These are slotkeeper's own types: aws-lambda-go has no typed lifecycle-action detail,
// and domain code does not depend on Lambda event types.
package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"

	"github.com/slotkeeper/slotkeeper/shared/eventbridge"
)

// Detail types and transitions slotkeeper handles.
const (
	SourceAutoScaling   = "aws.autoscaling"
	DetailTypeLaunch    = "EC2 Instance-launch Lifecycle Action"
	DetailTypeTerminate = "EC2 Instance-terminate Lifecycle Action"
	TransitionLaunch    = "autoscaling:EC2_INSTANCE_LAUNCHING"
	TransitionTerminate = "autoscaling:EC2_INSTANCE_TERMINATING"
)

// ErrMalformed marks an event that cannot be understood: not JSON, wrong shape, or a
// required field missing. Such an event is returned as an error, never acted on.
var ErrMalformed = errors.New("malformed lifecycle event")

// Envelope is the EventBridge envelope.
type Envelope = eventbridge.Envelope

// Action is the detail of a lifecycle-action event.
type Action struct {
	LifecycleActionToken string `json:"LifecycleActionToken"`
	AutoScalingGroupName string `json:"AutoScalingGroupName"`
	LifecycleHookName    string `json:"LifecycleHookName"`
	EC2InstanceID        string `json:"EC2InstanceId"`
	LifecycleTransition  string `json:"LifecycleTransition"`
	NotificationMetadata string `json:"NotificationMetadata,omitempty"`
	Origin               string `json:"Origin,omitempty"`
	Destination          string `json:"Destination,omitempty"`
}

// Event is a parsed lifecycle-action event.
type Event struct {
	Envelope
	Action Action
}

var instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)

// Parse decodes raw as an EventBridge lifecycle-action event and checks that every
// field needed to act on it and to complete it is present and well-formed. It does not
// judge whether the event is for us (group, hook, transition): see Event.Relevant.
func Parse(raw []byte) (Event, error) {
	var e Event
	if err := eventbridge.Decode(raw, &e.Envelope); err != nil {
		return Event{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if e.Source != SourceAutoScaling {
		return e, nil // foreign source: Relevant says no; nothing else to check
	}
	if !e.HasDetail() {
		return Event{}, fmt.Errorf("%w: no detail", ErrMalformed)
	}
	if err := json.Unmarshal(e.Detail, &e.Action); err != nil {
		return Event{}, fmt.Errorf("%w: detail: %w", ErrMalformed, err)
	}
	if e.Action.LifecycleTransition == "autoscaling:TEST_NOTIFICATION" {
		return e, nil // sent when a hook is created; carries no instance
	}
	a := e.Action
	var missing []string
	for name, v := range map[string]string{
		"LifecycleActionToken": a.LifecycleActionToken, "AutoScalingGroupName": a.AutoScalingGroupName,
		"LifecycleHookName": a.LifecycleHookName, "EC2InstanceId": a.EC2InstanceID,
		"LifecycleTransition": a.LifecycleTransition,
	} {
		if strings.TrimSpace(v) == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return Event{}, fmt.Errorf("%w: detail lacks %s", ErrMalformed, strings.Join(missing, ", "))
	}
	if !instanceIDRE.MatchString(a.EC2InstanceID) {
		return Event{}, fmt.Errorf("%w: EC2InstanceId %q is not an instance id", ErrMalformed, a.EC2InstanceID)
	}
	return e, nil
}

// Destinations of an instance in a lifecycle-action event (detail.Destination, set
// by groups with a warm pool).
const (
	DestinationGroup    = "AutoScalingGroup"
	DestinationWarmPool = "WarmPool"
)

// Filter says which lifecycle actions a handler acts on: those of one Auto Scaling
// group and one lifecycle hook, of one detail type and transition.
type Filter struct {
	ASG, Hook, DetailType, Transition string
}

// Relevant reports whether the event is a lifecycle action the filter accepts; when it
// is not, it says why, for the no-op log line. A launch into a warm pool (Destination
// WarmPool) is never relevant: the instance is stopped once it is warm and runs no
// broker; it comes back as a launch into the group (Origin WarmPool), which is.
func (e Event) Relevant(f Filter) (bool, string) {
	switch {
	case e.Source != SourceAutoScaling:
		return false, fmt.Sprintf("source %q is not %s", e.Source, SourceAutoScaling)
	case e.DetailType != f.DetailType:
		return false, fmt.Sprintf("detail-type %q is not %q", e.DetailType, f.DetailType)
	case e.Action.LifecycleTransition != f.Transition:
		return false, fmt.Sprintf("transition %q is not %s", e.Action.LifecycleTransition, f.Transition)
	case e.Action.AutoScalingGroupName != f.ASG:
		return false, fmt.Sprintf("Auto Scaling group %q is not %q", e.Action.AutoScalingGroupName, f.ASG)
	case e.Action.LifecycleHookName != f.Hook:
		return false, fmt.Sprintf("lifecycle hook %q is not %q: another hook's action is not slotkeeper's to complete", e.Action.LifecycleHookName, f.Hook)
	case f.Transition == TransitionLaunch && e.Action.Destination == DestinationWarmPool:
		return false, fmt.Sprintf("the instance is launching into the warm pool (origin %s, destination %s): it runs no broker there", e.Action.Origin, e.Action.Destination)
	}
	return true, ""
}

// Accept parses raw and keeps it only if the filter accepts it. It logs what it
// rejects (a malformed event, returned as an error) and what it ignores (relevant
// false, with the reason), so every handler treats bad and foreign input alike.
func Accept(ctx context.Context, log *slog.Logger, raw []byte, f Filter) (e Event, relevant bool, reason string, err error) {
	e, err = Parse(raw)
	if err != nil {
		log.ErrorContext(ctx, "rejecting event", "outcome", "malformed", "error", err.Error())
		return Event{}, false, err.Error(), err
	}
	if ok, why := e.Relevant(f); !ok {
		log.InfoContext(ctx, "ignoring event", "outcome", "ignored", "reason", why, "event_id", e.ID)
		return e, false, why, nil
	}
	return e, true, "", nil
}
