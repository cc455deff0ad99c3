package demo

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Group plays the part of the brokers' Auto Scaling group that moto does not: moto
// answers TerminateInstanceInAutoScalingGroup by terminating the instance at once and
// launching a replacement in the group's first subnet, with no lifecycle hook, where
// AWS puts the instance in Terminating:Wait, delivers the terminate lifecycle action,
// terminates the instance once the action is completed, and launches a replacement in
// the AZ that lost it, which waits in Pending:Wait for the launch lifecycle action.
//
// Group is an AWS endpoint (URL) in front of the harness proxy. It answers
// TerminateInstanceInAutoScalingGroup itself, as the group does, and then plays the
// lifecycle in the background: the instance is Terminating:Wait while Terminate (the
// terminate function) runs; once its action was completed with CONTINUE it is
// terminated and detached from moto's group; a replacement is launched from the
// group's launch template in the same subnet and attached to moto's group, and is
// Pending:Wait while Launch (the launch function) runs; an ABANDON terminates it and
// launches another, as the group does. The group's lifecycle states and its desired
// capacity (moto lowers it while the old instance is detached) are shown in the
// answers to DescribeAutoScalingGroups and DescribeAutoScalingInstances. Every other
// call passes through to the harness proxy unchanged, and is counted there.
//
// The replacement is launched at once, while the old instance waits in
// Terminating:Wait, as AWS does without a launch-before-terminate policy ("terminate and
// launch": new instances are provisioned at the same time existing instances are
// terminated). A launch path that cannot have the slot yet may wait for the handover,
// or abandon the replacement; the group then terminates it and launches another, as
// AWS does, after a pause that grows with each attempt.
type Group struct {
	// URL is the endpoint to give the code under test.
	URL string
	// Terminate runs the terminate function on instance's terminate lifecycle action.
	Terminate func(ctx context.Context, instance string) error
	// Launch runs the launch function on instance's launch lifecycle action and
	// returns its outcome ("continue", "abandon", ...) and the slot it took.
	Launch func(ctx context.Context, instance string) (outcome string, slot int, err error)
	// Terminated, when set, is told when an instance has terminated (state-change
	// events to deliver, a broker that is gone).
	Terminated func(ctx context.Context, instance string)
	// Launched, when set, is told when a replacement has been launched (before its
	// launch lifecycle action is delivered).
	Launched func(ctx context.Context, instance string)
	// Evicted, when set, is told when a TerminateInstanceInAutoScalingGroup has been
	// answered.
	Evicted func(instance string)

	st      *Stage
	srv     *http.Server
	forward *httputil.ReverseProxy
	ctx     context.Context
	cancel  context.CancelFunc

	mu        sync.Mutex
	states    map[string]string // instance -> lifecycle state, when not InService
	desired   int32             // the group's desired capacity as AWS would keep it; 0: moto's
	maxSize   int32             // the group's max size as configured (moto's is one higher)
	evictions []Eviction
	abandoned []string
	errs      []error
	inflight  sync.WaitGroup
}

// Abandoned returns the replacements whose launch was abandoned (and that the group
// then terminated), in order.
func (g *Group) Abandoned() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.abandoned...)
}

// Eviction is one TerminateInstanceInAutoScalingGroup the group answered, and what
// followed.
type Eviction struct {
	Instance    string
	At          time.Time
	Replacement string
	// Terminated and InService are when the old instance was terminated and the
	// replacement's launch completed with CONTINUE.
	Terminated, InService time.Time
}

// NewGroup starts the group's endpoint for stage st. It stops with t's cleanup
// (Close). Set Terminate and Launch before the first eviction.
func NewGroup(t interface{ Cleanup(func()) }, st *Stage) (*Group, error) {
	target, err := url.Parse(st.H.URL)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", st.H.URL, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for the group's endpoint: %w", err)
	}
	g := &Group{st: st, states: map[string]string{},
		forward: &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }, Transport: &http.Transport{}}}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.URL = "http://" + ln.Addr().String()
	g.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(g.serve)}
	go func() { _ = g.srv.Serve(ln) }()
	t.Cleanup(g.Close)
	return g, nil
}

// Close stops the endpoint and the lifecycles in progress.
func (g *Group) Close() {
	g.cancel()
	g.inflight.Wait()
	_ = g.srv.Close()
}

// Wait waits until every lifecycle in progress has finished.
func (g *Group) Wait() { g.inflight.Wait() }

