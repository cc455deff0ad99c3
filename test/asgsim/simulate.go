package asgsim

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"

	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/test/emulator"
)

// QuiesceFor bounds, in simulated time, how long a run waits after its last
// operation for the system to settle before the convergence checks.
const QuiesceFor = 90 * time.Minute

// Simulate runs case c on env: the deployment is built afresh, the group launches its
// instances, the plan's operations are applied at their times, and after the last
// one the run waits for the system to settle and checks that it converged. The
// invariants are checked after every step. Cancelling ctx ends the run early.
func Simulate(ctx context.Context, env *Env, c Case, tm Timing) Result {
	started := time.Now()
	plan := c.Plan()
	res := Result{Case: c, Slots: plan.Slots, Faults: map[string]int{}, Ops: map[string]int{}, Alerts: map[string]int{}, Known: map[string]int{}}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	name, err := env.fresh(ctx)
	if err != nil {
		res.Err = err
		return res
	}
	before := env.E.FaultCounts()
	r := &run{env: env, e: env.E, plan: plan, tm: tm, ctx: ctx, logs: &syncBuffer{limit: 4 << 20}, res: &res,
		insts: map[string]*instance{}, actions: map[actionKey]*action{}, vols: map[string]*volState{}, cmds: map[string]*command{},
		doneAt: map[actionKey]time.Duration{}, viol: map[string]bool{}, removals: map[string]removal{},
		seen: seenState{holders: map[int]map[string]bool{}, version: map[int]int64{}, atVersion: map[[2]int64]string{},
			recorded: map[int]map[string]string{}, size: map[string]int32{}, everVols: map[string]bool{}}}
	r.clk = newClock(tm.Scale)
	if err := r.setup(name); err != nil {
		res.Err = err
		r.close()
		return res
	}
	env.cur.Store(r)
	defer env.cur.Store(nil)
	r.clk = newClock(tm.Scale)

	r.mu.Lock()
	for _, op := range plan.Ops {
		r.schedule(op.At, "op "+op.Kind.String(), func() { r.apply(op) })
	}
	r.schedule(plan.Horizon, "quiet", func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.quiet = true
		r.armedDel, r.armedSSM = nil, nil
		r.e.ClearFaults()
		// The operator restarts every broker process that died for good.
		for _, in := range r.order {
			in.restart = true
		}
	})
	r.tick()
	r.desired = plan.Slots
	r.capacity()
	r.mu.Unlock()

	r.loop(plan.Horizon, func() bool { return false })
	r.loop(plan.Horizon+QuiesceFor, r.quiesced)
	r.converge()

	cancel()
	r.close()
	after := env.E.FaultCounts()
	for k, n := range after {
		if d := n - before[k]; d > 0 {
			res.Faults["aws:"+k.String()] += d
		}
	}
	res.Steps, res.Sim, res.Wall = r.step, r.now(), time.Since(started)
	if len(res.Violations) > 0 || res.Err != nil || os.Getenv("ASGSIM_FULL_LOG") != "" {
		res.Log = tail(r.logs.String(), 100000)
	}
	return res
}

// tick schedules the reconcile schedule's next event. r.mu must be held.
func (r *run) tick() {
	r.after(r.tm.ReconcileEvery, "tick:schedule", func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.scheduled()
		r.tick()
	})
}

// close waits for the invocations still running (the run's context is cancelled by
// then) and releases the Kafka client and kfake.
func (r *run) close() {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		n := r.inflight + r.busy
		r.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r.kcl != nil {
		r.kcl.Close()
	}
	if r.st != nil {
		r.st.Close()
	}
}

// poll applies what the proxy recorded since the last step: lifecycle actions
// completed (each a step, followed by a check) and terminations asked of the group.
func (r *run) poll() {
	cs := r.e.Completions()
	r.mu.Lock()
	fresh := cs[min(r.compSeen, len(cs)):]
	r.compSeen = len(cs)
	r.groupTerminations()
	r.mu.Unlock()
	if len(fresh) == 0 {
		return
	}
	var leases []lease.Lease
	if slices.ContainsFunc(fresh, func(c emulator.LifecycleCall) bool { return c.Hook == r.cfg.TerminateHook }) {
		ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
		var err error
		leases, err = r.d.store.List(ctx)
		cancel()
		if err != nil {
			r.simError(fmt.Errorf("leases after a completion: %w", err))
		}
	}
	r.mu.Lock()
	for _, c := range fresh {
		r.step++
		r.completed(c, leases)
	}
	r.mu.Unlock()
	r.check()
}

