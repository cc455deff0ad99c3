package asgsim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/hostcmd"
	"github.com/slotkeeper/slotkeeper/shared/lease"
)

// The simulator watches a few calls at the proxy, as they take effect: the commands
// sent over SSM (moto runs none: the simulator decides how each one ends, and when,
// and plays its effect on the broker), forced detaches (was a broker running on that
// volume?) and attaches (does the instance hold the slot?).

// command is one SSM command the handlers sent.
type command struct {
	id, instance string
	stop         bool   // the stop-and-unmount command (else: the filesystem growth)
	outcome      string // "" success, a StopFault mode, or "undeliverable"
	done         bool
}

// raceWindow is how recently a slot's lease may have changed hands before an attach
// to its previous holder still counts as the race every fence has (read, then act).
const raceWindow = 500 * time.Millisecond

// observe is the proxy's hook for the watched actions: it sees the request and moto's
// answer and returns the answer to give.
func (r *run) observe(action string, req, resp []byte) []byte {
	switch action {
	case "SendCommand":
		r.commandSent(req, resp)
	case "GetCommandInvocation":
		return r.commandResult(req, resp)
	case "DetachVolume":
		f := queryForm(req)
		if f.Get("Force") == "true" && !bytes.Contains(resp, []byte("<Errors>")) {
			r.forcedDetach(f.Get("VolumeId"), f.Get("InstanceId"))
		}
	case "AttachVolume":
		f := queryForm(req)
		if !bytes.Contains(resp, []byte("<Errors>")) {
			r.attached(lease.KindVolume, f.Get("VolumeId"), f.Get("InstanceId"))
		}
	case "AttachNetworkInterface":
		f := queryForm(req)
		if !bytes.Contains(resp, []byte("<Errors>")) {
			r.attached(lease.KindENI, f.Get("NetworkInterfaceId"), f.Get("InstanceId"))
		}
	}
	return resp
}

func queryForm(b []byte) url.Values {
	v, _ := url.ParseQuery(string(b))
	return v
}

// commandSent decides how a command ends: it fails at once on an instance that does
// not run; a stop command meets the plan's next stop fault, if one is armed; anything
// else succeeds after a while.
func (r *run) commandSent(req, resp []byte) {
	var in struct {
		InstanceIds []string
		Parameters  map[string][]string
	}
	var out struct{ Command struct{ CommandId string } }
	if json.Unmarshal(req, &in) != nil || json.Unmarshal(resp, &out) != nil || out.Command.CommandId == "" || len(in.InstanceIds) != 1 {
		return
	}
	c := &command{id: out.Command.CommandId, instance: in.InstanceIds[0], stop: hostcmd.IsStopAndUnmount(in.Parameters["commands"])}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmds[c.id] = c
	inst := r.insts[c.instance]
	if inst == nil || inst.ec2 != ec2Running {
		c.outcome, c.done = "undeliverable", true
		return
	}
	if c.stop && !r.quiet {
		for i, op := range r.armedSSM {
			r.armedSSM = append(r.armedSSM[:i:i], r.armedSSM[i+1:]...)
			c.outcome = op.Mode
			r.fault("stop:" + op.Mode)
			break
		}
	}
	if c.outcome == StopNoResult {
		return // it never reports back
	}
	d := r.tm.GrowCommand.draw(inst.rng)
	if c.stop {
		d = r.tm.StopCommand.draw(inst.rng)
	}
	r.after(d, "ssm "+c.id, func() { r.commandDone(c) })
}

// commandDone ends a command and plays its effect on the instance.
func (r *run) commandDone(c *command) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.done = true
	in := r.insts[c.instance]
	if !c.stop || in == nil {
		return
	}
	switch c.outcome {
	case "":
		r.stopBroker(in, stopSSM, "slotkeeper's stop command")
	case StopBusy:
		// Kafka stopped; the filesystem is still in use, so it stays mounted.
		vol := in.mounted
		r.stopBroker(in, stopSSM, "slotkeeper's stop command (the filesystem stays busy)")
		if vol != "" && in.ec2 == ec2Running {
			in.mounted = vol
			r.e.HoldPlainDetach(in.id, true)
		}
	}
}

