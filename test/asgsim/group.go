package asgsim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/test/emulator"
)

// Lifecycle states of the group, as DescribeAutoScalingInstances names them.
const (
	lifePendingWait  = "Pending:Wait"
	lifeInService    = "InService"
	lifeTermWait     = "Terminating:Wait"
	lifeTermProceed  = "Terminating:Proceed"
	lifeTerminated   = "Terminated"
	ec2Pending       = "pending"
	ec2Running       = "running"
	ec2ShuttingDown  = "shutting-down"
	ec2Terminated    = "terminated"
	healthy          = "Healthy"
	unhealthy        = "Unhealthy"
	resultContinue   = "CONTINUE"
	resultAbandon    = "ABANDON"
	kafkaRunning     = "running"
	kafkaStopped     = "stopped"
	kafkaCrashed     = "crashed"
	kafkaRefused     = "refused"
	causeScaleIn     = "scale-in"
	causeHealth      = "health check"
	causeRefresh     = "instance refresh"
	causeEvict       = "slotctl evict"
	causeAbandoned   = "launch abandoned"
	causeDeadHealthy = "EC2 health check: terminated"
)

// instance is one instance of the simulated group: its EC2 state, its place in the
// group, and the broker it runs.
type instance struct {
	id, az, subnet string
	ord            int
	rng            *rand.Rand
	ec2            string
	life           string
	health         string
	launchedAt     time.Duration
	// refresh: being replaced by an instance refresh (terminate first): it counts
	// towards the capacity until its terminate lifecycle action ends.
	refresh bool
	// dead: died without a lifecycle hook.
	dead bool
	// The broker: its Kafka process, the slot (node) it runs as, the volume it has
	// mounted, whether it caught up, whether a start is scheduled, whether systemd
	// restarts it.
	kafka    string
	node     int
	mounted  string
	caughtUp bool
	starting bool
	restart  bool
	refused  string
	// blankRefusal: refused a blank, never-used volume that lost its mark (documented).
	blankRefusal bool
	// keepMark: its user data dies before it removes the never-formatted mark.
	keepMark bool
}

// actionKey names a lifecycle action.
type actionKey struct{ hook, instance string }

// action is one lifecycle action of the group.
type action struct {
	key    actionKey
	inst   *instance
	start  time.Duration
	beat   time.Duration
	done   bool
	result string
	// expired: its heartbeat timeout passed (default result applied); lost: because
	// the plan let its heartbeats be lost.
	expired, lost bool
	// late: its only delivery was made late (a delivery fault).
	late bool
	// Deliveries of its event: made, failed (error), dropped (retries exhausted),
	// succeeded (returned without error).
	deliveries, failures, dropped, succeeded int
}

// refreshState is an instance refresh in progress.
type refreshState struct {
	queue []string // instances still to replace, oldest first
	cur   string   // the one being replaced
	next  time.Duration
}

func (r *run) hookFor(launching bool) string {
	if launching {
		return r.cfg.LaunchHook
	}
	return r.cfg.TerminateHook
}

// active reports whether in counts towards the group's capacity.
func (in *instance) active() bool {
	return in.life == lifePendingWait || in.life == lifeInService || (in.refresh && in.life == lifeTermWait)
}

// syncGroup shows in's state to the code under test: the proxy describes it as a
// member of the group in its lifecycle state and health, and reports its EC2 state.
func (r *run) syncGroup(in *instance) {
	r.e.SetGroupInstance(in.id, emulator.GroupInstance{Group: r.cfg.ASGName, AZ: in.az, LifecycleState: in.life, HealthStatus: in.health})
	r.e.SetInstanceState(in.id, in.ec2)
}

// capacity launches instances while fewer than the desired capacity count. r.mu
// must be held.
func (r *run) capacity() {
	if r.now() < r.relaunch {
		return
	}
	perAZ := map[string]int{}
	n := 0
	for _, in := range r.order {
		if in.active() {
			n++
			perAZ[in.az]++
		}
	}
	for ; n < r.desired; n++ {
		az := r.pickAZ(perAZ)
		perAZ[az]++
		r.launch(az)
	}
}