// Evictions returns the terminations the group was asked for, in order.
func (g *Group) Evictions() []Eviction {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Eviction(nil), g.evictions...)
}

// Errs returns what went wrong in the background lifecycles.
func (g *Group) Errs() []error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]error(nil), g.errs...)
}

// State returns instance's lifecycle state as the group shows it ("" when InService or
// not the group's).
func (g *Group) State(instance string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.states[instance]
}

func (g *Group) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	form, _ := url.ParseQuery(string(body))
	switch form.Get("Action") {
	case "TerminateInstanceInAutoScalingGroup":
		g.terminateInGroup(w, form)
		return
	case "DescribeAutoScalingGroups", "DescribeAutoScalingInstances":
		r.Header.Del("Accept-Encoding")
		rec := httptest.NewRecorder()
		g.forward.ServeHTTP(rec, r)
		out := g.rewrite(rec.Body.Bytes())
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(out)
		return
	}
	g.forward.ServeHTTP(w, r)
}

var (
	lifecycleRE = regexp.MustCompile(`<LifecycleState>[^<]*</LifecycleState>`)
	desiredRE   = regexp.MustCompile(`<DesiredCapacity>[0-9]+</DesiredCapacity>`)
	maxSizeRE   = regexp.MustCompile(`<MaxSize>[0-9]+</MaxSize>`)
)

// rewrite shows the group's lifecycle states and desired capacity in an answer.
func (g *Group) rewrite(b []byte) []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := string(b)
	for id, st := range g.states {
		i := strings.Index(s, "<InstanceId>"+id+"</InstanceId>")
		if i < 0 {
			continue
		}
		start := strings.LastIndex(s[:i], "<member>")
		end := strings.Index(s[i:], "</member>")
		if start < 0 || end < 0 {
			continue
		}
		end += i
		s = s[:start] + lifecycleRE.ReplaceAllString(s[start:end], "<LifecycleState>"+st+"</LifecycleState>") + s[end:]
	}
	if g.desired > 0 && strings.Contains(s, "<AutoScalingGroupName>"+g.st.Config.ASGName+"</AutoScalingGroupName>") {
		s = desiredRE.ReplaceAllString(s, "<DesiredCapacity>"+strconv.Itoa(int(g.desired))+"</DesiredCapacity>")
		s = maxSizeRE.ReplaceAllString(s, "<MaxSize>"+strconv.Itoa(int(g.maxSize))+"</MaxSize>")
	}
	return []byte(s)
}

func (g *Group) fail(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.errs = append(g.errs, err)
}

func (g *Group) setState(id, st string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if st == "" {
		delete(g.states, id)
	} else {
		g.states[id] = st
	}
}

