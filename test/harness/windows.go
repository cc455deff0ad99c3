package harness

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// moto has no windows between states: an instance it terminates is terminated at
// once (AWS: shutting-down for a minute or more, while the operating system stops its
// services), it detaches a volume the moment it is asked (AWS: a plain detach waits
// until the operating system releases the device, which a mounted filesystem can
// delay indefinitely), and it runs no lifecycle hooks for an instance its group
// terminates (AWS: Terminating:Wait until the hook is completed). The proxy models
// those windows where a test asks for them:
//
//   - SetInstanceState: DescribeInstances reports the given state for an instance
//     (moto keeps its own);
//   - HoldPlainDetach: a plain DetachVolume of a volume from an instance is answered
//     "detaching" and not forwarded, so moto keeps the volume attached (in-use), as
//     EC2 does while the instance's OS holds the device; a forced DetachVolume goes
//     through;
//   - SetGroupInstance: DescribeAutoScalingInstances describes the instance as a
//     member of a group in a given lifecycle state and health, and
//     TerminateInstanceInAutoScalingGroup of it is answered as Auto Scaling answers
//     it for a group with a terminate lifecycle hook: an activity starts, the instance
//     goes to Terminating:Wait and keeps running (moto is not asked);
//   - ExpireLifecycleAction: the action of (group, hook, instance) is no longer
//     active, as after its heartbeat timeout: heartbeats and completions fail with
//     "No active Lifecycle Action found".

// GroupInstance is how the proxy describes a modelled instance of an Auto Scaling
// group.
type GroupInstance struct {
	Group, AZ string
	// LifecycleState is e.g. InService, Terminating:Wait; HealthStatus Healthy or
	// Unhealthy.
	LifecycleState, HealthStatus string
}

// windows is the state the proxy models on top of moto.
type windows struct {
	mu        sync.Mutex
	states    map[string]string        // instance -> EC2 state to report
	held      map[string]bool          // instance -> plain volume detaches are held
	group     map[string]GroupInstance // instance -> group membership
	activity  int
	terminate []string // instances TerminateInstanceInAutoScalingGroup was asked for
}

// ec2StateCodes are the EC2 instance state codes by name.
var ec2StateCodes = map[string]int{
	"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80,
}

// SetInstanceState makes DescribeInstances report state (pending, running,
// shutting-down, terminated, stopping, stopped) for instance id, whatever moto says;
// "" forgets it.
func (h *Harness) SetInstanceState(id, state string) {
	if _, ok := ec2StateCodes[state]; !ok && state != "" {
		panic("harness: unknown instance state " + state)
	}
	h.win.mu.Lock()
	defer h.win.mu.Unlock()
	if state == "" {
		delete(h.win.states, id)
		return
	}
	h.win.states[id] = state
}

// HoldPlainDetach makes the proxy hold (hold true) or let through (false) every plain
// DetachVolume of a volume from instance id: a held one is answered "detaching"
// without reaching moto, so the volume stays attached.
func (h *Harness) HoldPlainDetach(id string, hold bool) {
	h.win.mu.Lock()
	defer h.win.mu.Unlock()
	if hold {
		h.win.held[id] = true
	} else {
		delete(h.win.held, id)
	}
}

// SetGroupInstance makes the proxy describe instance id as gi (see windows).
func (h *Harness) SetGroupInstance(id string, gi GroupInstance) {
	h.win.mu.Lock()
	defer h.win.mu.Unlock()
	h.win.group[id] = gi
}

// GroupInstanceOf returns the modelled group view of instance id.
func (h *Harness) GroupInstanceOf(id string) (GroupInstance, bool) {
	h.win.mu.Lock()
	defer h.win.mu.Unlock()
	gi, ok := h.win.group[id]
	return gi, ok
}

