package asgsim

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/test/emulator"
	"github.com/slotkeeper/slotkeeper/test/fakekafka"
)

// Invariants are the invariants the campaign checks, by name, with what each says.
var Invariants = []struct{ Name, Says string }{
	{"one-holder", "a slot has at most one holder (one broker per node id; a broker in service holds its slot's lease), and a live instance holds at most one slot"},
	{"attach-to-holder", "a slot's volume and ENI are attached only to the instance that holds the slot's lease (claimed, when it is attached), or left on a previous holder, or on nothing"},
	{"one-attachment", "a volume is never attached to two instances"},
	{"never-deleted", "a volume or ENI a slot recorded is never deleted (and no delete call is made)"},
	{"never-shrunk", "a volume never gets smaller"},
	{"never-format-data", "a volume that held a broker's data is never formatted"},
	{"identity", "a slot's recorded volume and ENI never change, and no volume or ENI that no slot records is ever attached"},
	{"lease-versions", "a slot's lease version only grows, and one version has one holder"},
	{"removal-safety", "slotkeeper never stops a broker when that takes a partition below min ISR or the controller quorum below a caught-up majority, unless it alerted that it forces an unsafe termination"},
	{"one-removal-at-a-time", "slotkeeper stops no broker while another removal it made is in progress, unless it alerted that it forces an unsafe termination"},
	{"lifecycle-once", "every lifecycle action is completed at most once; an invocation that returns without error has completed its action; an action left to its default result is left so knowingly (every delivery failed, came late, or its heartbeats were lost)"},
	{"early-continue", "a terminate lifecycle action is completed with CONTINUE only once the instance holds no slot and its broker is stopped (or the failed stop was alerted)"},
	{"force-detach-running", "a volume is never forced off an instance that has it mounted (Kafka may run), unless past an explicit bound that alerted"},
	{"converge", "once the system quiesces, the group is at its desired capacity, and every slot is bound to a running broker in service that has its volume and ENI, or free with its volume and ENI available"},
	{"converge-dns", "once the system quiesces, the broker-N and bootstrap records match the leases"},
	{"converge-alarms", "once the system quiesces, every bound slot's disk alarm watches its holder"},
	{"converge-growth", "once the system quiesces, no growth is left pending"},
}

// snapshot is the state of the world read at moto after a step.
type snapshot struct {
	leases map[int]lease.Lease
	insts  map[string]map[string]string // instance -> tags
	vols   map[string]ec2types.Volume
	enis   map[string]ec2types.NetworkInterface
	// mapped: volume -> the instances not terminated whose block device mappings list
	// it, in two reads of the instances, one before and one after the volumes were
	// read (see instanceMappings). Moto keeps one attachment per volume and lets an
	// attach of an in-use volume replace it (AWS refuses: VolumeInUse), but the first
	// instance keeps the volume in its mappings until a detach from it (or its
	// termination): the only trace of a double attach.
	mapped map[string][]string
	// terminated: the instances terminated at the first read.
	terminated map[string]bool
}

// instanceMappings returns, for each volume, the instances not terminated whose
// block device mappings list it, and the terminated instances.
func instanceMappings(out *ec2.DescribeInstancesOutput) (mapped map[string][]string, terminated map[string]bool) {
	mapped, terminated = map[string][]string{}, map[string]bool{}
	for _, res := range out.Reservations {
		for _, i := range res.Instances {
			id := aws.ToString(i.InstanceId)
			if i.State != nil && i.State.Name == ec2types.InstanceStateNameTerminated {
				terminated[id] = true
				continue
			}
			for _, m := range i.BlockDeviceMappings {
				if m.Ebs != nil && m.Ebs.VolumeId != nil {
					mapped[*m.Ebs.VolumeId] = append(mapped[*m.Ebs.VolumeId], id)
				}
			}
		}
	}
	return mapped, terminated
}