// apply applies one operation of the plan.
func (r *run) apply(op Op) {
	r.mu.Lock()
	r.opsDone++
	r.res.Ops[op.Kind.String()]++
	r.note("op %s", op)
	switch op.Kind {
	case ScaleOut:
		r.desired = min(r.desired+op.N, r.plan.Slots)
	case ScaleIn:
		r.scaleIn(op.N)
	case HealthReplace:
		if in := r.pick(op.Pick, inService); in != nil {
			in.health = unhealthy
			r.startTermination(in, causeHealth)
		}
	case Refresh:
		r.startRefresh()
	case Evict:
		r.mu.Unlock()
		r.evict(op.Pick)
		return
	case BrokerDies:
		in := r.pick(op.Pick, func(in *instance) bool { return in.ec2 != ec2Terminated && !in.dead })
		r.mu.Unlock()
		if in != nil {
			r.lastFailureNow()
			r.die(in)
		}
		return
	case KafkaGone:
		if in := r.pick(op.Pick, func(in *instance) bool { return inService(in) && in.kafka == kafkaRunning }); in != nil {
			r.lastFailure = r.now()
			r.crashKafka(in, op.Restart)
		}
	case GrowAlarm:
		if in := r.pick(op.Pick, func(in *instance) bool { return inService(in) && in.kafka == kafkaRunning }); in != nil {
			r.alarm(in.node, in.id, 85)
		}
	case LookAlike:
		r.mu.Unlock()
		r.lookAlike(op.Pick)
		return
	case LoseHeartbeats:
		if p := r.pendingActions(); len(p) > 0 {
			a := p[min(int(op.Pick*float64(len(p))), len(p)-1)]
			r.fault("lost-heartbeats")
			r.note("the heartbeats of %s's %s action are lost: it expires", a.key.instance, a.key.hook)
			r.expire(a, true)
		}
	case AWSFault:
		if !r.quiet {
			r.e.Inject(op.Fault)
		}
	case DeliveryFault:
		r.armedDel = append(r.armedDel, op)
	case StopFault:
		r.armedSSM = append(r.armedSSM, op)
	case ExtraReconcile:
		r.scheduled()
	}
	r.mu.Unlock()
}

func (r *run) lastFailureNow() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastFailure = r.now()
}

// lookAlike copies a slot's volume with its tags, as a backup tool that copies tags
// would: same AZ, the slot's data, no never-formatted mark.
func (r *run) lookAlike(p float64) {
	r.mu.Lock()
	var slots []int
	if r.last != nil {
		for s, l := range r.last.leases {
			if l.VolumeID != "" {
				slots = append(slots, s)
			}
		}
	}
	slices.Sort(slots)
	if len(slots) == 0 {
		r.mu.Unlock()
		return
	}
	s := slots[min(int(p*float64(len(slots))), len(slots)-1)]
	v, ok := r.last.vols[r.last.leases[s].VolumeID]
	r.mu.Unlock()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	out, err := r.d.ec2.CreateVolume(ctx, &ec2.CreateVolumeInput{
		AvailabilityZone: v.AvailabilityZone, Size: v.Size, VolumeType: v.VolumeType,
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeVolume, Tags: []ec2types.Tag{
			{Key: aws.String(resources.TagCluster), Value: aws.String(r.cfg.Cluster)},
			{Key: aws.String(resources.TagSlot), Value: aws.String(strconv.Itoa(s))},
			{Key: aws.String("Name"), Value: aws.String(fmt.Sprintf("slotkeeper-%s-%d", r.cfg.Cluster, s))}}}},
	})
	if err != nil {
		r.simError(fmt.Errorf("copying slot %d's volume: %w", s, err))
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	id := aws.ToString(out.VolumeId)
	*r.volume(id) = volState{hasFS: true, hasData: true, node: s}
	r.note("a backup tool made %s, a copy of slot %d's volume with its tags", id, s)
}