// pickAZ is the AZ with the fewest active instances (the one that lost the last
// instance, among equals).
func (r *run) pickAZ(perAZ map[string]int) string {
	best := ""
	for _, sn := range r.st.World.Subnets {
		switch {
		case best == "", perAZ[sn.AZ] < perAZ[best]:
			best = sn.AZ
		case perAZ[sn.AZ] == perAZ[best] && sn.AZ == r.lastAZ && best != r.lastAZ:
			best = sn.AZ
		}
	}
	return best
}

// launch starts an instance in az: pending, in Pending:Wait, with its launch
// lifecycle action sent. r.mu must be held (the instance is run at moto directly).
func (r *run) launch(az string) {
	subnet := ""
	for _, sn := range r.st.World.Subnets {
		if sn.AZ == az {
			subnet = sn.ID
		}
	}
	id, err := r.e.RunInstanceTagged(r.ctx, r.st.World, subnet, map[string]string{"aws:autoscaling:groupName": r.cfg.ASGName})
	if err != nil {
		r.simError(fmt.Errorf("launching an instance in %s: %w", az, err))
		return
	}
	ord := len(r.order)
	in := &instance{id: id, az: az, subnet: subnet, ord: ord, rng: r.rng("instance", ord), ec2: ec2Pending,
		life: lifePendingWait, health: healthy, launchedAt: r.now(), node: -1}
	in.keepMark = in.rng.IntN(100) < 15
	in.restart = in.rng.IntN(2) == 0
	r.insts[id] = in
	r.order = append(r.order, in)
	r.syncGroup(in)
	r.after(r.tm.Pending.draw(in.rng), "running "+id, func() { r.running(in) })
	r.beginAction(in, true)
	r.stateChange(in, ec2Pending)
}

// running ends in's pending window.
func (r *run) running(in *instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if in.ec2 != ec2Pending {
		return
	}
	in.ec2 = ec2Running
	r.syncGroup(in)
	r.stateChange(in, ec2Running)
}

// beginAction puts in into the wait state of a lifecycle hook and sends its event.
// r.mu must be held.
func (r *run) beginAction(in *instance, launching bool) {
	a := &action{key: actionKey{r.hookFor(launching), in.id}, inst: in, start: r.now(), beat: r.now()}
	r.actions[a.key] = a
	r.scheduleExpiry(a)
	kind := EvTerminate
	if launching {
		kind = EvLaunch
	}
	r.emit(kind, in, a)
}

func (r *run) scheduleExpiry(a *action) {
	r.schedule(a.beat+r.tm.HookTimeout, "expiry "+a.key.hook+" "+a.key.instance, func() { r.expiry(a) })
}

// expiry ends a lifecycle action whose heartbeat timeout passed with its default
// result; one that had a heartbeat since is looked at again later.
func (r *run) expiry(a *action) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.done {
		return
	}
	if r.now() < a.beat+r.tm.HookTimeout {
		r.scheduleExpiry(a)
		return
	}
	r.expire(a, false)
}

// expire ends a (pending) lifecycle action with its default result, as Auto Scaling
// does when its heartbeat timeout passes. r.mu must be held.
func (r *run) expire(a *action, lost bool) {
	a.done, a.expired, a.lost = true, true, lost
	r.doneAt[a.key] = r.now()
	r.e.ExpireLifecycleAction(r.cfg.ASGName, a.key.hook, a.key.instance)
	if a.key.hook == r.cfg.LaunchHook {
		a.result = resultAbandon
		r.launchEnded(a.inst, resultAbandon)
	} else {
		a.result = resultContinue
		r.terminateEnded(a.inst)
	}
}

// beat records a heartbeat of an action (seen by the observed Auto Scaling client).
func (r *run) beat(hook, instance string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a := r.actions[actionKey{hook, instance}]; a != nil && !a.done {
		a.beat = r.now()
	}
}