// stillMapped returns the volume -> instance mappings of first that second has too.
func stillMapped(first, second map[string][]string) map[string][]string {
	out := map[string][]string{}
	for id, on := range first {
		for _, i := range on {
			if slices.Contains(second[id], i) {
				out[id] = append(out[id], i)
			}
		}
	}
	return out
}

// liveAttachments returns the instances volume id is attached to, as its attachments
// and the instances' mappings say, leaving out terminated instances (moto lets a
// volume be attached to a terminated instance; AWS refuses).
func (sn *snapshot) liveAttachments(id string, v ec2types.Volume) []string {
	var on []string
	for _, i := range append(volumeAttachments(v), sn.mapped[id]...) {
		if !sn.terminated[i] && !slices.Contains(on, i) {
			on = append(on, i)
		}
	}
	return on
}

// take reads the world: the group's instances, the cluster's volumes and ENIs, and
// the leases.
func (r *run) take(ctx context.Context) (*snapshot, error) {
	sn := &snapshot{leases: map[int]lease.Lease{}, insts: map[string]map[string]string{}, vols: map[string]ec2types.Volume{},
		enis: map[string]ec2types.NetworkInterface{}}
	groupInstances := &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: aws.String("tag:" + resources.TagASGName), Values: []string{r.cfg.ASGName}}}}
	ins, err := r.d.ec2.DescribeInstances(ctx, groupInstances)
	if err != nil {
		return nil, fmt.Errorf("instances: %w", err)
	}
	sn.mapped, sn.terminated = instanceMappings(ins)
	for _, res := range ins.Reservations {
		for _, i := range res.Instances {
			tags := map[string]string{}
			for _, t := range i.Tags {
				tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
			}
			sn.insts[aws.ToString(i.InstanceId)] = tags
		}
	}
	cluster := []ec2types.Filter{{Name: aws.String("tag:" + resources.TagCluster), Values: []string{r.cfg.Cluster}}}
	vols, err := r.d.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: cluster})
	if err != nil {
		return nil, fmt.Errorf("volumes: %w", err)
	}
	for _, v := range vols.Volumes {
		sn.vols[aws.ToString(v.VolumeId)] = v
	}
	// The handlers run while the world is read: a volume may have been detached from
	// an instance and attached to another between the two reads. A volume that looks
	// attached to two instances counts only the mappings that a second read of the
	// instances, after the volumes, still shows; a real double attach stays.
	if slices.ContainsFunc(slices.Collect(maps.Keys(sn.vols)), func(id string) bool { return len(sn.liveAttachments(id, sn.vols[id])) > 1 }) {
		again, err := r.d.ec2.DescribeInstances(ctx, groupInstances)
		if err != nil {
			return nil, fmt.Errorf("instances again: %w", err)
		}
		mapped2, _ := instanceMappings(again)
		sn.mapped = stillMapped(sn.mapped, mapped2)
	}
	enis, err := r.d.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: cluster})
	if err != nil {
		return nil, fmt.Errorf("ENIs: %w", err)
	}
	for _, n := range enis.NetworkInterfaces {
		sn.enis[aws.ToString(n.NetworkInterfaceId)] = n
	}
	// The leases last: a resource seen attached was recorded before its attach, so
	// leases read after it record it.
	leases, err := r.d.store.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("leases: %w", err)
	}
	for _, l := range leases {
		sn.leases[l.Slot] = l
	}
	// A resource recorded after the listings were read is described by its id.
	var vids, eids []string
	for _, l := range leases {
		if _, ok := sn.vols[l.VolumeID]; l.VolumeID != "" && !ok {
			vids = append(vids, l.VolumeID)
		}
		if _, ok := sn.enis[l.ENIID]; l.ENIID != "" && !ok {
			eids = append(eids, l.ENIID)
		}
	}
	for _, id := range vids {
		out, err := r.d.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
		if err != nil && !resourcesGone(err) {
			return nil, fmt.Errorf("volume %s: %w", id, err)
		}
		if err == nil {
			for _, v := range out.Volumes {
				sn.vols[id] = v
			}
		}
	}
	for _, id := range eids {
		out, err := r.d.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
		if err != nil && !resourcesGone(err) {
			return nil, fmt.Errorf("ENI %s: %w", id, err)
		}
		if err == nil {
			for _, n := range out.NetworkInterfaces {
				sn.enis[id] = n
			}
		}
	}
	return sn, nil
}