// terminateInGroup answers TerminateInstanceInAutoScalingGroup and starts the
// instance's termination and its replacement.
func (g *Group) terminateInGroup(w http.ResponseWriter, form url.Values) {
	id := form.Get("InstanceId")
	decrement := form.Get("ShouldDecrementDesiredCapacity") == "true"
	ctx, cancel := context.WithTimeout(g.ctx, 30*time.Second)
	defer cancel()
	asg := autoscaling.NewFromConfig(g.st.H.DirectConfig())
	in, err := asg.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{id}})
	switch {
	case err != nil:
		writeQueryError(w, http.StatusInternalServerError, "InternalFailure", err.Error())
		return
	case len(in.AutoScalingInstances) == 0 || aws.ToString(in.AutoScalingInstances[0].AutoScalingGroupName) != g.st.Config.ASGName:
		writeQueryError(w, http.StatusBadRequest, "ValidationError", "Instance Id not found - No managed instance found for instance ID: "+id)
		return
	}
	g.mu.Lock()
	if st, busy := g.states[id]; busy {
		g.mu.Unlock()
		writeQueryError(w, http.StatusBadRequest, "ValidationError", "The instance "+id+" is in "+st+" state and cannot be terminated")
		return
	}
	if g.desired == 0 {
		// moto attaches no instance beyond the max size: give it room for a replacement
		// launched while the old instance is still in the group, and show the real one.
		out, err := asg.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{g.st.Config.ASGName}})
		if err == nil && len(out.AutoScalingGroups) == 1 {
			g.desired, g.maxSize = aws.ToInt32(out.AutoScalingGroups[0].DesiredCapacity), aws.ToInt32(out.AutoScalingGroups[0].MaxSize)
			_, err = asg.UpdateAutoScalingGroup(ctx, &autoscaling.UpdateAutoScalingGroupInput{
				AutoScalingGroupName: aws.String(g.st.Config.ASGName), MaxSize: aws.Int32(g.maxSize + g.desired)})
		}
		if err != nil {
			g.desired = 0
			g.mu.Unlock()
			writeQueryError(w, http.StatusInternalServerError, "InternalFailure", err.Error())
			return
		}
	}
	if decrement {
		g.desired--
	}
	g.states[id] = "Terminating:Wait"
	now := time.Now().UTC()
	g.evictions = append(g.evictions, Eviction{Instance: id, At: now})
	n := len(g.evictions) - 1
	g.inflight.Add(1)
	g.mu.Unlock()
	go g.lifecycle(n, id, aws.ToString(in.AutoScalingInstances[0].AvailabilityZone), !decrement)

	activity := eventID()
	resp := fmt.Sprintf(`<TerminateInstanceInAutoScalingGroupResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
  <TerminateInstanceInAutoScalingGroupResult>
    <Activity>
      <ActivityId>%s</ActivityId>
      <AutoScalingGroupName>%s</AutoScalingGroupName>
      <Description>Terminating EC2 instance: %s</Description>
      <Cause>At %s instance %s was taken out of service in response to a user request.</Cause>
      <StartTime>%s</StartTime>
      <StatusCode>InProgress</StatusCode>
      <Progress>0</Progress>
    </Activity>
  </TerminateInstanceInAutoScalingGroupResult>
  <ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>
</TerminateInstanceInAutoScalingGroupResponse>`, activity, g.st.Config.ASGName, id, now.Format(time.RFC3339), id, now.Format(time.RFC3339Nano), eventID())
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, resp)
	if g.Evicted != nil {
		g.Evicted(id)
	}
}

func writeQueryError(w http.ResponseWriter, status int, code, msg string) {
	type errBody struct {
		XMLName xml.Name `xml:"ErrorResponse"`
		Type    string   `xml:"Error>Type"`
		Code    string   `xml:"Error>Code"`
		Message string   `xml:"Error>Message"`
		ID      string   `xml:"RequestId"`
	}
	b, _ := xml.Marshal(errBody{Type: "Sender", Code: code, Message: msg, ID: eventID()})
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// lifecycle plays instance id's termination and, when replace, at the same time its
// replacement in the same subnet.
func (g *Group) lifecycle(n int, id, az string, replace bool) {
	defer g.inflight.Done()
	ctx := g.ctx
	direct := g.st.H.DirectConfig()
	asg, ec2c := autoscaling.NewFromConfig(direct), ec2.NewFromConfig(direct)
	out, err := ec2c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil || len(out.Reservations) == 0 || len(out.Reservations[0].Instances) == 0 {
		g.fail(fmt.Errorf("describing %s: %w", id, errors.Join(err, errors.New("no such instance"))))
		return
	}
	subnet := aws.ToString(out.Reservations[0].Instances[0].SubnetId)
	var replaced sync.WaitGroup
	if replace {
		replaced.Add(1)
		go func() {
			defer replaced.Done()
			g.replace(ctx, asg, ec2c, n, id, az, subnet)
		}()
	}
	g.terminate(ctx, asg, ec2c, n, id)
	replaced.Wait()
}

// terminate runs instance id's terminate lifecycle action and, once it was completed
// with CONTINUE, terminates the instance.
func (g *Group) terminate(ctx context.Context, asg *autoscaling.Client, ec2c *ec2.Client, n int, id string) {
	if err := g.Terminate(ctx, id); err != nil {
		g.fail(fmt.Errorf("terminate lifecycle action of %s: %w", id, err))
		return
	}
	if !g.continued(id) {
		g.fail(fmt.Errorf("the terminate lifecycle action of %s was not completed with CONTINUE", id))
		return
	}
	g.setState(id, "Terminating:Proceed")
	if err := g.remove(ctx, asg, ec2c, id); err != nil {
		g.fail(err)
		return
	}
	g.setState(id, "")
	g.mu.Lock()
	g.evictions[n].Terminated = time.Now()
	g.mu.Unlock()
	if g.Terminated != nil {
		g.Terminated(ctx, id)
	}
}

// replace launches a replacement for id in subnet until one's launch lifecycle action
// is completed with CONTINUE; an abandoned one is terminated and another launched.
func (g *Group) replace(ctx context.Context, asg *autoscaling.Client, ec2c *ec2.Client, n int, id, az, subnet string) {
	const attempts = 12
	for attempt := 1; ; attempt++ {
		nid, err := g.launch(ctx, asg, ec2c, subnet)
		if err != nil {
			g.fail(fmt.Errorf("launching a replacement for %s in %s: %w", id, az, err))
			return
		}
		g.mu.Lock()
		g.evictions[n].Replacement = nid
		g.mu.Unlock()
		if g.Launched != nil {
			g.Launched(ctx, nid)
		}
		outcome, _, err := g.Launch(ctx, nid)
		if err != nil {
			g.fail(fmt.Errorf("launch lifecycle action of %s: %w", nid, err))
			return
		}
		if outcome == "continue" {
			g.setState(nid, "")
			g.mu.Lock()
			g.evictions[n].InService = time.Now()
			g.mu.Unlock()
			return
		}
		// ABANDON: the group terminates the instance and launches another.
		g.setState(nid, "Terminating:Proceed")
		if err := g.remove(ctx, asg, ec2c, nid); err != nil {
			g.fail(err)
			return
		}
		g.setState(nid, "")
		g.mu.Lock()
		g.abandoned = append(g.abandoned, nid)
		g.mu.Unlock()
		if attempt == attempts {
			g.fail(fmt.Errorf("the replacement of %s was abandoned %d times", id, attempt))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(time.Duration(attempt)*200*time.Millisecond, time.Second)):
		}
	}
}

