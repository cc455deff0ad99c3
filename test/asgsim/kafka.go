package asgsim

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/test/fakekafka"
)

// The Kafka model. Each slot is a node (its node id is the slot number); a node is
// up while a broker process runs as it on some instance, in sync once it has caught
// up (CatchUp after it started). What the brokers report (kfake's Metadata and
// DescribeQuorum answers, scripted) follows the model: a node that stopped cleanly
// (the stop command, the operating system's shutdown) leaves every ISR and the broker
// list at once; one that crashed answers nothing at once but stays in the ISRs it was
// in and registered until its session times out (SessionTimeout), as Kafka does. The
// first three nodes are the KRaft controller voters; the lowest caught-up one leads.

// node is one slot's broker identity in the model.
type node struct {
	slot     int
	on       *instance     // the instance running it, nil when none
	caughtUp bool          // in sync (in every ISR it replicates)
	lingers  time.Duration // a crashed node stays in the metadata until then
	lingerIn bool          // and in the ISRs (it was in sync when it crashed)
}

// part is one partition and its replicas.
type part struct {
	topic    string
	p        int32
	replicas []int32
}

// volState is what the simulator knows of a volume's contents.
type volState struct {
	hasFS   bool // a filesystem signature
	hasData bool // a broker wrote to it
	node    int  // the node id in its meta.properties (-1: none)
	damaged bool // its superblock was damaged (a forced detach of a mounted volume)
}

// Stop modes of a broker.
const (
	stopSSM    = "the stop command"
	stopOS     = "the operating system's shutdown"
	stopCrash  = "a crash"
	stopForced = "a forced detach of its volume"
)

// initKafka reads the partitions and publishes the initial model: no broker up.
func (r *run) initKafka() error {
	r.nodes = make([]*node, r.plan.Slots)
	for s := range r.nodes {
		r.nodes[s] = &node{slot: s}
	}
	for topic, pr := range topicsFor(r.plan.Slots) {
		for p := range int32(pr[0]) {
			reps := r.st.Kafka.Replicas(topic, p)
			if len(reps) == 0 {
				return fmt.Errorf("kfake has no replicas for %s/%d", topic, p)
			}
			r.parts = append(r.parts, part{topic: topic, p: p, replicas: reps})
		}
	}
	slices.SortFunc(r.parts, func(a, b part) int {
		if a.topic != b.topic {
			if a.topic < b.topic {
				return -1
			}
			return 1
		}
		return int(a.p - b.p)
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.publish()
	return nil
}

// inSync reports whether node n truly replicates (for the invariants).
func (r *run) inSync(n int32) bool {
	return int(n) < len(r.nodes) && r.nodes[n].on != nil && r.nodes[n].caughtUp
}

// truthISR returns a partition's in-sync replicas as they truly are.
func (r *run) truthISR(pt part) []int32 {
	var isr []int32
	for _, n := range pt.replicas {
		if r.inSync(n) {
			isr = append(isr, n)
		}
	}
	return isr
}

// publish scripts kfake's answers from the model. r.mu must be held.
func (r *run) publish() {
	k := r.st.Kafka
	now := r.now()
	for _, n := range r.nodes {
		up := n.on != nil
		k.SetDown(int32(n.slot), !up)
		if up || now < n.lingers {
			k.Register(int32(n.slot))
		} else {
			k.Unregister(int32(n.slot))
		}
	}
	for _, pt := range r.parts {
		var isr []int32
		for _, n := range pt.replicas {
			nd := r.nodes[n]
			if nd.on != nil && nd.caughtUp || now < nd.lingers && nd.lingerIn {
				isr = append(isr, n)
			}
		}
		if len(isr) == 0 {
			k.SetOffline(pt.topic, pt.p)
			continue
		}
		k.Restore(pt.topic, pt.p)
		k.SetISR(pt.topic, pt.p, isr...)
	}
	q := fakekafka.Quorum{Leader: -1, Behind: map[int32]time.Duration{}}
	for v := range min(3, len(r.nodes)) {
		q.Voters = append(q.Voters, int32(v))
		if r.nodes[v].on != nil && r.nodes[v].caughtUp {
			if q.Leader < 0 {
				q.Leader = int32(v)
			}
		} else {
			q.Behind[int32(v)] = time.Hour
		}
	}
	k.SetQuorum(q)
}

// startBroker starts Kafka on in as slot s's node. r.mu must be held.
func (r *run) startBroker(in *instance, s int, vol string) {
	n := r.nodes[s]
	if n.on != nil && n.on != in {
		r.violate("one-holder", "two brokers would run as node %d: on %s and on %s", s, n.on.id, in.id)
		return
	}
	in.kafka, in.node, in.mounted, in.caughtUp, in.refused = kafkaRunning, s, vol, false, ""
	r.e.HoldPlainDetach(in.id, true)
	n.on, n.caughtUp, n.lingers = in, false, 0
	r.note("broker %d started on %s (volume %s)", s, in.id, vol)
	r.after(r.tm.CatchUp.draw(in.rng), "caught-up "+in.id, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if n.on == in {
			n.caughtUp, in.caughtUp = true, true
			r.publish()
		}
	})
	r.publish()
}

// stopBroker stops the broker on in (if one runs) by mode, and unmounts its volume.
// r.mu must be held.
func (r *run) stopBroker(in *instance, mode, why string) {
	if in.kafka != kafkaRunning {
		r.unmount(in)
		return
	}
	n := r.nodes[in.node]
	if mode == stopSSM || mode == stopForced {
		r.checkRemoval(in, n, mode)
	} else if a := r.actions[actionKey{r.cfg.TerminateHook, in.id}]; a != nil && a.expired {
		// The group took the instance because its terminate action expired (lost
		// heartbeats, or no delivery in time), whatever slotkeeper was doing: its
		// broker leaving is a failure, as a death is, and a removal whose verdict
		// counted this broker may have been under way (failureGrace).
		r.lastFailure = r.now()
	}
	clean := mode == stopSSM || mode == stopOS
	n.on = nil
	if !clean {
		n.lingers, n.lingerIn = r.now()+r.tm.SessionTimeout, n.caughtUp
		r.after(r.tm.SessionTimeout, "session-timeout "+in.id, func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.publish()
		})
	}
	n.caughtUp, in.caughtUp = false, false
	in.kafka = kafkaStopped
	if !clean {
		in.kafka = kafkaCrashed
	}
	r.note("broker %d on %s stopped by %s (%s)", in.node, in.id, mode, why)
	r.unmount(in)
	r.publish()
}