// boundTo returns the slot instance id holds bound at the version of its lease tag,
// with the slot's volume and ENI attached to it: what its user data waits for.
func (sn *snapshot) boundTo(id string) (int, bool) {
	tags := sn.insts[id]
	for s, l := range sn.leases {
		if l.State != lease.Bound || l.Holder != id || tags[resources.TagLease] != strconv.FormatInt(l.Version, 10) {
			continue
		}
		if v, ok := sn.vols[l.VolumeID]; !ok || attachedTo(v) != id {
			return 0, false
		}
		if l.ENIID != "" {
			if e, ok := sn.enis[l.ENIID]; !ok || eniAttachedTo(e) != id {
				return 0, false
			}
		}
		return s, true
	}
	return 0, false
}

func eniAttachedTo(e ec2types.NetworkInterface) string {
	if e.Attachment == nil || e.Attachment.Status == ec2types.AttachmentStatusDetached {
		return ""
	}
	return aws.ToString(e.Attachment.InstanceId)
}

func volumeAttachments(v ec2types.Volume) []string {
	var out []string
	for _, a := range v.Attachments {
		if a.State != ec2types.VolumeAttachmentStateDetached {
			out = append(out, aws.ToString(a.InstanceId))
		}
	}
	return out
}

// check reads the world after a step, checks the invariants that hold at every step,
// and lets the world react (the brokers' user data, the group's capacity, an instance
// refresh).
func (r *run) check() {
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	sn, err := r.take(ctx)
	if err != nil {
		r.simError(fmt.Errorf("reading the world: %w", err))
		return
	}
	forbidden := r.e.Forbidden()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Checks++
	r.last = sn
	if len(forbidden) > 0 {
		r.violate("never-deleted", "the code under test called %s", strings.Join(forbidden, ", "))
	}
	r.checkState(sn)
	r.agent(sn)
	r.capacity()
	r.refreshStep()
}