// quiesced reports whether the system has settled: the group as the plan left it,
// nothing running, and nothing left to deliver but the schedule.
func (r *run) quiesced() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inflight > 0 || r.busy > 0 || !r.settled() {
		return false
	}
	for _, ev := range r.q {
		if !strings.HasPrefix(ev.label, "tick:") && !strings.HasPrefix(ev.label, "expiry ") {
			return false
		}
	}
	for _, in := range r.order {
		if inService(in) && in.kafka != kafkaRefused && in.kafka != kafkaStopped && !(in.kafka == kafkaRunning && in.caughtUp) {
			return false // its broker is still starting or catching up
		}
	}
	return true
}

// converge runs a last reconcile and checks that the system converged.
func (r *run) converge() {
	if r.ctx.Err() != nil {
		return
	}
	r.mu.Lock()
	settled := r.settled()
	var why []string
	if !settled {
		for _, in := range r.order {
			if in.life != lifeTerminated && !(in.life == lifeInService && !in.dead) {
				why = append(why, fmt.Sprintf("%s %s/%s", in.id, in.life, in.ec2))
			}
		}
		why = append(why, fmt.Sprintf("desired %d", r.desired))
		if r.refresh != nil {
			why = append(why, "an instance refresh is still running")
		}
		for _, a := range r.pendingActions() {
			why = append(why, fmt.Sprintf("%s action of %s pending", a.key.hook, a.key.instance))
		}
	}
	for _, a := range r.actions {
		if a.expired && !a.lost && a.failures == 0 && a.dropped == 0 && !a.late {
			r.violate("lifecycle-once", "the %s action of %s was left to its default result, although no delivery of its event failed or came late (%d deliveries, %d succeeded)",
				a.key.hook, a.key.instance, a.deliveries, a.succeeded)
		}
	}
	r.scheduled()
	r.mu.Unlock()
	if !settled {
		r.mu.Lock()
		r.violate("converge", "the system did not settle within %s of the last operation: %s", QuiesceFor, strings.Join(why, "; "))
		r.mu.Unlock()
	}
	// The last reconcile (and its repairs) runs to its end.
	r.loop(r.now()+r.tm.ReconcileTimeout, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.inflight == 0 && !slices.ContainsFunc(r.q, func(e *event) bool {
			return strings.HasPrefix(e.label, "deliver") || strings.HasPrefix(e.label, "returned")
		})
	})
	ctx, cancel := context.WithTimeout(r.ctx, time.Minute)
	defer cancel()
	sn, err := r.take(ctx)
	if err != nil {
		r.simError(err)
		return
	}
	pending, perr := r.d.store.PendingGrowths(ctx)
	records, rerr := r.records(ctx)
	alarms, aerr := r.alarms(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Checks++
	r.step++
	r.checkState(sn)
	if settled {
		r.convergedSlots(sn)
	}
	switch {
	case perr != nil:
		r.simError(perr)
	case len(pending) > 0:
		r.violate("converge-growth", "growth still pending for slots %v", sortedIntKeys(pending))
	}
	if rerr != nil {
		r.simError(rerr)
	} else if want := r.wantRecords(sn); !mapsEqual(records, want) {
		r.violate("converge-dns", "records %v, want %v", records, want)
	}
	if aerr != nil {
		r.simError(aerr)
	} else {
		for s, l := range sn.leases {
			if l.State == lease.Bound && alarms[grow.AlarmName(r.cfg.Cluster, s)] != l.Holder {
				r.violate("converge-alarms", "slot %d's alarm watches %q, its holder is %s", s, alarms[grow.AlarmName(r.cfg.Cluster, s)], l.Holder)
			}
		}
	}
}

