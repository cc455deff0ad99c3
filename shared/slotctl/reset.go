package slotctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/user"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
)

func resetCommand() Command {
	var yes bool
	var reason string
	return Command{
		Name: "reset", Args: "<slot>", NArgs: 1,
		Summary: "give a slot whose recorded volume (or ENI) is gone a new one, with a reason",
		Help: `The operator's explicit act for a slot whose recorded data volume (or, in ENI mode, its
ENI) no longer exists. slotkeeper never gives such a slot a new, blank volume by itself:
every launch for the slot abandons with an ALERT instead, because the slot's broker had
data and a blank disk would make it rejoin empty (for a KRaft controller, an empty-log
voter). reset removes the gone resource's id from the slot's lease, and records who did it
and why in the slot's history; the next launch then creates a new volume (marked
slotkeeper:never-formatted, so the broker formats it) or ENI, and Kafka re-replicates the
broker's partitions from the other replicas.

reset refuses (exit code 4, nothing changed) while a recorded resource still exists (it
is not gone: if its tags are wrong, tag it again), and while the slot is bound or
draining. Without --yes it only shows what it would do (exit code 4); --reason is
required either way and goes into the history with the caller's AWS identity.

Example:
  slotctl reset 1 --reason "vol-0abc deleted by mistake (ticket OPS-123)"        # dry run
  slotctl reset 1 --reason "vol-0abc deleted by mistake (ticket OPS-123)" --yes  # act`,
		Needs: []string{"CLUSTER", "TABLE", "SLOT_COUNT"},
		Flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&yes, "yes", false, "really reset (without it, only show what would happen)")
			fs.StringVar(&reason, "reason", "", "why (required; recorded in the slot's history)")
		},
		Run: func(ctx context.Context, r *Run) error { return runReset(ctx, r, yes, reason) },
	}
}

// Reset is what reset found and did.
type Reset struct {
	Cluster string `json:"cluster"`
	Slot    int    `json:"slot"`
	NodeID  int    `json:"node_id"`
	State   string `json:"state"`
	Version int64  `json:"version"`
	Holder  string `json:"holder,omitempty"`
	// Forget are the recorded resources that are gone: their ids leave the lease.
	Forget []ResetItem `json:"forget"`
	// Actor and Reason are what the history entry records.
	Actor  string `json:"actor"`
	Reason string `json:"reason"`
	// Nothing is true when the slot records no volume and nothing recorded is gone:
	// there is nothing to reset (its next launch creates a volume anyway).
	Nothing bool `json:"nothing_recorded,omitempty"`
	// DryRun is true when --yes was not given: nothing was changed.
	DryRun bool `json:"dry_run,omitempty"`
	// Done is true when the lease was changed.
	Done bool `json:"done"`
}

// ResetItem is one recorded resource reset looked at.
type ResetItem struct {
	Kind string `json:"kind"` // volume | eni
	ID   string `json:"id"`
	IP   string `json:"ip,omitempty"`
}