// completed applies a CompleteLifecycleAction the proxy answered; leases were read
// after it (for a terminate action). r.mu must be held.
func (r *run) completed(c emulator.LifecycleCall, leases []lease.Lease) {
	a := r.actions[actionKey{c.Hook, c.InstanceID}]
	if a == nil || c.ASG != r.cfg.ASGName {
		return
	}
	if a.done {
		if !a.expired {
			r.violate("lifecycle-once", "lifecycle action %s of %s completed twice (%s, then %s)", c.Hook, c.InstanceID, a.result, c.Result)
		}
		return
	}
	a.done, a.result = true, c.Result
	r.doneAt[a.key] = r.now()
	if a.key.hook == r.cfg.LaunchHook {
		r.launchEnded(a.inst, c.Result)
		return
	}
	r.checkContinue(a, c, leases)
	r.terminateEnded(a.inst)
}

// launchEnded moves an instance on after its launch lifecycle action: in service, or
// (abandoned) terminating. r.mu must be held.
func (r *run) launchEnded(in *instance, result string) {
	if in.life != lifePendingWait {
		return
	}
	if result == resultContinue && !in.dead {
		in.life = lifeInService
		r.abandons = 0
		r.syncGroup(in)
		return
	}
	r.abandons++
	r.relaunch = r.now() + time.Duration(min(r.abandons, 8))*r.tm.Relaunch
	r.after(r.relaunch-r.now()+time.Millisecond, "relaunch", func() {})
	r.startTermination(in, causeAbandoned)
}

// startTermination puts in into Terminating:Wait and sends its terminate lifecycle
// action. r.mu must be held.
func (r *run) startTermination(in *instance, cause string) {
	if in.life == lifeTermWait || in.life == lifeTermProceed || in.life == lifeTerminated {
		return
	}
	r.lastAZ = in.az
	in.life = lifeTermWait
	r.syncGroup(in)
	r.note("terminating %s (%s)", in.id, cause)
	r.beginAction(in, false)
}

// terminateEnded moves an instance on after its terminate lifecycle action:
// Terminating:Proceed, then shutting-down (the operating system stops Kafka), then
// terminated. r.mu must be held.
func (r *run) terminateEnded(in *instance) {
	if in.life != lifeTermWait {
		return
	}
	in.life, in.refresh = lifeTermProceed, false
	if in.ec2 == ec2Terminated {
		r.syncGroup(in)
		r.after(time.Second, "gone "+in.id, func() { r.gone(in) })
		return
	}
	in.ec2 = ec2ShuttingDown
	r.syncGroup(in)
	r.stateChange(in, ec2ShuttingDown)
	down := r.tm.ShuttingDown.draw(in.rng)
	stop := min(r.tm.OSStopsKafka.draw(in.rng), down)
	r.after(stop, "os-stops-kafka "+in.id, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.stopBroker(in, stopOS, "the operating system shut down")
	})
	r.after(down, "terminated "+in.id, func() { r.terminate(in) })
}

// terminate ends in's shutting-down window: terminated at moto (which detaches its
// volumes, as EC2 does) and its secondary ENIs detached (which moto does not do).
func (r *run) terminate(in *instance) {
	r.mu.Lock()
	if in.ec2 == ec2Terminated {
		// It died during its shutting-down window (die): the group's termination ends
		// all the same.
		if in.life == lifeTermProceed {
			in.life = lifeTerminated
			r.syncGroup(in)
		}
		r.mu.Unlock()
		return
	}
	r.stopBroker(in, stopCrash, "the instance terminated")
	r.mu.Unlock()
	r.terminateAtMoto(in)
	r.mu.Lock()
	defer r.mu.Unlock()
	in.ec2 = ec2Terminated
	if in.life == lifeTermProceed {
		in.life = lifeTerminated
	}
	r.syncGroup(in)
	r.stateChange(in, ec2Terminated)
}

// gone takes an instance that died earlier out of the group.
func (r *run) gone(in *instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if in.life == lifeTermProceed {
		in.life = lifeTerminated
		r.syncGroup(in)
	}
}