// unmount releases in's data volume: a plain detach asked for while it was mounted
// (the proxy held it) now goes through. r.mu must be held.
func (r *run) unmount(in *instance) {
	if in.mounted == "" {
		return
	}
	vol := in.mounted
	in.mounted = ""
	r.e.HoldPlainDetach(in.id, false)
	asked := false
	for _, b := range r.e.Bodies("DetachVolume") {
		f := queryForm(b)
		if f.Get("VolumeId") == vol && f.Get("InstanceId") == in.id && f.Get("Force") != "true" {
			asked = true
		}
	}
	if !asked {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	if _, err := r.d.ec2.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: aws.String(vol), InstanceId: aws.String(in.id)}); err != nil && !resourcesGone(err) {
		r.simError(fmt.Errorf("finishing the held detach of %s from %s: %w", vol, in.id, err))
	}
}

// crashKafka kills the broker process of a running instance (KafkaGone).
func (r *run) crashKafka(in *instance, restart bool) {
	in.restart = restart
	r.fault("kafka-gone")
	r.stopBroker(in, stopCrash, "its process died")
}

// agent is the broker's user data and systemd, on every instance in service: once
// the instance holds its slot (bound lease at the version of its tag, volume and ENI
// attached), it starts Kafka after a while; after a crash, systemd starts it again
// when restart is set. r.mu must be held.
func (r *run) agent(sn *snapshot) {
	for _, in := range r.order {
		if !inService(in) || in.starting || in.kafka == kafkaRunning || in.kafka == kafkaRefused || in.kafka == kafkaStopped ||
			in.kafka == kafkaCrashed && !in.restart {
			continue
		}
		s, ok := sn.boundTo(in.id)
		if !ok {
			continue
		}
		in.starting = true
		delay := r.tm.KafkaStart.draw(in.rng)
		if in.kafka == kafkaCrashed {
			delay = r.tm.KafkaRestart.draw(in.rng)
		}
		r.after(delay, "kafka-start "+in.id, func() { r.kafkaStart(in, s) })
	}
}

