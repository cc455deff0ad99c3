package emulator

import (
	"encoding/xml"
	"net/http"
	"strconv"
	"time"
)

// moto does not implement CompleteLifecycleAction or RecordLifecycleActionHeartbeat,
// so the proxy answers them itself, modelled on AWS: a lifecycle action, identified
// by (Auto Scaling group, hook, instance), accepts heartbeats until it is completed
// once; after that, completing it again or heartbeating it fails with
// ValidationError "No active Lifecycle Action found with instance ID <id>".
//
// Not modelled: whether the group, hook and instance exist, the heartbeat timeout,
// and the link between a lifecycle action token and its instance (a call that gives
// only a token is keyed by the token).

const (
	actionComplete  = "CompleteLifecycleAction"
	actionHeartbeat = "RecordLifecycleActionHeartbeat"
	autoscalingNS   = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
)

// LifecycleCall is a successful CompleteLifecycleAction or
// RecordLifecycleActionHeartbeat call received by the proxy.
type LifecycleCall struct {
	// Action is CompleteLifecycleAction or RecordLifecycleActionHeartbeat.
	Action string
	// ASG is AutoScalingGroupName.
	ASG string
	// Hook is LifecycleHookName.
	Hook string
	// InstanceID is InstanceId, if given.
	InstanceID string
	// Token is LifecycleActionToken, if given.
	Token string
	// Result is LifecycleActionResult (CONTINUE or ABANDON); empty for heartbeats.
	Result string
	// At is when the proxy received the call.
	At time.Time
}

// lifecycleKey identifies one lifecycle action.
type lifecycleKey struct{ asg, hook, target string }

func isLifecycleAction(action string) bool {
	return action == actionComplete || action == actionHeartbeat
}

// Completions returns the successful CompleteLifecycleAction calls, in arrival order.
// A call hit by a Crash fault took effect, so it is included.
func (e *Emulator) Completions() []LifecycleCall {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]LifecycleCall(nil), e.completion...)
}

// Heartbeats returns the successful RecordLifecycleActionHeartbeat calls, in arrival
// order.
func (e *Emulator) Heartbeats() []LifecycleCall {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]LifecycleCall(nil), e.heartbeats...)
}

// serveLifecycle answers a CompleteLifecycleAction or RecordLifecycleActionHeartbeat
// query-protocol call.
func (e *Emulator) serveLifecycle(w http.ResponseWriter, c call) {
	lc := LifecycleCall{
		Action:     c.action,
		ASG:        c.form.Get("AutoScalingGroupName"),
		Hook:       c.form.Get("LifecycleHookName"),
		InstanceID: c.form.Get("InstanceId"),
		Token:      c.form.Get("LifecycleActionToken"),
		Result:     c.form.Get("LifecycleActionResult"),
		At:         time.Now(),
	}
	if msg := validateLifecycleCall(lc); msg != "" {
		e.writeAPIError(w, c, http.StatusBadRequest, "ValidationError", msg)
		return
	}

	key := lifecycleKey{asg: lc.ASG, hook: lc.Hook, target: "instance:" + lc.InstanceID}
	if lc.InstanceID == "" {
		key.target = "token:" + lc.Token
	}
	e.mu.Lock()
	completed := e.lifecycle[key]
	if !completed {
		if lc.Action == actionComplete {
			e.lifecycle[key] = true
			e.completion = append(e.completion, lc)
		} else {
			e.heartbeats = append(e.heartbeats, lc)
		}
	}
	e.mu.Unlock()

	if completed {
		msg := "No active Lifecycle Action found with instance ID " + lc.InstanceID
		if lc.InstanceID == "" {
			msg = "No active Lifecycle Action found with token " + lc.Token
		}
		e.writeAPIError(w, c, http.StatusBadRequest, "ValidationError", msg)
		return
	}
	writeLifecycleResponse(w, lc.Action, e.newRequestID())
}

// validateLifecycleCall returns the ValidationError message for an invalid call, or "".
func validateLifecycleCall(lc LifecycleCall) string {
	switch {
	case lc.ASG == "":
		return "1 validation error detected: Value null at 'autoScalingGroupName' failed to satisfy constraint: Member must not be null"
	case lc.Hook == "":
		return "1 validation error detected: Value null at 'lifecycleHookName' failed to satisfy constraint: Member must not be null"
	case lc.InstanceID == "" && lc.Token == "":
		return "Either an instance ID or a lifecycle action token must be specified"
	case lc.Action == actionComplete && lc.Result != "CONTINUE" && lc.Result != "ABANDON":
		return "Invalid value for LifecycleActionResult: '" + lc.Result + "'. Valid values are CONTINUE and ABANDON"
	}
	return ""
}

// lifecycleResponse is the awsquery success body of both lifecycle actions, e.g.
//
//	<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
//	  <CompleteLifecycleActionResult></CompleteLifecycleActionResult>
//	  <ResponseMetadata><RequestId>...</RequestId></ResponseMetadata>
//	</CompleteLifecycleActionResponse>
type lifecycleResponse struct {
	XMLName xml.Name // <Action>Response
	Xmlns   string   `xml:"xmlns,attr"`
	Result  struct {
		XMLName xml.Name // <Action>Result
	}
	RequestID string `xml:"ResponseMetadata>RequestId"`
}

func writeLifecycleResponse(w http.ResponseWriter, action, requestID string) {
	resp := lifecycleResponse{XMLName: xml.Name{Local: action + "Response"}, Xmlns: autoscalingNS, RequestID: requestID}
	resp.Result.XMLName = xml.Name{Local: action + "Result"}
	body := marshalXML(resp)
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-RequestId", requestID)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}