// terminateAtMoto terminates in at moto and detaches the ENIs moto leaves attached.
func (r *run) terminateAtMoto(in *instance) {
	ctx, cancel := context.WithTimeout(r.ctx, emulator.SetupTimeout)
	defer cancel()
	if err := r.e.TerminateInstance(ctx, in.id); err != nil {
		r.simError(err)
		return
	}
	out, err := r.d.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{
		Filters: []ec2Filter{{Name: aws.String("attachment.instance-id"), Values: []string{in.id}}}})
	if err != nil {
		r.simError(fmt.Errorf("ENIs of %s: %w", in.id, err))
		return
	}
	for _, n := range out.NetworkInterfaces {
		if n.Attachment == nil || aws.ToInt32(n.Attachment.DeviceIndex) == 0 {
			continue
		}
		// Not found is not an error: a handler detached (or moved) the ENI since the
		// describe.
		if _, err := r.d.ec2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: n.Attachment.AttachmentId, Force: aws.Bool(true)}); awsapi.IgnoreNotFound(err) != nil {
			r.simError(fmt.Errorf("detaching ENI %s from terminated %s: %w", aws.ToString(n.NetworkInterfaceId), in.id, err))
		}
	}
}

// die kills in without a lifecycle hook: terminated at once, its broker crashed. The
// group notices later and replaces it.
func (r *run) die(in *instance) {
	r.mu.Lock()
	if in.ec2 == ec2Terminated || in.dead {
		r.mu.Unlock()
		return
	}
	in.dead = true
	r.fault("broker-dies")
	r.stopBroker(in, stopCrash, "its instance died")
	r.mu.Unlock()
	r.terminateAtMoto(in)
	r.mu.Lock()
	defer r.mu.Unlock()
	in.ec2 = ec2Terminated
	r.syncGroup(in)
	r.stateChange(in, ec2Terminated)
	r.after(r.tm.HealthCheck.draw(in.rng), "health-check "+in.id, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if in.life != lifePendingWait && in.life != lifeInService {
			return
		}
		in.health = unhealthy
		if a := r.actions[actionKey{r.cfg.LaunchHook, in.id}]; a != nil && !a.done {
			r.expire(a, false) // its launch cannot complete: abandoned
			return
		}
		r.startTermination(in, causeDeadHealthy)
	})
}