// checkState checks the invariants that hold after every step. r.mu must be held.
func (r *run) checkState(sn *snapshot) {
	s := &r.seen
	held := map[string][]int{}
	for slot, l := range sn.leases {
		// lease-versions
		if l.Version < s.version[slot] {
			r.violate("lease-versions", "slot %d's version went from %d back to %d", slot, s.version[slot], l.Version)
		}
		s.version[slot] = max(s.version[slot], l.Version)
		if l.Holder != "" && l.State != lease.Free {
			k := [2]int64{int64(slot), l.Version}
			if h, ok := s.atVersion[k]; ok && h != l.Holder {
				r.violate("lease-versions", "slot %d has two holders at version %d: %s and %s", slot, l.Version, h, l.Holder)
			}
			s.atVersion[k] = l.Holder
			if s.holders[slot] == nil {
				s.holders[slot] = map[string]bool{}
			}
			s.holders[slot][l.Holder] = true
			if l.State == lease.Bound || l.State == lease.Draining {
				held[l.Holder] = append(held[l.Holder], slot)
			}
		}
		for _, h := range l.History {
			if h.Instance != "" && h.To != lease.Free {
				if s.holders[slot] == nil {
					s.holders[slot] = map[string]bool{}
				}
				s.holders[slot][h.Instance] = true
			}
		}
		// identity: recorded ids never change
		for _, kind := range []string{lease.KindVolume, lease.KindENI} {
			id := l.Recorded(kind)
			if id == "" {
				continue
			}
			if s.recorded[slot] == nil {
				s.recorded[slot] = map[string]string{}
			}
			if old := s.recorded[slot][kind]; old != "" && old != id {
				r.violate("identity", "slot %d's recorded %s changed from %s to %s", slot, kind, old, id)
			}
			s.recorded[slot][kind] = id
			s.everVols[id] = true
		}
	}
	// one-holder
	for id, slots := range held {
		if len(slots) > 1 {
			slices.Sort(slots)
			r.violate("one-holder", "instance %s holds slots %v", id, slots)
		}
	}
	// A broker that runs as node N on a running instance (in service or leaving: in
	// Terminating:Wait it still serves) holds slot N's lease until slotkeeper stopped
	// it; only a stop that failed, alerted, lets the lease go first.
	for _, in := range r.order {
		if in.kafka != kafkaRunning || in.ec2 != ec2Running {
			continue
		}
		if in.life != lifeInService && r.alerted("volume left attached", in.id) {
			continue
		}
		if l, ok := sn.leases[in.node]; !ok || l.Holder != in.id || (l.State != lease.Bound && l.State != lease.Draining) {
			r.violate("one-holder", "broker %d runs on %s (%s), but slot %d's lease is %s by %q", in.node, in.id, in.life, in.node, l.State, l.Holder)
		}
	}
	// attach-to-holder, one-attachment, identity, never-shrunk
	recordedBy := map[string]int{}
	for slot, l := range sn.leases {
		for _, kind := range []string{lease.KindVolume, lease.KindENI} {
			if id := l.Recorded(kind); id != "" {
				recordedBy[id] = slot
			}
		}
	}
	for id, v := range sn.vols {
		on := sn.liveAttachments(id, v)
		if len(on) > 1 {
			r.violate("one-attachment", "volume %s is attached to %v", id, on)
		}
		if size := aws.ToInt32(v.Size); size < s.size[id] {
			r.violate("never-shrunk", "volume %s went from %d GiB to %d GiB", id, s.size[id], size)
		} else {
			s.size[id] = size
		}
		for _, to := range volumeAttachments(v) {
			if !slices.Contains(on, to) {
				on = append(on, to) // terminated: attach-to-holder still looks at it
			}
		}
		for _, to := range on {
			r.attachedOK(sn, recordedBy, lease.KindVolume, id, to)
		}
	}
	for id, e := range sn.enis {
		if to := eniAttachedTo(e); to != "" {
			r.attachedOK(sn, recordedBy, lease.KindENI, id, to)
		}
	}
	// never-deleted
	for id := range s.everVols {
		_, v := sn.vols[id]
		_, e := sn.enis[id]
		if !v && !e {
			r.violate("never-deleted", "%s, once recorded by a slot, is gone", id)
		}
	}
}

// attachedOK checks that resource id, attached to instance to, is a slot's recorded
// resource attached to that slot's holder or one of its previous holders.
func (r *run) attachedOK(sn *snapshot, recordedBy map[string]int, kind, id, to string) {
	slot, ok := recordedBy[id]
	if !ok {
		r.violate("identity", "%s %s, which no slot records, is attached to %s", kind, id, to)
		return
	}
	l := sn.leases[slot]
	if l.State != lease.Free && l.Holder == to || r.seen.holders[slot][to] {
		return
	}
	r.violate("attach-to-holder", "%s %s of slot %d is attached to %s, which never held the slot (lease %s by %q)", kind, id, slot, to, l.State, l.Holder)
}