// convergedSlots checks every slot: bound to a running broker in service with its
// volume and ENI, or free with both available. r.mu must be held.
func (r *run) convergedSlots(sn *snapshot) {
	bound := 0
	for s := range r.plan.Slots {
		l := sn.leases[s]
		switch l.State {
		case lease.Bound:
			bound++
			in := r.insts[l.Holder]
			switch {
			case in == nil || !inService(in):
				r.violate("converge", "slot %d is bound to %s, which is not a running instance in service", s, l.Holder)
			case in.kafka == kafkaRefused && in.blankRefusal:
				// documented: counted in Known
			case in.kafka != kafkaRunning || in.node != s:
				r.violate("converge", "slot %d is bound to %s, whose broker is %s (%s)", s, l.Holder, in.kafka, in.refused)
			}
			if v, ok := sn.vols[l.VolumeID]; !ok || attachedTo(v) != l.Holder {
				r.violate("converge", "slot %d's volume %s is not attached to its holder %s", s, l.VolumeID, l.Holder)
			}
			if e, ok := sn.enis[l.ENIID]; l.ENIID != "" && (!ok || eniAttachedTo(e) != l.Holder) {
				r.violate("converge", "slot %d's ENI %s is not attached to its holder %s", s, l.ENIID, l.Holder)
			}
		case lease.Free, "":
			if v, ok := sn.vols[l.VolumeID]; ok && len(volumeAttachments(v)) > 0 {
				r.violate("converge", "free slot %d's volume %s is still attached to %v", s, l.VolumeID, volumeAttachments(v))
			}
			if e, ok := sn.enis[l.ENIID]; ok && eniAttachedTo(e) != "" {
				r.violate("converge", "free slot %d's ENI %s is still attached to %s", s, l.ENIID, eniAttachedTo(e))
			}
		default:
			r.violate("converge", "slot %d is still %s by %s", s, l.State, l.Holder)
		}
	}
	if bound != r.desired {
		r.violate("converge", "%d slots are bound, the group's desired capacity is %d", bound, r.desired)
	}
	for _, in := range r.order {
		if in.kafka == kafkaRefused && !in.blankRefusal {
			r.violate("converge", "the user data of %s refused to start Kafka: %s", in.id, in.refused)
		}
	}
}

// records reads the zone's A records at moto: name -> sorted IPs.
func (r *run) records(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	in := &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(r.cfg.DNS.HostedZoneID)}
	for {
		page, err := r.d.r53.ListResourceRecordSets(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("listing the zone: %w", err)
		}
		for _, rr := range page.ResourceRecordSets {
			if rr.Type != "A" {
				continue
			}
			var ips []string
			for _, v := range rr.ResourceRecords {
				ips = append(ips, aws.ToString(v.Value))
			}
			slices.Sort(ips)
			out[strings.TrimSuffix(strings.ToLower(aws.ToString(rr.Name)), ".")] = strings.Join(ips, ",")
		}
		if !page.IsTruncated {
			return out, nil
		}
		in.StartRecordName, in.StartRecordType = page.NextRecordName, page.NextRecordType
	}
}

// wantRecords is what the zone should hold, from the leases and the instances' true
// states: broker-N for every slot with an address, bootstrap for the bound slots whose
// holder runs.
func (r *run) wantRecords(sn *snapshot) map[string]string {
	want := map[string]string{}
	zone := strings.ToLower(strings.TrimSuffix(r.cfg.DNS.Name, "."))
	var boot []string
	for s, l := range sn.leases {
		if s < 0 || l.IP == "" {
			continue
		}
		want["broker-"+strconv.Itoa(s)+"."+zone] = l.IP
		if in := r.insts[l.Holder]; l.State == lease.Bound && in != nil && in.ec2 == ec2Running {
			boot = append(boot, l.IP)
		}
	}
	if len(boot) > 0 {
		// Two slots may record one address: moto draws an ENI's private address at
		// random from its subnet without checking that it is free (AWS never gives
		// out an address in use). The bootstrap record lists each address once.
		slices.Sort(boot)
		want["bootstrap."+zone] = strings.Join(slices.Compact(boot), ",")
	}
	return want
}

// alarms reads the slots' disk alarms: name -> the instance they watch.
func (r *run) alarms(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	in := &cloudwatch.DescribeAlarmsInput{AlarmNamePrefix: aws.String("slotkeeper-" + r.cfg.Cluster + "-disk-")}
	page, err := r.d.cw.DescribeAlarms(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("describing alarms: %w", err)
	}
	for _, a := range page.MetricAlarms {
		for _, d := range a.Dimensions {
			if aws.ToString(d.Name) == "InstanceId" {
				out[aws.ToString(a.AlarmName)] = aws.ToString(d.Value)
			}
		}
	}
	return out, nil
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func sortedIntKeys[V any](m map[int]V) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
