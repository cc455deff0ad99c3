package slotctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/user"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
)

func resetCommand() Command {
	var yes, voter bool
	var reason string
	return Command{
		Name: "reset", Args: "<slot>", NArgs: 1,
		Summary: "make a slot whose recorded volume (or ENI) is gone or unusable get a new one, with a reason",
		Help: `The operator's explicit act for a slot whose recorded data volume (or, in ENI mode, its
ENI) is gone, is not a well-formed id, or exists but can never be attached to the slot's
instances (a volume in another AZ or in the error state, an ENI in another subnet).
slotkeeper never gives such a slot a new, blank volume by itself: every launch for the
slot abandons with an ALERT instead, because the slot's broker had data and a blank disk
makes it rejoin empty. reset removes those ids from the slot's lease, and records who
did it and why in the slot's history; the next launch then creates a new volume (marked
slotkeeper:never-formatted for its claim, so the broker formats it) or ENI, and Kafka
re-replicates the broker's partitions from the other replicas.

Only those ids leave the lease: a recorded resource that exists and can be attached is
the slot's and is kept (if its tags are wrong, tag it again). reset refuses (exit code
4, nothing changed) when there is nothing to forget (every recorded resource exists and
can be attached), and while the slot is bound or draining. Without --yes it only shows
what it would do (exit code 4); --reason is required either way and goes into the
history with the caller's AWS identity. It needs SLOTKEEPER_SUBNETS to tell whether a
recorded resource is in the slot's AZ and subnet.

A KRaft controller: forgetting the volume of a node that is a voter of the controller
quorum brings back a voter with an empty log, and an empty voter together with a voter
that lags can form a majority that lacks committed metadata. So before forgetting a
volume, reset asks Kafka (DescribeQuorum; SLOTKEEPER_KAFKA_BOOTSTRAP) whether the slot's
node is a voter, and refuses when Kafka cannot be asked. A voter is refused unless
--voter is given, and even then unless the other voters are caught up with the leader
and a majority of all voters. What to do for a controller:
  - a dynamic quorum (kraft.version 1 or later, Kafka 4.1 and later): remove the lost
    voter first, with kafka-metadata-quorum.sh --bootstrap-server <broker>:9092
    remove-controller --controller-id <node id> --controller-directory-id <its
    directory id, from kafka-metadata-quorum.sh describe --status>; reset then finds
    a node that is not a voter. Once the new broker has started (its storage formatted
    with kafka-storage.sh format --no-initial-controllers) and caught up (describe
    --replication), add it back with kafka-metadata-quorum.sh --command-config
    <its server.properties> --bootstrap-server <broker>:9092 add-controller.
  - a static quorum (controller.quorum.voters, which deploy/broker-bootstrap.sh
    writes): the voter set cannot change. Reset with --voter while the other voters
    are caught up, and keep them running until the new node has caught up.
`,
		Examples: []string{
			`slotctl reset 1 --reason "vol-0abc deleted by mistake (ticket OPS-123)"        # dry run`,
			`slotctl reset 1 --reason "vol-0abc deleted by mistake (ticket OPS-123)" --yes  # act`,
		},
		Needs: []string{"CLUSTER", "TABLE", "SLOT_COUNT", "SUBNETS"},
		Flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&yes, "yes", false, "really reset (without it, only show what would happen)")
			fs.StringVar(&reason, "reason", "", "why (required; recorded in the slot's history)")
			fs.BoolVar(&voter, "voter", false, "forget the volume of a KRaft controller voter (static quorum), only while the other voters are a caught-up majority")
		},
		Run: func(ctx context.Context, r *Run) error { return runReset(ctx, r, yes, voter, reason) },
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
	// Forget are the recorded resources that are gone or unusable: their ids leave
	// the lease. Keep are the recorded resources that stay.
	Forget []ResetItem `json:"forget"`
	Keep   []ResetItem `json:"keep,omitempty"`
	// Quorum is Kafka's answer about the slot's node when a volume is forgotten: whether
	// it is a controller voter and, if so, whether the other voters are a caught-up
	// majority.
	Quorum string `json:"quorum,omitempty"`
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
	// Why it is forgotten: "gone", "not a well-formed id", "in <az>, not the slot's AZ
	// <az>", ...; empty for a resource that is kept.
	Why string `json:"why,omitempty"`
}