// GroupTerminations returns the instances TerminateInstanceInAutoScalingGroup was
// answered for by the model, in order.
func (h *Harness) GroupTerminations() []string {
	h.win.mu.Lock()
	defer h.win.mu.Unlock()
	return append([]string(nil), h.win.terminate...)
}

// ExpireLifecycleAction makes the lifecycle action of (asg, hook, instance) inactive
// without a completion, as when its heartbeat timeout passes.
func (h *Harness) ExpireLifecycleAction(asg, hook, instance string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lifecycle[lifecycleKey{asg: asg, hook: hook, target: "instance:" + instance}] = true
}

// modelled wraps next with the windows the call's action is subject to.
func (h *Harness) modelled(c call, next http.HandlerFunc) http.HandlerFunc {
	if c.protocol != protocolQuery {
		return next
	}
	switch c.action {
	case "DescribeInstances":
		return h.rewriteWith(next, h.rewriteInstanceStates)
	case "DetachVolume":
		instance := c.form.Get("InstanceId")
		h.win.mu.Lock()
		held := h.win.held[instance] && c.form.Get("Force") != "true"
		h.win.mu.Unlock()
		if held {
			return func(w http.ResponseWriter, _ *http.Request) { h.writeHeldDetach(w, c) }
		}
	case "DescribeAutoScalingInstances":
		return h.rewriteWith(next, func(body []byte) []byte { return h.groupAnswer(c, body) })
	case "TerminateInstanceInAutoScalingGroup":
		id := c.form.Get("InstanceId")
		h.win.mu.Lock()
		_, ok := h.win.group[id]
		h.win.mu.Unlock()
		if ok {
			return func(w http.ResponseWriter, _ *http.Request) { h.writeGroupTermination(w, c, id) }
		}
	}
	return next
}

// rewriteWith answers with next's response passed through rewrite when it succeeded.
func (h *Harness) rewriteWith(next http.HandlerFunc, rewrite func([]byte) []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Accept-Encoding")
		rec := httptest.NewRecorder()
		next(rec, r)
		body := rec.Body.Bytes()
		if rec.Code/100 == 2 {
			body = rewrite(body)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	}
}

// stateElemRE is an instance's state element.
var stateElemRE = regexp.MustCompile(`^<instanceState><code>\d+</code><name>[a-z-]+</name></instanceState>`)

// rewriteInstanceStates replaces the state of each modelled instance in a
// DescribeInstances answer: the first <instanceState> after its <instanceId> (moto
// writes the id first), provided no other instance's id comes in between.
func (h *Harness) rewriteInstanceStates(body []byte) []byte {
	h.win.mu.Lock()
	states := make(map[string]string, len(h.win.states))
	for k, v := range h.win.states {
		states[k] = v
	}
	h.win.mu.Unlock()
	if len(states) == 0 {
		return body
	}
	const idOpen, stateOpen = "<instanceId>", "<instanceState>"
	out := string(body)
	for id, st := range states {
		at := strings.Index(out, idOpen+id+"</instanceId>")
		if at < 0 {
			continue
		}
		rest := out[at+len(idOpen):]
		si := strings.Index(rest, stateOpen)
		if si < 0 || strings.Contains(rest[:si], idOpen) {
			continue
		}
		start := at + len(idOpen) + si
		loc := stateElemRE.FindStringIndex(out[start:])
		if loc == nil {
			continue
		}
		out = out[:start] + fmt.Sprintf("<instanceState><code>%d</code><name>%s</name></instanceState>", ec2StateCodes[st], st) + out[start+loc[1]:]
	}
	return []byte(out)
}

// groupMemberRE matches one member of DescribeAutoScalingInstances' answer.
var groupMemberRE = regexp.MustCompile(`<member>.*?<InstanceId>(i-[0-9a-f]+)</InstanceId>.*?</member>`)