// pick returns the instance at Pick's place among those ok accepts (launch order).
func (r *run) pick(p float64, ok func(*instance) bool) *instance {
	var c []*instance
	for _, in := range r.order {
		if ok(in) {
			c = append(c, in)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[min(int(p*float64(len(c))), len(c)-1)]
}

func inService(in *instance) bool {
	return in.life == lifeInService && in.ec2 == ec2Running && !in.dead
}

// scaleIn lowers the desired capacity by n and terminates n instances in service,
// from the AZ with the most instances, oldest first. r.mu must be held.
func (r *run) scaleIn(n int) {
	n = min(n, r.desired-1)
	for range n {
		perAZ := map[string][]*instance{}
		for _, in := range r.order {
			if in.active() {
				perAZ[in.az] = append(perAZ[in.az], in)
			}
		}
		var victim *instance
		for _, sn := range r.st.World.Subnets {
			for _, in := range perAZ[sn.AZ] {
				if in.life != lifeInService {
					continue
				}
				if victim == nil || len(perAZ[sn.AZ]) > len(perAZ[victim.az]) {
					victim = in
				}
				break
			}
		}
		if victim == nil {
			return
		}
		r.desired--
		r.startTermination(victim, causeScaleIn)
	}
}

// startRefresh begins an instance refresh of the instances in service. r.mu must be
// held.
func (r *run) startRefresh() {
	if r.refresh != nil {
		return
	}
	rs := &refreshState{}
	for _, in := range r.order {
		if in.life == lifeInService {
			rs.queue = append(rs.queue, in.id)
		}
	}
	r.refresh = rs
}

// refreshStep moves an instance refresh on: one instance at a time is terminated
// (terminate first), then replaced; the next waits until every instance is in
// service again, plus the warm-up. r.mu must be held.
func (r *run) refreshStep() {
	rs := r.refresh
	if rs == nil {
		return
	}
	if rs.cur != "" {
		in := r.insts[rs.cur]
		if in.life == lifeTermWait {
			return
		}
		n, all := 0, true
		for _, x := range r.order {
			if x.active() {
				n++
				all = all && x.life == lifeInService
			}
		}
		if n < r.desired || !all {
			return
		}
		rs.cur, rs.next = "", r.now()+r.tm.RefreshWarmup
		r.after(r.tm.RefreshWarmup, "refresh warm-up", func() {})
		return
	}
	if r.now() < rs.next {
		return
	}
	for len(rs.queue) > 0 {
		id := rs.queue[0]
		rs.queue = rs.queue[1:]
		in := r.insts[id]
		if in.life != lifeInService {
			continue
		}
		rs.cur, in.refresh = id, true
		r.startTermination(in, causeRefresh)
		return
	}
	r.refresh = nil
}

// evict runs `slotctl evict <slot> --yes` on the slot of an instance in service.
func (r *run) evict(p float64) {
	r.mu.Lock()
	in := r.pick(p, func(in *instance) bool { return inService(in) && in.node >= 0 && in.kafka == kafkaRunning })
	if in == nil {
		r.mu.Unlock()
		return
	}
	s := in.node
	r.busy++
	r.mu.Unlock()
	code, out := r.slotctl("evict", fmt.Sprint(s), "--yes")
	r.mu.Lock()
	r.busy--
	r.note("slotctl evict %d: exit %d: %s", s, code, strings.TrimSpace(out))
	r.mu.Unlock()
}

// groupTerminations starts the terminate lifecycle of every instance the proxy's
// group model was asked to terminate (slotctl evict). r.mu must be held.
func (r *run) groupTerminations() {
	ts := r.e.GroupTerminations()
	for _, id := range ts[min(r.termSeen, len(ts)):] {
		if in := r.insts[id]; in != nil {
			in.life = lifeInService // the model put it in Terminating:Wait; the group starts it properly
			r.startTermination(in, causeEvict)
		}
	}
	r.termSeen = len(ts)
}

// pendingActions returns the lifecycle actions still pending, in launch order.
func (r *run) pendingActions() []*action {
	var out []*action
	for _, in := range r.order {
		for _, launching := range []bool{true, false} {
			if a := r.actions[actionKey{r.hookFor(launching), in.id}]; a != nil && !a.done {
				out = append(out, a)
			}
		}
	}
	return out
}

// settled reports whether the group is where the plan left it: the desired capacity
// in service, nothing launching or terminating, no action pending, no refresh. r.mu
// must be held.
func (r *run) settled() bool {
	n := 0
	for _, in := range r.order {
		switch in.life {
		case lifeInService:
			if in.dead {
				return false
			}
			n++
		case lifeTerminated:
		default:
			return false
		}
	}
	return n == r.desired && r.refresh == nil && len(r.pendingActions()) == 0
}

// slotctl runs slotctl with args against the proxy, configured as the functions are.
func (r *run) slotctl(args ...string) (int, string) {
	var out strings.Builder
	code := demoSlotctl(r.ctx, r.st, r.e.AWSConfig(), args, &out)
	return code, out.String()
}

// note logs a line of the simulator's own into the run's log.
func (r *run) note(format string, args ...any) {
	fmt.Fprintf(r.logs, "{\"sim\":%q,\"at\":%.1f}\n", fmt.Sprintf(format, args...), r.now().Seconds())
}

// simError records a failure of the simulator itself.
func (r *run) simError(err error) {
	if r.ctx.Err() != nil {
		return
	}
	r.note("simulator error: %v", err)
	r.errMu.Lock()
	defer r.errMu.Unlock()
	if r.res.Err == nil {
		r.res.Err = err
	}
}