func runReset(ctx context.Context, r *Run, yes, voter bool, reason string) error {
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

	// Only what is gone or can never be attached is forgotten; a recorded resource that
	// exists and can be attached is the slot's.
	var kinds []string
	for _, kind := range []string{lease.KindVolume, lease.KindENI} {
		id := l.Recorded(kind)
		if id == "" {
			continue
		}
		item := ResetItem{Kind: kind, ID: id}
		if kind == lease.KindENI {
			item.IP = l.IP
		}
		if item.Why, err = unusable(ctx, c, cfg, s, kind, id); err != nil {
			return err
		}
		if item.Why == "" {
			rs.Keep = append(rs.Keep, item)
			continue
		}
		rs.Forget = append(rs.Forget, item)
		kinds = append(kinds, kind)
	}
	present := func() string {
		var p []string
		for _, it := range rs.Keep {
			p = append(p, kindLabel(it.Kind)+" "+it.ID)
		}
		return strings.Join(p, " and ")
	}
	if len(kinds) == 0 && l.VolumeID == "" {
		rs.Nothing = true
		o.Printf("slot %d records no volume (its next launch creates one) and its recorded %s exist(s): nothing to reset.\n", s, present())
		return o.Emit(rs)
	}
	if len(kinds) == 0 {
		return Refused("reset is only for a recorded resource that is gone or can never be attached; if its tags are wrong, tag it again "+
			fmt.Sprintf("(slotkeeper:cluster=%s, slotkeeper:slot=%d)", cfg.Cluster, s),
			"slot %d's recorded %s exist(s) and can be attached: nothing to reset", s, present())
	}
	if l.State == lease.Bound || l.State == lease.Draining {
		return Refused(fmt.Sprintf("wait until the slot is free or being claimed ('slotctl history %d'); the reconciler frees a slot whose holder is gone", s),
			"slot %d is %s by %s", s, l.State, l.Holder)
	}
	if slices.Contains(kinds, lease.KindVolume) {
		if rs.Quorum, err = quorumCheck(ctx, c, rs.NodeID, voter); err != nil {
			return err
		}
	}
	var gone []string
	for _, it := range rs.Forget {
		gone = append(gone, fmt.Sprintf("%s %s %s", kindLabel(it.Kind), it.ID, it.Why))
	}
	rs.Reason = fmt.Sprintf("reset by an operator: %s (recorded %s; the next launch creates a new one)", reason, strings.Join(gone, " and "))
	if rs.Quorum != "" {
		rs.Reason += "; " + rs.Quorum
	}

	o.Printf("slot %d · broker %d · %s at version %d\n", s, rs.NodeID, rs.State, rs.Version)
	for _, it := range rs.Forget {
		o.Printf("%s %s %s %s: its id leaves the lease; the next launch creates a new %s\n",
			o.Paint("forget:", Warn), kindLabel(it.Kind), it.ID, it.Why, kindLabel(it.Kind))
	}
	if len(rs.Keep) > 0 {
		o.Printf("keep:   %s (it exists and can be attached)\n", present())
	}
	if rs.Quorum != "" {
		o.Printf("quorum: %s\n", rs.Quorum)
	}
	o.Printf("history: %q by %s\n", rs.Reason, rs.Actor)
	if !yes {
		rs.DryRun = true
		if err := o.Emit(rs); err != nil {
			return err
		}
		again := fmt.Sprintf("slotctl reset %d --reason %q --yes", s, reason)
		if voter {
			again += " --voter"
		}
		return Emitted(Refused("re-run with --yes: "+again, "dry run: nothing changed"))
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

// unusable says why slot s's recorded resource of kind can never serve the slot: "gone"
// (EC2 does not know it), "not a well-formed id", or why it cannot be attached to the
// slot's instances (another AZ or subnet, a volume in the error state); "" when it
// exists and can be attached.
func unusable(ctx context.Context, c *Clients, cfg config.Config, s int, kind, id string) (string, error) {
	if !resources.WellFormed(kind, id) {
		return "is not a well-formed id", nil
	}
	m := &resources.Manager{EC2: c.EC2, Cluster: cfg.Cluster}
	subnet := cfg.SubnetOf(s)
	if kind == lease.KindENI {
		e, err := m.ENIByID(ctx, id)
		switch {
		case err != nil:
			return "", awsError(err, "")
		case e == nil:
			return "is gone", nil
		case e.SubnetID != subnet:
			return fmt.Sprintf("is in subnet %s, not the slot's subnet %s", e.SubnetID, subnet), nil
		}
		return "", nil
	}
	v, err := m.VolumeByID(ctx, id)
	switch {
	case err != nil:
		return "", awsError(err, "")
	case v == nil:
		return "is gone", nil
	case v.State == "error":
		return "is in the error state", nil
	}
	azs, err := m.SubnetAZs(ctx, []string{subnet})
	if err != nil {
		return "", awsError(err, "describing the slot's subnet "+subnet)
	}
	if v.AZ != azs[subnet] {
		return fmt.Sprintf("is in %s, not the slot's AZ %s", v.AZ, azs[subnet]), nil
	}
	return "", nil
}

// quorumCheck asks Kafka whether node is a voter of the KRaft controller quorum before
// its volume is forgotten. It returns the answer for the history; it refuses when
// Kafka cannot be asked, when node is a voter without --voter, and when the other
// voters are not a caught-up majority.
func quorumCheck(ctx context.Context, c *Clients, node int, voter bool) (string, error) {
	const procedure = "see 'slotctl reset --help' (A KRaft controller): on a dynamic quorum, remove the voter first " +
		"(kafka-metadata-quorum.sh remove-controller); on a static quorum, reset with --voter while the other voters are caught up"
	k, err := c.Kafka()
	if err != nil {
		return "", err
	}
	if k == nil {
		return "", Refused("set SLOTKEEPER_KAFKA_BOOTSTRAP (or --kafka-bootstrap) so that reset can ask Kafka",
			"cannot tell whether broker %d is a KRaft controller voter: Kafka is not configured; a new, empty volume for a voter risks the quorum's committed metadata", node)
	}
	q, err := k.Quorum(ctx)
	if err != nil {
		return "", Refused("make Kafka reachable (--kafka-bootstrap and its auth settings) and run reset again",
			"cannot tell whether broker %d is a KRaft controller voter: %v", node, err)
	}
	v := kafka.QuorumSafe(q, int32(node), kafka.DefaultCaughtUpLag)
	switch {
	case !v.Voter:
		return v.String(), nil
	case !voter:
		return "", Refused(procedure, "broker %d is a KRaft controller voter (voters %v): a new, empty volume would bring back a voter with an empty log", node, v.Voters)
	case !v.Safe:
		return "", Refused("wait until the other voters are caught up (kafka-metadata-quorum.sh describe --replication), then run reset again", "%s", v)
	}
	return v.String(), nil
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