// groupAnswer rewrites moto's DescribeAutoScalingInstances answer to call c: moto's
// members for modelled instances are dropped, and every modelled instance the request
// asked for is described from the model.
func (h *Harness) groupAnswer(c call, body []byte) []byte {
	h.win.mu.Lock()
	defer h.win.mu.Unlock()
	if len(h.win.group) == 0 {
		return body
	}
	body = groupMemberRE.ReplaceAllFunc(body, func(m []byte) []byte {
		if _, ok := h.win.group[string(groupMemberRE.FindSubmatch(m)[1])]; ok {
			return nil
		}
		return m
	})
	var members strings.Builder
	for k, vs := range c.form {
		if !strings.HasPrefix(k, "InstanceIds.member.") {
			continue
		}
		for _, id := range vs {
			gi, ok := h.win.group[id]
			if !ok {
				continue
			}
			fmt.Fprintf(&members, "<member><InstanceId>%s</InstanceId><AutoScalingGroupName>%s</AutoScalingGroupName><AvailabilityZone>%s</AvailabilityZone>"+
				"<LifecycleState>%s</LifecycleState><HealthStatus>%s</HealthStatus><ProtectedFromScaleIn>false</ProtectedFromScaleIn>"+
				"<InstanceType>t3.large</InstanceType></member>", id, gi.Group, gi.AZ, gi.LifecycleState, gi.HealthStatus)
		}
	}
	if members.Len() == 0 {
		return body
	}
	if bytes.Contains(body, []byte("<AutoScalingInstances/>")) {
		return bytes.Replace(body, []byte("<AutoScalingInstances/>"), []byte("<AutoScalingInstances>"+members.String()+"</AutoScalingInstances>"), 1)
	}
	return bytes.Replace(body, []byte("</AutoScalingInstances>"), []byte(members.String()+"</AutoScalingInstances>"), 1)
}

// writeHeldDetach answers a held plain DetachVolume as EC2 does while the instance
// still holds the device: the detach has begun.
func (h *Harness) writeHeldDetach(w http.ResponseWriter, c call) {
	id := h.newRequestID()
	body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+
		`<DetachVolumeResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>%s</requestId>`+
		`<volumeId>%s</volumeId><instanceId>%s</instanceId><device>%s</device><status>detaching</status>`+
		`<attachTime>%s</attachTime></DetachVolumeResponse>`,
		id, c.form.Get("VolumeId"), c.form.Get("InstanceId"), c.form.Get("Device"), time.Now().UTC().Format("2006-01-02T15:04:05.000Z"))
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(body))
}

// writeGroupTermination answers TerminateInstanceInAutoScalingGroup for a modelled
// instance: it goes to Terminating:Wait (the terminate hook holds it there).
func (h *Harness) writeGroupTermination(w http.ResponseWriter, c call, instance string) {
	h.win.mu.Lock()
	gi := h.win.group[instance]
	gi.LifecycleState = "Terminating:Wait"
	h.win.group[instance] = gi
	h.win.activity++
	activity := fmt.Sprintf("00000000-0000-4000-8000-%012d", h.win.activity)
	h.win.terminate = append(h.win.terminate, instance)
	h.win.mu.Unlock()
	now := time.Now().UTC()
	body := fmt.Sprintf(`<TerminateInstanceInAutoScalingGroupResponse xmlns="%s"><TerminateInstanceInAutoScalingGroupResult><Activity>`+
		`<ActivityId>%s</ActivityId><AutoScalingGroupName>%s</AutoScalingGroupName><Description>Terminating EC2 instance: %s</Description>`+
		`<Cause>At %s an instance was taken out of service in response to a user request.</Cause><StartTime>%s</StartTime>`+
		`<StatusCode>InProgress</StatusCode><Progress>0</Progress></Activity></TerminateInstanceInAutoScalingGroupResult>`+
		`<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata></TerminateInstanceInAutoScalingGroupResponse>`,
		autoscalingNS, activity, gi.Group, instance, now.Format(time.RFC3339), now.Format("2006-01-02T15:04:05.000Z"), h.newRequestID())
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(body))
}
