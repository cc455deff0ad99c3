package dns

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"github.com/slotkeeper/slotkeeper/shared/eventbridge"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// Source and detail type of the events the dns function handles.
const (
	SourceEC2             = "aws.ec2"
	DetailTypeStateChange = "EC2 Instance State-change Notification"
)

// ErrMalformed marks an event that cannot be understood: not JSON, wrong shape, or an
// instance id or state missing. Such an event is returned as an error, never acted on.
var ErrMalformed = errors.New("malformed instance state-change event")

// StateChange is a parsed EC2 instance state-change notification, as EventBridge
// delivers it (events/state-change-*.json):
//
//	{
//	  "version": "0",
//	  "id": "7bf73129-1428-4cd3-a780-95db273d1602",
//	  "detail-type": "EC2 Instance State-change Notification",
//	  "source": "aws.ec2",
//	  "account": "123456789012",
//	  "time": "2026-11-21T20:10:21Z",
//	  "region": "us-east-1",
//	  "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"],
//	  "detail": {"instance-id": "i-0123456789abcdef0", "state": "running"}
//	}
type StateChange struct {
	eventbridge.Envelope

	// InstanceID and State are the detail's "instance-id" and "state".
	InstanceID string `json:"-"`
	State      string `json:"-"`
}

// stateDetail is the detail of a state-change event.
type stateDetail struct {
	InstanceID string `json:"instance-id"`
	State      string `json:"state"`
}

// handledStates are the instance states the dns function acts on: an instance became
// a serving broker (running) or stopped being one.
var handledStates = map[string]bool{
	slot.Running: true, slot.Stopping: true, slot.ShuttingDown: true, slot.Terminated: true,
}

var instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)

// ParseStateChange decodes raw as an EventBridge event. For an EC2 state-change
// notification it checks that the detail names a well-formed instance id and a state;
// events of other sources or detail types are returned as decoded, for Relevant to
// turn away.
func ParseStateChange(raw []byte) (StateChange, error) {
	var e StateChange
	if err := eventbridge.Decode(raw, &e.Envelope); err != nil {
		return StateChange{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if e.Source != SourceEC2 || e.DetailType != DetailTypeStateChange {
		return e, nil // not ours: Relevant says why; nothing else to check
	}
	if !e.HasDetail() {
		return StateChange{}, fmt.Errorf("%w: no detail", ErrMalformed)
	}
	var d stateDetail
	if err := json.Unmarshal(e.Detail, &d); err != nil {
		return StateChange{}, fmt.Errorf("%w: detail: %w", ErrMalformed, err)
	}
	if !instanceIDRE.MatchString(d.InstanceID) {
		return StateChange{}, fmt.Errorf("%w: instance-id %q is not an instance id", ErrMalformed, d.InstanceID)
	}
	if d.State == "" {
		return StateChange{}, fmt.Errorf("%w: detail lacks state", ErrMalformed)
	}
	e.InstanceID, e.State = d.InstanceID, d.State
	return e, nil
}

// Relevant reports whether the event is an instance state change the dns function
// acts on (running, stopping, shutting-down, terminated); when it is not, it says why,
// for the no-op log line.
func (e StateChange) Relevant() (bool, string) {
	switch {
	case e.Source != SourceEC2:
		return false, fmt.Sprintf("source %q is not %s", e.Source, SourceEC2)
	case e.DetailType != DetailTypeStateChange:
		return false, fmt.Sprintf("detail-type %q is not %q", e.DetailType, DetailTypeStateChange)
	case !handledStates[e.State]:
		return false, fmt.Sprintf("state %q does not move an instance into or out of service", e.State)
	}
	return true, ""
}