func runReset(ctx context.Context, r *Run, yes bool, reason string) error {
	cfg := r.Env.Config
	s, err := ParseSlot(r.Args[0], cfg)
	if err != nil {
		return err
	}
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return Usage(fmt.Sprintf(`say why: slotctl reset %d --reason "..."`, s), "reset needs --reason: it is recorded in the slot's history")
	}
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	c, err := r.Env.Clients(ctx)
	if err != nil {
		return err
	}
	store := lease.NewStore(c.DynamoDB, cfg.Table, cfg.Cluster)
	l, err := store.Get(ctx, s)
	if err != nil {
		return awsError(err, "reading the lease table "+cfg.Table)
	}
	rs := Reset{Cluster: cfg.Cluster, Slot: s, NodeID: cfg.NodeID(s), State: string(l.State), Version: l.Version, Holder: l.Holder,
		Forget: []ResetItem{}, Actor: operator(ctx, c)}
	o := r.Out
	if l.VolumeID == "" && l.ENIID == "" {
		rs.Nothing = true
		o.Printf("slot %d records no volume and no ENI: its next launch creates them; nothing to reset.\n", s)
		return o.Emit(rs)
	}

	// Only what is gone is forgotten; a recorded resource that exists is the slot's.
	m := &resources.Manager{EC2: c.EC2, Cluster: cfg.Cluster}
	var kinds, present []string
	for _, kind := range []string{lease.KindVolume, lease.KindENI} {
		id := l.Recorded(kind)
		if id == "" {
			continue
		}
		var found bool
		if kind == lease.KindVolume {
			v, err := m.VolumeByID(ctx, id)
			if err != nil {
				return awsError(err, "")
			}
			found = v != nil
		} else {
			e, err := m.ENIByID(ctx, id)
			if err != nil {
				return awsError(err, "")
			}
			found = e != nil
		}
		if found {
			present = append(present, kind+" "+id)
			continue
		}
		item := ResetItem{Kind: kind, ID: id}
		if kind == lease.KindENI {
			item.IP = l.IP
		}
		rs.Forget = append(rs.Forget, item)
		kinds = append(kinds, kind)
	}
	if len(kinds) == 0 && l.VolumeID == "" {
		rs.Nothing = true
		o.Printf("slot %d records no volume (its next launch creates one) and its recorded %s exist(s): nothing to reset.\n", s, strings.Join(present, ", "))
		return o.Emit(rs)
	}
	if len(kinds) == 0 {
		return Refused("reset is only for a recorded resource that is gone; if its tags are wrong, tag it again "+
			fmt.Sprintf("(slotkeeper:cluster=%s, slotkeeper:slot=%d)", cfg.Cluster, s),
			"slot %d's recorded %s still exist(s): nothing to reset", s, strings.Join(present, " and "))
	}
	if l.State == lease.Bound || l.State == lease.Draining {
		return Refused(fmt.Sprintf("wait until the slot is free or being claimed ('slotctl history %d'); the reconciler frees a slot whose holder is gone", s),
			"slot %d is %s by %s", s, l.State, l.Holder)
	}
	var gone []string
	for _, it := range rs.Forget {
		gone = append(gone, kindLabel(it.Kind)+" "+it.ID)
	}
	rs.Reason = fmt.Sprintf("reset by an operator: %s (recorded %s gone; the next launch creates a new one)", reason, strings.Join(gone, " and "))

	o.Printf("slot %d · broker %d · %s at version %d\n", s, rs.NodeID, rs.State, rs.Version)
	for _, it := range rs.Forget {
		o.Printf("%s %s %s is gone: its id leaves the lease; the next launch creates a new %s\n",
			o.Paint("forget:", Warn), kindLabel(it.Kind), it.ID, kindLabel(it.Kind))
	}
	if len(present) > 0 {
		o.Printf("keep:   %s (it exists)\n", strings.Join(present, ", "))
	}
	o.Printf("history: %q by %s\n", rs.Reason, rs.Actor)
	if !yes {
		rs.DryRun = true
		if err := o.Emit(rs); err != nil {
			return err
		}
		return Emitted(Refused(fmt.Sprintf("re-run with --yes: slotctl reset %d --reason %q --yes", s, reason), "dry run: nothing changed"))
	}

	store.Actor = rs.Actor
	if _, err := store.Forget(ctx, l, kinds, rs.Reason); errors.Is(err, lease.ErrFenced) {
		return Refused(fmt.Sprintf("run it again: slotctl reset %d --reason %q --yes", s, reason), "slot %d changed while resetting it: nothing changed", s)
	} else if err != nil {
		return awsError(err, "writing the lease")
	}
	rs.Done = true
	o.Printf("%s slot %d records no %s now; its next launch creates a new one (follow it with 'slotctl history %d').\n",
		o.Paint("reset:", Good), s, strings.Join(kinds, " and no "), s)
	if rs.Holder != "" && rs.State == string(lease.Claimed) {
		o.Printf("The launch of %s in progress still abandons; the group's next instance takes the slot.\n", rs.Holder)
	}
	return o.Emit(rs)
}

func kindLabel(kind string) string {
	if kind == lease.KindENI {
		return "ENI"
	}
	return kind
}

// operator names who runs slotctl, for the history: the AWS identity (STS) and the
// local user and host. Either may be missing; never an error.
func operator(ctx context.Context, c *Clients) string {
	local := "unknown"
	if u, err := user.Current(); err == nil {
		local = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		local += "@" + h
	}
	if c.STS != nil {
		if out, err := c.STS.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err == nil && aws.ToString(out.Arn) != "" {
			return "slotctl/" + aws.ToString(out.Arn) + " (" + local + ")"
		}
	}
	return "slotctl/" + local
}
