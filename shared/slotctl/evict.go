package slotctl

import (
	"context"
	"flag"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"

	"github.com/slotkeeper/slotkeeper/shared/lease"
)

func evictCommand() Command {
	var yes bool
	return Command{
		Name: "evict", Args: "<slot>", NArgs: 1,
		Summary: "replace a slot's broker on purpose, through the ASG",
		Help: `Replaces a sick broker on purpose: asks the Auto Scaling group to terminate the slot's
holder without lowering the desired capacity (TerminateInstanceInAutoScalingGroup,
ShouldDecrementDesiredCapacity=false). That is a planned termination, so the terminate
function holds it until Kafka can lose the broker (removal safety, bounded by
SLOTKEEPER_SAFETY_MAX_WAIT), stops the broker cleanly over SSM and hands the slot back;
the group launches a replacement, which becomes the same broker with the same volume and IP.

evict refuses (exit code 4, nothing changed) unless the slot is bound, its holder is
InService in the group, and the group has a terminate hook; and it only shows what it
would do unless --yes is given. When SLOTKEEPER_KAFKA_BOOTSTRAP is set it also says
whether removal is safe right now (the terminate function waits if it is not).`,
		Examples: []string{"slotctl evict 2          # what would happen; nothing changes", "slotctl evict 2 --yes"},
		Needs:    []string{"CLUSTER", "ASG_NAME", "TABLE", "SLOT_COUNT"},
		Flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&yes, "yes", false, "really evict (without it, only show what would happen)")
		},
		Run: func(ctx context.Context, r *Run) error { return runEvict(ctx, r, yes) },
	}
}

// Eviction is what evict found and did.
type Eviction struct {
	Cluster  string `json:"cluster"`
	Slot     int    `json:"slot"`
	NodeID   int    `json:"node_id"`
	Instance string `json:"instance"`
	Group    string `json:"group"`
	// Safe is Kafka's removal-safety verdict now; nil when Kafka was not asked.
	Safe   *bool  `json:"removal_safe,omitempty"`
	Safety string `json:"safety,omitempty"`
	// DryRun is true when --yes was not given: nothing was asked of the group.
	DryRun bool `json:"dry_run,omitempty"`
	// Done is true when the termination was requested.
	Done       bool   `json:"done"`
	ActivityID string `json:"activity_id,omitempty"`
	Activity   string `json:"activity,omitempty"`
}

func runEvict(ctx context.Context, r *Run, yes bool) error {
	cfg := r.Env.Config
	s, err := ParseSlot(r.Args[0], cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	c, err := r.Env.Clients(ctx)
	if err != nil {
		return err
	}

	l, err := lease.NewStore(c.DynamoDB, cfg.Table, cfg.Cluster).Get(ctx, s)
	if err != nil {
		return awsError(err, "reading the lease table "+cfg.Table)
	}
	switch l.State {
	case lease.Free:
		return Refused("'slotctl status' shows which slots have a broker", "slot %d is free: it has no broker to evict", s)
	case lease.Claimed:
		return Refused(fmt.Sprintf("wait for the launch to finish ('slotctl history %d')", s), "slot %d is claimed by %s: its launch is in progress", s, l.Holder)
	case lease.Draining:
		return Refused(fmt.Sprintf("follow it with 'slotctl history %d'", s), "slot %d is draining: %s is already leaving", s, l.Holder)
	}
	ev := Eviction{Cluster: cfg.Cluster, Slot: s, NodeID: cfg.NodeID(s), Instance: l.Holder, Group: cfg.ASGName}

	out, err := c.AutoScaling.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{l.Holder}})
	if err != nil {
		return awsError(err, "describing "+l.Holder+" in its Auto Scaling group")
	}
	if len(out.AutoScalingInstances) == 0 || aws.ToString(out.AutoScalingInstances[0].AutoScalingGroupName) != cfg.ASGName {
		return Refused("a slot holder outside the group cannot be replaced by it; check SLOTKEEPER_ASG_NAME",
			"%s (slot %d) is not an instance of group %s", l.Holder, s, cfg.ASGName)
	}
	if st := aws.ToString(out.AutoScalingInstances[0].LifecycleState); st != "InService" {
		return Refused("evict only an instance in service; a lifecycle change is already under way", "%s is %s, not InService", l.Holder, st)
	}
	_, term, err := Hooks(ctx, c, cfg)
	if err != nil {
		return awsError(err, "")
	}
	if term == nil {
		return Refused("run 'slotctl preflight': the group needs the terminate lifecycle hook",
			"group %s has no terminate lifecycle hook named %s (SLOTKEEPER_TERMINATE_HOOK): the instance would die without the safety check and the controlled shutdown", cfg.ASGName, cfg.TerminateHook)
	}

	k, err := c.Kafka()
	if err != nil {
		return err
	}
	if k != nil {
		v, err := k.RemovalSafe(ctx, int32(ev.NodeID))
		if err != nil {
			ev.Safety = "unknown: " + err.Error() + fmt.Sprintf(" (the terminate function retries, and proceeds after %s)", cfg.SafetyMaxWait)
		} else {
			ev.Safe, ev.Safety = &v.Safe, v.String()
			if !v.Safe {
				ev.Safety += fmt.Sprintf(" (the terminate function holds the termination until it is safe, at most %s)", cfg.SafetyMaxWait)
			}
		}
	}

	o := r.Out
	o.Printf("slot %d · broker %d · %s in group %s\n", s, ev.NodeID, ev.Instance, ev.Group)
	if ev.Safety != "" {
		style := Good
		if ev.Safe == nil || !*ev.Safe {
			style = Warn
		}
		o.Printf("removal safety: %s\n", o.Paint(ev.Safety, style))
	}
	if !yes {
		ev.DryRun = true
		o.Printf("would call TerminateInstanceInAutoScalingGroup(%s, ShouldDecrementDesiredCapacity=false)\n", ev.Instance)
		if err := o.Emit(ev); err != nil {
			return err
		}
		return Emitted(Refused(fmt.Sprintf("re-run with --yes: slotctl evict %d --yes", s), "dry run: nothing changed"))
	}

	res, err := c.AutoScaling.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(ev.Instance), ShouldDecrementDesiredCapacity: aws.Bool(false),
	})
	if err != nil {
		return awsError(err, "asking group "+cfg.ASGName+" to terminate "+ev.Instance)
	}
	ev.Done = true
	if a := res.Activity; a != nil {
		ev.ActivityID, ev.Activity = aws.ToString(a.ActivityId), aws.ToString(a.Description)
	}
	o.Printf("%s %s is terminating (activity %s); the group launches a replacement, which becomes broker %d.\n",
		o.Paint("evicting:", Good), ev.Instance, dash(ev.ActivityID), ev.NodeID)
	o.Printf("follow it with: slotctl history %d   or   slotctl status\n", s)
	return o.Emit(ev)
}