// continued reports whether instance's terminate lifecycle action was completed with
// CONTINUE (the harness answers CompleteLifecycleAction and records it).
func (g *Group) continued(instance string) bool {
	for _, c := range g.st.H.Completions() {
		if c.InstanceID == instance && c.Hook == TerminateHook && c.Result == "CONTINUE" {
			return true
		}
	}
	return false
}

// remove takes instance id out of moto's group and terminates it.
func (g *Group) remove(ctx context.Context, asg *autoscaling.Client, ec2c *ec2.Client, id string) error {
	// moto keeps the desired capacity only by launching an instance of its own: detach
	// with a decrement, and show the desired capacity AWS would keep (rewrite).
	if _, err := asg.DetachInstances(ctx, &autoscaling.DetachInstancesInput{AutoScalingGroupName: aws.String(g.st.Config.ASGName),
		InstanceIds: []string{id}, ShouldDecrementDesiredCapacity: aws.Bool(true)}); err != nil {
		return fmt.Errorf("detaching %s from moto's group: %w", id, err)
	}
	if _, err := ec2c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
		return fmt.Errorf("terminating %s: %w", id, err)
	}
	return nil
}

// launch runs a replacement from the group's launch template in subnet, tagged as the
// group tags its instances, and attaches it to moto's group in Pending:Wait.
func (g *Group) launch(ctx context.Context, asg *autoscaling.Client, ec2c *ec2.Client, subnet string) (string, error) {
	grp, err := asg.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{g.st.Config.ASGName}})
	if err != nil || len(grp.AutoScalingGroups) == 0 || grp.AutoScalingGroups[0].LaunchTemplate == nil {
		return "", fmt.Errorf("the group's launch template: %w", errors.Join(err, errors.New("none")))
	}
	lt := grp.AutoScalingGroups[0].LaunchTemplate
	spec := &ec2types.LaunchTemplateSpecification{Version: lt.Version}
	if aws.ToString(lt.LaunchTemplateId) != "" {
		spec.LaunchTemplateId = lt.LaunchTemplateId
	} else {
		spec.LaunchTemplateName = lt.LaunchTemplateName
	}
	out, err := ec2c.RunInstances(ctx, &ec2.RunInstancesInput{
		LaunchTemplate: spec, SecurityGroupIds: []string{g.st.World.SecurityGroupID},
		SubnetId: aws.String(subnet), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance,
			Tags: []ec2types.Tag{{Key: aws.String("aws:autoscaling:groupName"), Value: aws.String(g.st.Config.ASGName)}}}},
	})
	if err != nil {
		return "", fmt.Errorf("running an instance: %w", err)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	g.setState(id, "Pending:Wait")
	if _, err := asg.AttachInstances(ctx, &autoscaling.AttachInstancesInput{AutoScalingGroupName: aws.String(g.st.Config.ASGName), InstanceIds: []string{id}}); err != nil {
		return "", fmt.Errorf("attaching %s to moto's group: %w", id, err)
	}
	return id, nil
}