// commandResult answers GetCommandInvocation from the model.
func (r *run) commandResult(req, resp []byte) []byte {
	var in struct{ CommandId string }
	var m map[string]any
	if json.Unmarshal(req, &in) != nil || json.Unmarshal(resp, &m) != nil {
		return resp
	}
	r.mu.Lock()
	var c command
	cp := r.cmds[in.CommandId]
	if cp != nil {
		c = *cp // read under the lock: commandDone writes it
	}
	r.mu.Unlock()
	if cp == nil {
		return resp
	}
	set := func(status string, code int, stdout, stderr string) {
		m["Status"], m["StatusDetails"], m["ResponseCode"] = status, status, code
		m["StandardOutputContent"], m["StandardErrorContent"] = stdout, stderr
	}
	switch {
	case !c.done:
		set("InProgress", -1, "", "")
	case c.outcome == "undeliverable":
		set("Failed", -1, "", "")
		m["StatusDetails"] = "Undeliverable"
	case c.outcome == StopStillActive:
		set("Failed", hostcmd.ExitStillActive, "", "slotkeeper-stop: unit kafka is still active after the stop command")
	case c.outcome == StopBusy:
		set("Failed", hostcmd.ExitMountBusy, "", "slotkeeper-stop: /var/lib/kafka is in use")
	case c.stop:
		set("Success", 0, hostcmd.StopReportPrefix+"unit=kafka mount=/var/lib/kafka volume=- device=- unmounted=yes\n", "")
	default:
		set("Success", 0, "slotkeeper-grow fstype=xfs device=/dev/nvme1n1 before_kib=1000 after_kib=2000 device_bytes=2048000\n", "")
	}
	out, err := json.Marshal(m)
	if err != nil {
		return resp
	}
	return out
}

// forcedDetach is a forced DetachVolume that took effect: a volume forced off an
// instance on which it is mounted (Kafka may write to it) breaks the invariant,
// unless the code under test alerted that it forces past its bound. The broker
// crashes, and the volume's filesystem may be damaged.
func (r *run) forcedDetach(vol, instance string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.insts[instance]
	if in == nil || in.mounted != vol {
		return
	}
	if r.alerted("forced detach", instance) {
		r.note("volume %s forced off %s past the bound, with the alert", vol, instance)
	} else {
		r.violate("force-detach-running", "volume %s was forced off %s (%s, %s), which has it mounted (broker %s)", vol, instance, in.ec2, in.life, in.kafka)
	}
	wasRunning := in.kafka == kafkaRunning
	r.stopBroker(in, stopForced, "its volume was forced off")
	if wasRunning || in.rng.IntN(2) == 0 {
		v := r.volume(vol)
		if in.rng.IntN(2) == 0 {
			v.damaged, v.hasFS = true, false
		}
	}
}

// attached is an attach that took effect: the instance must hold the slot's lease
// (claimed, by the launch attaching it) at that moment. A lease that changed hands
// within raceWindow, away from the attaching instance that held it, is the race of
// every fenced write and is let pass; the state
// checks still see where the resource ends up.
func (r *run) attached(kind, id, instance string) {
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	defer cancel()
	leases, err := r.d.store.List(ctx)
	if err != nil {
		r.simError(fmt.Errorf("reading leases at an attach: %w", err))
		return
	}
	var l *lease.Lease
	for i := range leases {
		if leases[i].Recorded(kind) == id {
			l = &leases[i]
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if l == nil {
		r.violate("identity", "%s %s, which no slot records, was attached to %s", kind, id, instance)
		return
	}
	if l.State == lease.Claimed && l.Holder == instance {
		return
	}
	if changed := lastChange(*l); !changed.IsZero() && time.Since(changed) < raceWindow && heldBefore(*l, instance) {
		r.note("%s %s attached to %s while slot %d moved on (%s by %q, %s ago): the fence's race", kind, id, instance, l.Slot, l.State, l.Holder, time.Since(changed))
		return
	}
	r.violate("attach-to-holder", "%s %s of slot %d was attached to %s, but the slot's lease is %s by %q at version %d",
		kind, id, l.Slot, instance, l.State, l.Holder, l.Version)
}

// heldBefore reports whether instance held l's slot in l's history (a previous
// holder, whose fenced attach may race with the lease moving on).
func heldBefore(l lease.Lease, instance string) bool {
	return slices.ContainsFunc(l.History, func(h lease.Transition) bool { return h.Instance == instance && h.To != lease.Free })
}

// lastChange is when l last changed state (its newest history entry).
func lastChange(l lease.Lease) time.Time {
	if len(l.History) == 0 {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, l.History[len(l.History)-1].At)
	return t
}

// resourcesGone reports whether err says an EC2 resource does not exist.
func resourcesGone(err error) bool { return awsapi.IsNotFound(err) }