// kafkaStart is the user data's mount and start: it reads the lease and the volume
// again, formats a volume only if it has no filesystem and carries the
// never-formatted mark of this instance's claim, refuses one whose log is another
// node's, and starts Kafka.
func (r *run) kafkaStart(in *instance, s int) {
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	fail := func(err error) {
		r.simError(err)
		r.mu.Lock()
		in.starting = false
		r.mu.Unlock()
	}
	l, err := r.d.store.Get(ctx, s)
	if err != nil {
		fail(fmt.Errorf("user data of %s: lease %d: %w", in.id, s, err))
		return
	}
	var vol *ec2types.Volume
	if l.VolumeID != "" {
		out, err := r.d.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{l.VolumeID}})
		if err != nil && !resourcesGone(err) {
			fail(fmt.Errorf("user data of %s: volume %s: %w", in.id, l.VolumeID, err))
			return
		}
		if out != nil && len(out.Volumes) == 1 {
			vol = &out.Volumes[0]
		}
	}
	tags, err := r.instanceTags(ctx, in.id)
	if err != nil {
		fail(err)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	in.starting = false
	if !inService(in) || in.kafka == kafkaRunning {
		return
	}
	if l.State != lease.Bound || l.Holder != in.id || strconv.FormatInt(l.Version, 10) != tags[resources.TagLease] || vol == nil || attachedTo(*vol) != in.id {
		return // not (or no longer) the slot's bound holder: the user data keeps waiting
	}
	v := r.volume(l.VolumeID)
	mark := tagValue(vol.Tags, resources.TagNeverFormatted)
	switch {
	case !v.hasFS && mark != "" && mark == tags[resources.TagLease]:
		if v.hasData {
			r.violate("never-format-data", "the user data of %s formats volume %s of slot %d, which holds broker data: its never-formatted mark %s matches the claim",
				in.id, l.VolumeID, s, mark)
		}
		v.hasFS, v.hasData, v.node, v.damaged = true, false, s, false
		if !in.keepMark {
			r.deleteMark(l.VolumeID)
		}
	case !v.hasFS:
		in.kafka, in.refused = kafkaRefused, fmt.Sprintf("volume %s has no filesystem and no never-formatted mark of claim %s (mark %q)", l.VolumeID, tags[resources.TagLease], mark)
		r.note("user data of %s refuses: %s", in.id, in.refused)
		if !v.hasData && !v.damaged {
			// Documented: a volume whose first holder was bound and left before its user
			// data formatted it loses its mark (launch cannot tell it from a volume other
			// user data filled), and is refused until an operator resets the slot.
			in.blankRefusal = true
			r.res.Known["blank volume refused"]++
		}
		return
	case v.node >= 0 && v.node != s:
		in.kafka, in.refused = kafkaRefused, fmt.Sprintf("volume %s holds node %d's log, not node %d's", l.VolumeID, v.node, s)
		r.note("user data of %s refuses: %s", in.id, in.refused)
		return
	case mark != "":
		r.deleteMark(l.VolumeID) // the user data removes the mark once the filesystem exists
	}
	v.hasData, v.node = true, s
	r.startBroker(in, s, l.VolumeID)
}

// volume returns what is known of a volume's contents (a volume never seen is blank).
// r.mu must be held.
func (r *run) volume(id string) *volState {
	v := r.vols[id]
	if v == nil {
		v = &volState{node: -1}
		r.vols[id] = v
	}
	return v
}

// deleteMark removes the never-formatted mark of a volume, as the user data does.
func (r *run) deleteMark(vol string) {
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	if _, err := r.d.ec2.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{vol},
		Tags: []ec2types.Tag{{Key: aws.String(resources.TagNeverFormatted)}}}); err != nil {
		r.simError(fmt.Errorf("removing the mark of %s: %w", vol, err))
	}
}

func (r *run) instanceTags(ctx context.Context, id string) (map[string]string, error) {
	out, err := r.d.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return nil, fmt.Errorf("describing %s: %w", id, err)
	}
	tags := map[string]string{}
	for _, res := range out.Reservations {
		for _, i := range res.Instances {
			for _, t := range i.Tags {
				tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
			}
		}
	}
	return tags, nil
}

func attachedTo(v ec2types.Volume) string {
	for _, a := range v.Attachments {
		if a.State == ec2types.VolumeAttachmentStateAttached || a.State == ec2types.VolumeAttachmentStateAttaching {
			return aws.ToString(a.InstanceId)
		}
	}
	return ""
}

func tagValue(tags []ec2types.Tag, key string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}