// checkRemoval checks a broker that slotkeeper's stop command is about to take out:
// removal safety on the true ISRs and quorum, and one removal at a time. r.mu must
// be held.
func (r *run) checkRemoval(in *instance, n *node, mode string) {
	excused := r.alerted("unsafe termination forced", in.id)
	recent := r.now()-r.lastFailure < failureGrace && r.lastFailure > 0
	broker := int32(n.slot)
	var why []string
	if r.inSync(broker) {
		for _, pt := range r.parts {
			if len(pt.replicas) <= fakekafka.MinISR || !slices.Contains(pt.replicas, broker) {
				continue
			}
			if isr := r.truthISR(pt); len(isr) <= fakekafka.MinISR {
				why = append(why, fmt.Sprintf("%s/%d would keep ISR %v of min %d", pt.topic, pt.p, without(isr, broker), fakekafka.MinISR))
			}
		}
	}
	voters := min(3, len(r.nodes))
	if int(broker) < voters && r.inSync(broker) {
		up := 0
		for v := range voters {
			if int32(v) != broker && r.inSync(int32(v)) {
				up++
			}
		}
		if up <= voters/2 {
			why = append(why, fmt.Sprintf("the controller quorum would keep %d caught-up voters of %d", up, voters))
		}
	}
	if len(why) > 0 {
		switch {
		case excused:
			r.note("broker %d on %s leaves unsafely, with the alert: %s", broker, in.id, strings.Join(why, "; "))
		case recent:
			r.note("broker %d on %s leaves unsafely right after a failure (%.0fs ago): %s", broker, in.id, (r.now() - r.lastFailure).Seconds(), strings.Join(why, "; "))
		default:
			r.violate("removal-safety", "slotkeeper stopped broker %d on %s (%s): %s", broker, in.id, mode, strings.Join(why, "; "))
		}
	}
	// One removal at a time: no other broker slotkeeper stopped is still being removed
	// (its instance still holds its slot and has not terminated).
	for id, rm := range r.removals {
		other := r.insts[id]
		if id == in.id || other == nil || other.ec2 == ec2Terminated || r.last == nil {
			continue
		}
		l := r.last.leases[rm.slot]
		if !l.HeldBy(id) || l.Version != rm.version {
			continue
		}
		if excused {
			r.note("broker %d on %s leaves while the removal of broker %d on %s is in progress, with the alert", broker, in.id, rm.slot, id)
			continue
		}
		r.violate("one-removal-at-a-time", "slotkeeper stopped broker %d on %s while its removal of broker %d on %s (stopped %.0fs ago) is still in progress (slot %d %s)",
			broker, in.id, rm.slot, id, (r.now() - rm.at).Seconds(), rm.slot, l.State)
	}
	v := int64(-1)
	if r.last != nil {
		v = r.last.leases[n.slot].Version
	}
	r.removals[in.id] = removal{slot: n.slot, version: v, at: r.now()}
}

// removal is a broker slotkeeper stopped.
type removal struct {
	slot    int
	version int64
	at      time.Duration
}

// failureGrace is how long after a failure (a broker crash, an instance death) an
// unsafe removal is laid at the failure's door: the removal's verdict may have been
// taken before it.
const failureGrace = 60 * time.Second

func without(s []int32, x int32) []int32 {
	var out []int32
	for _, v := range s {
		if v != x {
			out = append(out, v)
		}
	}
	return out
}

// checkContinue checks a terminate lifecycle action completed with CONTINUE: the
// instance must hold no slot it held when the completion was sent, and its broker
// must be stopped, unless the failed stop was alerted. leases were read after the
// completion. r.mu must be held.
func (r *run) checkContinue(a *action, c emulator.LifecycleCall, leases []lease.Lease) {
	if c.Result != resultContinue {
		return
	}
	id := a.key.instance
	for _, l := range leases {
		if !l.HeldBy(id) {
			continue
		}
		claimed, err := time.Parse(time.RFC3339Nano, l.ClaimedAt)
		if err == nil && claimed.After(c.At) {
			continue // claimed after the completion (a launch invocation still running for it)
		}
		r.violate("early-continue", "the terminate action of %s was completed with CONTINUE while it still holds slot %d (%s, version %d)", id, l.Slot, l.State, l.Version)
	}
	in := a.inst
	if in.kafka == kafkaRunning && in.ec2 == ec2Running && !r.alerted("volume left attached", id) {
		r.violate("early-continue", "the terminate action of %s was completed with CONTINUE while its broker %d still runs (no failed stop alerted)", id, in.node)
	}
}
