package slotctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/lease"
)

func rollCommand() Command {
	var opt RollOptions
	var slots, before string
	return Command{
		Name:    "roll",
		Summary: "replace every broker, one at a time, waiting for Kafka in between",
		Help: `Replaces the brokers one at a time (a new image, instance type or Kafka version in the
launch template; or every broker, on purpose), each through the group and slotkeeper's own
paths, so that each replacement comes back as the same broker with the same volume and IP.

For each slot, in turn:
  1. wait until the cluster is at rest: every instance of the group InService and as many
     as the desired capacity, no slot claimed or draining, the removal token free (no
     termination between its safety wait and its release), every partition fully in sync
     (none under-replicated or offline), every bound slot's broker registered, the KRaft
     quorum with a leader and every voter caught up, and the slot's broker safe to remove
     (the removal-safety and quorum rules the terminate function applies);
  2. evict the slot's holder: TerminateInstanceInAutoScalingGroup without lowering the
     desired capacity (a planned termination: the terminate function's safety wait and
     controlled shutdown apply);
  3. wait until the slot is bound to the replacement, with the same volume and ENI, and
     Kafka is in sync again.
Order: brokers first, KRaft controllers next, the quorum leader very last (from a fresh
DescribeQuorum before each step).

Which holders are old: with --launched-before, those launched before that time ("now":
when the roll starts, by the earlier of this machine's clock and AWS's); otherwise those
not launched from the group's current launch template version (the
aws:ec2launchtemplate:version tag EC2 puts on the instances; a later version of the same
template counts as new). The roll never evicts a holder it put in place itself, even if
that one still looks old (it says so).
Because the holders that are already new are skipped, running the same command again
after an interruption resumes the roll; a roll interrupted mid-step first waits for that
step's slot to settle. The resume command is printed.

Each wait is bounded by --step-timeout (exit code 1: resume when the cluster is well).
--dry-run shows the order and what the roll would wait for now, and changes nothing.
Progress: one line per step, with the time since the roll started.`,
		Examples: []string{
			"slotctl roll --dry-run                          # the order, and whether the cluster is ready",
			"slotctl roll                                    # replace the holders not on the group's current launch template",
			"slotctl roll --launched-before now              # replace every broker",
			"slotctl roll --launched-before 2026-05-04T09:30:00Z --slots 0,2 --json   # resume, two slots only",
		},
		Needs: []string{"CLUSTER", "ASG_NAME", "TABLE", "SLOT_COUNT", "KAFKA_BOOTSTRAP"},
		Flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&opt.DryRun, "dry-run", false, "show the order and what the roll would wait for; change nothing")
			fs.StringVar(&slots, "slots", "", "comma-separated slots to roll (default: every slot with a broker)")
			fs.StringVar(&before, "launched-before", "", `replace the holders launched before this RFC 3339 time, or "now" (default: by launch template version)`)
			fs.DurationVar(&opt.Poll, "poll", 5*time.Second, "how often the waits look (keep it at 1s or more against AWS)")
			fs.DurationVar(&opt.StepTimeout, "step-timeout", 30*time.Minute, "bound on each wait (cluster at rest; replacement bound and in sync)")
		},
		Run: func(ctx context.Context, r *Run) error {
			o := opt
			o.CallTimeout = r.Timeout
			var err error
			if o.Slots, err = parseSlots(slots, r.Env.Config); err != nil {
				return err
			}
			switch before {
			case "":
			case "now":
				o.LaunchedBefore, o.LaunchedBeforeNow = time.Now(), true
			default:
				if o.LaunchedBefore, err = time.Parse(time.RFC3339, before); err != nil {
					return Usage(`give an RFC 3339 time (2026-05-04T09:30:00Z) or "now"`, "--launched-before %q: %v", before, err)
				}
			}
			if o.Poll <= 0 || o.StepTimeout <= 0 {
				return Usage("give positive durations", "--poll %s, --step-timeout %s", o.Poll, o.StepTimeout)
			}
			return runRoll(ctx, r, o)
		},
	}
}

// parseSlots parses --slots.
func parseSlots(s string, cfg config.Config) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []int
	for _, part := range strings.Split(s, ",") {
		n, err := ParseSlot(strings.TrimSpace(part), cfg)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// RollOptions configure a roll.
type RollOptions struct {
	// Slots are the slots to roll; nil: every slot that has a broker (not free).
	Slots []int
	// LaunchedBefore, when set, makes a holder old when EC2 says it was launched before
	// it (to the second); zero: a holder is old when it was not launched from the
	// group's current launch template version.
	LaunchedBefore time.Time
	// LaunchedBeforeNow says LaunchedBefore is "now": the roll takes the earlier of
	// this machine's clock and AWS's (the Date of its first answer), so that a clock
	// ahead of AWS's does not make the replacements look launched before the roll.
	LaunchedBeforeNow bool
	// DryRun shows the plan and the current state of the cluster and changes nothing.
	DryRun bool
	// Poll is the pause between two looks of a wait; StepTimeout bounds each wait;
	// CallTimeout bounds each look's AWS and Kafka calls.
	Poll, StepTimeout, CallTimeout time.Duration
	// Progress receives each progress line; nil: the output's human stream.
	Progress func(line string)
	// OnEvict, when set, is called right after each eviction was requested (tests).
	OnEvict func(slot int, instance string)
}

// Roles of a slot's broker in the roll's order.
const (
	RoleBroker     = "broker"
	RoleController = "controller"
	RoleLeader     = "quorum leader"
)

// RollSlot is one slot of the plan, as found when the roll started.
type RollSlot struct {
	Slot       int    `json:"slot"`
	NodeID     int    `json:"node_id"`
	Role       string `json:"role"`
	State      string `json:"state"`
	Holder     string `json:"holder,omitempty"`
	LaunchTime string `json:"launch_time,omitempty"`
	// LaunchTemplate is the holder's launch template and version (from its tags).
	LaunchTemplate string `json:"launch_template,omitempty"`
	// New is true when the holder is already new: the roll leaves the slot alone.
	New    bool   `json:"new"`
	Why    string `json:"why"`
	Volume string `json:"volume,omitempty"`
	ENI    string `json:"eni,omitempty"`
}

// RollStep is one replacement the roll made.
type RollStep struct {
	Slot   int    `json:"slot"`
	NodeID int    `json:"node_id"`
	Role   string `json:"role"`
	Old    string `json:"old_holder"`
	New    string `json:"new_holder,omitempty"`
	// Volume and ENI are the slot's before the step; VolumeAfter and ENIAfter after it.
	Volume      string `json:"volume"`
	VolumeAfter string `json:"volume_after,omitempty"`
	ENI         string `json:"eni,omitempty"`
	ENIAfter    string `json:"eni_after,omitempty"`
	// Times since the roll started, in milliseconds.
	ReadyAtMS   int64 `json:"ready_at_ms"`
	EvictedAtMS int64 `json:"evicted_at_ms"`
	BoundAtMS   int64 `json:"bound_at_ms,omitempty"`
	InSyncAtMS  int64 `json:"in_sync_at_ms,omitempty"`
	// Waits are the reasons the roll waited before evicting, in order, each once;
	// SyncWaits those it waited for once the slot was bound again.
	Waits     []string `json:"waits,omitempty"`
	SyncWaits []string `json:"sync_waits,omitempty"`
}

// RollReport is what a roll planned and did.
type RollReport struct {
	Cluster string `json:"cluster"`
	Group   string `json:"group"`
	// By says how old holders are told from new ones.
	By             string `json:"by"`
	LaunchedBefore string `json:"launched_before,omitempty"`
	DryRun         bool   `json:"dry_run,omitempty"`
	// Plan is every considered slot as found at the start, in the roll's order.
	Plan []RollSlot `json:"plan"`
	// Ready says whether the cluster was at rest when the roll started; Waiting why not.
	Ready   bool       `json:"ready"`
	Waiting string     `json:"waiting,omitempty"`
	Steps   []RollStep `json:"steps"`
	// Log holds the progress lines.
	Log       []string `json:"log"`
	Done      bool     `json:"done"`
	ElapsedMS int64    `json:"elapsed_ms"`
	// Resume is the command that resumes the roll should it be interrupted.
	Resume string `json:"resume"`
	// Error and Hint say why a roll stopped before it was done (exit code not 0).
	Error string `json:"error,omitempty"`
	Hint  string `json:"hint,omitempty"`
}

// ErrStepTimeout is returned when a wait outlasts RollOptions.StepTimeout.
var ErrStepTimeout = errors.New("wait timed out")

func runRoll(ctx context.Context, r *Run, opt RollOptions) error {
	c, err := r.Env.Clients(ctx)
	if err != nil {
		return err
	}
	out := r.Out
	rep, err := Roll(ctx, c, r.Env.Config, opt, out)
	if err != nil {
		var e *Error
		switch {
		case ctx.Err() != nil:
			e = Problem("resume with: "+rep.Resume, "roll interrupted: %v", context.Cause(ctx))
		case errors.Is(err, ErrStepTimeout):
			e = Problem("find out why with 'slotctl status', then resume with: "+rep.Resume, "%v", err)
		case errors.As(err, &e) && e.Code != ExitUnreachable:
		default:
			e = asError(err)
			if rep.Resume != "" {
				e.Hint += "; then resume with: " + rep.Resume
			}
		}
		if rep.Cluster != "" { // the roll started: its report is the document
			rep.Error, rep.Hint = e.Error(), e.Hint
			if jerr := out.Emit(rep); jerr != nil {
				return jerr
			}
			return Emitted(e)
		}
		return e
	}
	if !out.JSON {
		switch {
		case rep.DryRun:
		case len(rep.Steps) == 0:
			fmt.Fprintf(out.Human(), "%s nothing to roll: every holder is new (%s)\n", out.Paint("done:", Good), rep.By)
		default:
			fmt.Fprintf(out.Human(), "%s %d broker(s) replaced in %s; every holder is new, every slot kept its volume\n",
				out.Paint("done:", Good), len(rep.Steps), round(time.Duration(rep.ElapsedMS)*time.Millisecond))
		}
	}
	return out.Emit(rep)
}

// round rounds a duration for people.
func round(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(100 * time.Millisecond).String()
}

// roller is one roll.
type roller struct {
	c     *Clients
	cfg   config.Config
	opt   RollOptions
	k     *kafka.Client
	out   *Output
	rep   *RollReport
	start time.Time
	// The group's launch template, resolved at the start (launch-template mode).
	ltID, ltVersion string
	// planned are the slots considered; a planned slot that is not bound is a step in
	// progress (or a broker missing), which the waits wait for.
	planned []int
	// lastWait is the last wait reason printed, so that a wait prints once per change.
	lastWait string
	// roles are the slots' roles as last seen (progress lines name them).
	roles map[int]string
	// restQuorum is the KRaft quorum the last readiness check read (nil: Kafka has
	// none); the roll's order comes from it.
	restQuorum *kafka.Quorum
	// replaced are the holders this run bound to a slot (slot → instance): never
	// evicted again by this run, whatever the judge of new and old says of them (a
	// clock skew, a launch template version that moved during the roll).
	replaced map[int]string
}

// world is one look at the cluster.
type world struct {
	leases map[int]lease.Lease
	group  *astypes.AutoScalingGroup
	// serverTime is the Date of Auto Scaling's answer (zero when absent).
	serverTime time.Time
	// inst holds the holders' EC2 descriptions.
	inst map[string]ec2types.Instance
}

// Roll replaces the old holders of cfg's cluster one at a time (see the roll command's
// help) and reports what it did. An error after the roll has started comes with the
// report so far; Resume says how to go on.
func Roll(ctx context.Context, c *Clients, cfg config.Config, opt RollOptions, out *Output) (rep RollReport, err error) {
	if opt.Poll <= 0 {
		opt.Poll = 5 * time.Second
	}
	if opt.StepTimeout <= 0 {
		opt.StepTimeout = 30 * time.Minute
	}
	if opt.CallTimeout <= 0 {
		opt.CallTimeout = 30 * time.Second
	}
	r := &roller{c: c, cfg: cfg, opt: opt, out: out, start: time.Now(), roles: map[int]string{}, replaced: map[int]string{}}
	k, err := c.Kafka()
	if err != nil {
		return rep, err
	}
	if k == nil {
		return rep, Usage("set SLOTKEEPER_KAFKA_BOOTSTRAP (--kafka-bootstrap): the roll waits for Kafka between brokers", "roll needs Kafka")
	}
	r.k = k

	w, err := r.look(ctx)
	if err != nil {
		return rep, err
	}
	if w.group == nil {
		return rep, Refused("check SLOTKEEPER_ASG_NAME and the region", "group %s does not exist", cfg.ASGName)
	}
	// The Date header counts whole seconds: AWS's clock is within a second after it.
	if awsNow := w.serverTime.Add(time.Second); opt.LaunchedBeforeNow && !w.serverTime.IsZero() && awsNow.Before(r.opt.LaunchedBefore) {
		r.opt.LaunchedBefore = awsNow
		opt.LaunchedBefore = awsNow
	}
	cctx, cancel := context.WithTimeout(ctx, opt.CallTimeout)
	_, term, err := Hooks(cctx, c, cfg)
	cancel()
	if err != nil {
		return rep, awsError(err, "")
	}
	if term == nil {
		return rep, Refused("run 'slotctl preflight': the group needs the terminate lifecycle hook",
			"group %s has no terminate lifecycle hook named %s (SLOTKEEPER_TERMINATE_HOOK): brokers would leave without the safety wait and the controlled shutdown", cfg.ASGName, cfg.TerminateHook)
	}
	rep = RollReport{Cluster: cfg.Cluster, Group: cfg.ASGName, DryRun: opt.DryRun, Plan: []RollSlot{}, Steps: []RollStep{}, Log: []string{}}
	r.rep = &rep
	if opt.LaunchedBefore.IsZero() {
		if err := r.resolveTemplate(ctx, w.group); err != nil {
			return RollReport{}, err
		}
		rep.By = fmt.Sprintf("launch template %s version %s", r.ltID, r.ltVersion)
		rep.Resume = "slotctl roll"
	} else {
		opt.LaunchedBefore = opt.LaunchedBefore.UTC().Truncate(time.Second)
		r.opt.LaunchedBefore = opt.LaunchedBefore
		rep.LaunchedBefore = opt.LaunchedBefore.Format(time.RFC3339)
		rep.By = "launch time before " + rep.LaunchedBefore
		rep.Resume = "slotctl roll --launched-before " + rep.LaunchedBefore
	}
	if opt.Slots != nil {
		rep.Resume += " --slots " + ints(opt.Slots)
	}
	defer func() { rep.ElapsedMS = time.Since(r.start).Milliseconds() }() // rep is the named result

	// The slots considered: those asked for, or every slot that has a broker.
	for s := range cfg.SlotCount {
		l := w.leases[s]
		switch {
		case opt.Slots != nil && !slices.Contains(opt.Slots, s):
		case opt.Slots != nil && l.State == lease.Free:
			return rep, Refused("'slotctl status' shows which slots have a broker", "slot %d is free: it has no broker to roll", s)
		case l.State != lease.Free:
			r.planned = append(r.planned, s)
		}
	}
	q, qerr := r.quorum(ctx)
	for _, s := range r.planned {
		rep.Plan = append(rep.Plan, r.slotRow(w, q, s))
		r.roles[s] = role(q, cfg.NodeID(s))
	}
	order := r.order(q, func(s int) bool { return true })
	slices.SortStableFunc(rep.Plan, func(a, b RollSlot) int { return slices.Index(order, a.Slot) - slices.Index(order, b.Slot) })
	var olds []string
	for _, p := range rep.Plan {
		if !p.New {
			olds = append(olds, fmt.Sprintf("slot %d (%s %d)", p.Slot, p.Role, p.NodeID))
		}
	}
	if len(olds) == 0 {
		r.progress(-1, "plan: nothing to roll; every holder is new (%s)", rep.By)
	} else {
		r.progress(-1, "plan: %d to replace, by %s, in this order: %s", len(olds), rep.By, strings.Join(olds, ", "))
	}
	if qerr != nil {
		r.progress(-1, "note: %v", qerr)
	}
	if opt.DryRun {
		why, err := r.readiness(ctx, w, -1)
		if err != nil {
			return rep, err
		}
		rep.Ready, rep.Waiting = why == "", why
		if why == "" {
			r.progress(-1, "the cluster is at rest: the roll would start at once")
		} else {
			r.progress(-1, "the roll would first wait: %s", why)
		}
		return rep, nil
	}

	for {
		// At rest (this also waits out a step an interrupted roll left in progress).
		var w world
		var waits []string
		readyAt, err := r.until(ctx, -1, "the cluster is at rest", func(ctx context.Context) (bool, string, error) {
			var err error
			if w, err = r.look(ctx); err != nil {
				return false, "", err
			}
			why, err := r.readiness(ctx, w, -1)
			if why != "" && !slices.Contains(waits, why) {
				waits = append(waits, why)
			}
			return why == "", why, err
		})
		if err != nil {
			return rep, err
		}
		// The order comes from the quorum the at-rest look read: a failed second read
		// would leave no quorum and make every node a broker, the leader first.
		q := r.restQuorum
		next := -1
		for _, s := range r.order(q, func(s int) bool { return !r.isNew(w, s) && !r.rolled(w, s) }) {
			next = s
			break
		}
		if next < 0 {
			rep.Done = true
			r.progress(-1, "done: every holder is new, or was put in place by this roll; %d broker(s) replaced", len(rep.Steps))
			return rep, nil
		}
		step, err := r.replace(ctx, next, q, readyAt, waits)
		rep.Steps = append(rep.Steps, step)
		if err != nil {
			return rep, err
		}
	}
}

// replace evicts slot s's holder and waits until the slot is bound to the replacement
// and Kafka is in sync again.
func (r *roller) replace(ctx context.Context, s int, q *kafka.Quorum, readyAt time.Duration, waits []string) (RollStep, error) {
	node := r.cfg.NodeID(s)
	step := RollStep{Slot: s, NodeID: node, Role: role(q, node), ReadyAtMS: readyAt.Milliseconds(), Waits: waits}
	r.roles[s] = step.Role
	// The removal of this very broker must be safe too: wait for it.
	var w world
	_, err := r.until(ctx, s, "broker "+strconv.Itoa(node)+" may leave", func(ctx context.Context) (bool, string, error) {
		var err error
		if w, err = r.look(ctx); err != nil {
			return false, "", err
		}
		why, err := r.readiness(ctx, w, s)
		if why != "" && !slices.Contains(step.Waits, why) {
			step.Waits = append(step.Waits, why)
		}
		return why == "", why, err
	})
	if err != nil {
		return step, err
	}
	old := w.leases[s]
	step.Old, step.Volume, step.ENI = old.Holder, old.VolumeID, old.ENIID
	if !slices.ContainsFunc(w.group.Instances, func(i astypes.Instance) bool { return aws.ToString(i.InstanceId) == old.Holder }) {
		return step, Refused(fmt.Sprintf("'slotctl status'; a holder outside the group must be replaced by hand, or attached to it (aws autoscaling attach-instances --auto-scaling-group-name %s --instance-ids %s)", r.cfg.ASGName, old.Holder),
			"%s (slot %d) is not an instance of group %s: the group cannot replace it", old.Holder, s, r.cfg.ASGName)
	}
	cctx, cancel := context.WithTimeout(ctx, r.opt.CallTimeout)
	res, err := r.c.AutoScaling.TerminateInstanceInAutoScalingGroup(cctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(old.Holder), ShouldDecrementDesiredCapacity: aws.Bool(false),
	})
	cancel()
	if err != nil {
		return step, awsError(err, "asking group "+r.cfg.ASGName+" to terminate "+old.Holder)
	}
	step.EvictedAtMS = time.Since(r.start).Milliseconds()
	activity := ""
	if res.Activity != nil {
		activity = " (activity " + aws.ToString(res.Activity.ActivityId) + ")"
	}
	r.progress(s, "evicting %s: TerminateInstanceInAutoScalingGroup, desired capacity kept%s", old.Holder, activity)
	if r.opt.OnEvict != nil {
		r.opt.OnEvict(s, old.Holder)
	}

	// The slot moves: draining, free, claimed, bound to the replacement.
	seen := ""
	_, err = r.until(ctx, s, "the slot is bound to the replacement", func(ctx context.Context) (bool, string, error) {
		cctx, cancel := context.WithTimeout(ctx, r.opt.CallTimeout)
		defer cancel()
		l, err := lease.NewStore(r.c.DynamoDB, r.cfg.Table, r.cfg.Cluster).Get(cctx, s)
		if err != nil {
			return false, "", awsError(err, "reading the lease of slot "+strconv.Itoa(s))
		}
		var now string
		switch {
		case l.State == lease.Bound && l.Holder != old.Holder:
			return true, "", nil
		case l.Holder == old.Holder && l.State == lease.Bound:
			now = "waiting for the group to start the termination"
		case l.Holder == old.Holder && l.State == lease.Draining:
			now = fmt.Sprintf("draining: %s hands the slot back (removal safety, controlled shutdown, detach)", old.Holder)
		case l.State == lease.Free:
			now = "free: handed back; waiting for the replacement to claim it"
		default:
			now = fmt.Sprintf("%s by %s: the replacement attaches the slot's volume", l.State, l.Holder)
		}
		if now != seen {
			seen = now
			r.progress(s, "%s", now)
		}
		return false, "", nil
	})
	if err != nil {
		return step, err
	}
	cctx, cancel = context.WithTimeout(ctx, r.opt.CallTimeout)
	l, err := lease.NewStore(r.c.DynamoDB, r.cfg.Table, r.cfg.Cluster).Get(cctx, s)
	cancel()
	if err != nil {
		return step, awsError(err, "reading the lease of slot "+strconv.Itoa(s))
	}
	step.New, step.VolumeAfter, step.ENIAfter = l.Holder, l.VolumeID, l.ENIID
	r.replaced[s] = l.Holder
	if i, err := r.describe(ctx, l.Holder); err == nil {
		if ok, why := r.newHolder(i); !ok {
			r.progress(s, "note: the replacement %s does not look new (%s): this roll does not evict it again", l.Holder, why)
		}
	}
	step.BoundAtMS = time.Since(r.start).Milliseconds()
	same := "the same volume " + l.VolumeID
	if l.ENIID != "" {
		same += " and ENI " + l.ENIID
	}
	r.progress(s, "bound to %s: %s, IP %s", l.Holder, same, l.IP)
	if l.VolumeID != old.VolumeID || l.ENIID != old.ENIID {
		return step, Problem(fmt.Sprintf("stop and look: 'slotctl history %d'", s), "slot %d came back with volume %s and ENI %q, not volume %s and ENI %q",
			s, l.VolumeID, l.ENIID, old.VolumeID, old.ENIID)
	}

	// Kafka in sync again.
	_, err = r.until(ctx, s, "", func(ctx context.Context) (bool, string, error) {
		w, err := r.look(ctx)
		if err != nil {
			return false, "", err
		}
		why, err := r.readiness(ctx, w, -1)
		if why != "" && !slices.Contains(step.SyncWaits, why) {
			step.SyncWaits = append(step.SyncWaits, why)
		}
		return why == "", why, err
	})
	if err != nil {
		return step, err
	}
	step.InSyncAtMS = time.Since(r.start).Milliseconds()
	r.progress(s, "in sync: broker %d is back, no partition under-replicated, the quorum caught up (step %s)",
		node, round(time.Duration(step.InSyncAtMS-step.EvictedAtMS)*time.Millisecond))
	return step, nil
}

// until polls check until it reports done, printing each new reason it waits for
// and, once done after a wait, what it waited for (unless what is empty); bounded by
// StepTimeout. It returns the time since the roll started when done.
func (r *roller) until(ctx context.Context, s int, what string, check func(context.Context) (bool, string, error)) (time.Duration, error) {
	deadline := time.Now().Add(r.opt.StepTimeout)
	waited := false
	for {
		done, why, err := check(ctx)
		if err != nil {
			var e *Error
			if errors.As(err, &e) && e.Code != ExitUnreachable {
				return 0, err
			}
			// AWS or Kafka answered badly: not done, whatever the check said (a look
			// that failed proves nothing), look again.
			done, why = false, "cannot look: "+err.Error()
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if done {
			r.lastWait = "" // the next wait prints its reasons afresh
			if waited && what != "" {
				r.progress(s, "%s", what)
			}
			return time.Since(r.start), nil
		}
		if why != "" && why != r.lastWait {
			r.lastWait = why
			r.progress(s, "waiting: %s", why)
		}
		waited = waited || why != ""
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%w: after %s, still waiting until %s (%s)", ErrStepTimeout, r.opt.StepTimeout, what, why)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(r.opt.Poll):
		}
	}
}

// progress prints one line, with the time since the roll started; s < 0: not about
// one slot.
func (r *roller) progress(s int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if s >= 0 {
		rl := r.roles[s]
		if rl == "" {
			rl = RoleBroker
		}
		msg = fmt.Sprintf("slot %d (%s %d) · %s", s, rl, r.cfg.NodeID(s), msg)
	}
	line := fmt.Sprintf("%7.1fs  %s", time.Since(r.start).Seconds(), msg)
	if r.rep != nil {
		r.rep.Log = append(r.rep.Log, line)
	}
	if r.opt.Progress != nil {
		r.opt.Progress(line)
		return
	}
	if r.out != nil {
		fmt.Fprintln(r.out.Human(), line)
	}
}

// look reads the leases, the group and the holders.
func (r *roller) look(ctx context.Context) (world, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opt.CallTimeout)
	defer cancel()
	w := world{leases: map[int]lease.Lease{}, inst: map[string]ec2types.Instance{}}
	leases, err := lease.NewStore(r.c.DynamoDB, r.cfg.Table, r.cfg.Cluster).List(ctx)
	if err != nil {
		return w, awsError(err, "reading the lease table "+r.cfg.Table)
	}
	for s := range r.cfg.SlotCount { // a slot never claimed has no item: it is free
		w.leases[s] = lease.Lease{Cluster: r.cfg.Cluster, Slot: s, State: lease.Free}
	}
	var ids []string
	for _, l := range leases {
		w.leases[l.Slot] = l
		if l.State != lease.Free && l.Holder != "" {
			ids = append(ids, l.Holder)
		}
	}
	out, err := r.c.AutoScaling.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{r.cfg.ASGName}})
	if err != nil {
		return w, awsError(err, "describing group "+r.cfg.ASGName)
	}
	if len(out.AutoScalingGroups) > 0 {
		w.group = &out.AutoScalingGroups[0]
	}
	if t, ok := awsmiddleware.GetServerTime(out.ResultMetadata); ok {
		w.serverTime = t
	}
	if len(ids) == 0 {
		return w, nil
	}
	p := ec2.NewDescribeInstancesPaginator(r.c.EC2, &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{{Name: aws.String("instance-id"), Values: ids}},
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return w, awsError(err, "describing the slot holders")
		}
		for _, res := range page.Reservations {
			for _, i := range res.Instances {
				w.inst[aws.ToString(i.InstanceId)] = i
			}
		}
	}
	return w, nil
}

// quorum describes the KRaft quorum; nil with a note when Kafka has none (ZooKeeper
// mode answers DescribeQuorum with UNSUPPORTED_VERSION).
func (r *roller) quorum(ctx context.Context) (*kafka.Quorum, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opt.CallTimeout)
	defer cancel()
	q, err := r.k.Quorum(ctx)
	if err != nil {
		return nil, err
	}
	return &q, nil
}

// noQuorum reports whether err says that Kafka has no KRaft quorum to describe.
func noQuorum(err error) bool {
	return errors.Is(err, kerr.UnsupportedVersion) || errors.Is(err, kerr.InvalidRequest) ||
		strings.Contains(err.Error(), "does not support") || strings.Contains(err.Error(), "unknown request key")
}

// readiness says why the cluster is not at rest, "" when it is. With s >= 0 it also
// requires slot s's broker to be safe to remove, by the terminate path's rules.
func (r *roller) readiness(ctx context.Context, w world, s int) (string, error) {
	g := w.group
	if g == nil {
		return "", Refused("check SLOTKEEPER_ASG_NAME", "group %s does not exist", r.cfg.ASGName)
	}
	var moving []string
	inService := 0
	for _, i := range g.Instances {
		if st := string(i.LifecycleState); st != "InService" {
			moving = append(moving, aws.ToString(i.InstanceId)+" is "+st)
		} else {
			inService++
		}
	}
	if len(moving) > 0 {
		slices.Sort(moving)
		return "group: " + strings.Join(moving, ", "), nil
	}
	if d := int(aws.ToInt32(g.DesiredCapacity)); inService != d {
		return fmt.Sprintf("group: %d instance(s) in service, desired %d", inService, d), nil
	}
	for _, sl := range r.planned {
		if l := w.leases[sl]; l.State != lease.Bound {
			what := string(l.State)
			if l.Holder != "" {
				what += " by " + l.Holder
			}
			return fmt.Sprintf("slot %d is %s", sl, what), nil
		}
	}
	for _, sl := range sortedSlots(w.leases) {
		if l := w.leases[sl]; l.State == lease.Claimed || l.State == lease.Draining {
			return fmt.Sprintf("slot %d is %s by %s", sl, l.State, l.Holder), nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, r.opt.CallTimeout)
	defer cancel()
	// A removal holds the cluster's removal token from before its safety wait until its
	// broker was seen stopped and its slot released: none may be under way.
	tok, err := lease.NewStore(r.c.DynamoDB, r.cfg.Table, r.cfg.Cluster).GetRemoval(ctx)
	if err != nil {
		return "", awsError(err, "reading the cluster's removal token")
	}
	if tok.Held() {
		return fmt.Sprintf("the removal token is held: a removal of slot %d (%s) is under way", tok.HolderSlot, tok.Holder), nil
	}
	h, err := r.k.Health(ctx)
	if err != nil {
		return "", kafkaError(err, "asking Kafka for its health")
	}
	var missing []string
	for _, sl := range sortedSlots(w.leases) {
		if w.leases[sl].State == lease.Bound && !slices.Contains(h.Brokers, int32(r.cfg.NodeID(sl))) {
			missing = append(missing, strconv.Itoa(r.cfg.NodeID(sl)))
		}
	}
	switch {
	case len(missing) > 0:
		return "Kafka: broker(s) " + strings.Join(missing, ", ") + " not registered", nil
	case h.Offline > 0:
		return fmt.Sprintf("Kafka: %d offline partition(s)", h.Offline), nil
	case h.UnderReplicated > 0:
		return fmt.Sprintf("Kafka: %d under-replicated partition(s)", h.UnderReplicated), nil
	}
	q, err := r.k.Quorum(ctx)
	r.restQuorum = nil
	if err == nil {
		r.restQuorum = &q
	}
	switch {
	case err != nil && noQuorum(err):
		q = kafka.Quorum{Leader: -1}
	case err != nil:
		return "", kafkaError(err, "describing the KRaft quorum")
	case q.Leader < 0:
		return "KRaft quorum: no leader", nil
	default:
		caught := q.CaughtUp(kafka.DefaultCaughtUpLag)
		var behind []string
		for _, v := range q.VoterIDs() {
			if !slices.Contains(caught, v) {
				behind = append(behind, strconv.Itoa(int(v)))
			}
		}
		if len(behind) > 0 {
			return "KRaft quorum: voter(s) " + strings.Join(behind, ", ") + " not caught up with leader " + strconv.Itoa(int(q.Leader)), nil
		}
	}
	if s < 0 {
		return "", nil
	}
	node := int32(r.cfg.NodeID(s))
	v, err := r.k.RemovalSafe(ctx, node)
	if err != nil {
		return "", kafkaError(err, "deciding whether broker "+strconv.Itoa(int(node))+" may leave")
	}
	if !v.Safe {
		return v.String(), nil
	}
	if len(q.Voters) > 0 {
		if qv := kafka.QuorumSafe(q, node, kafka.DefaultCaughtUpLag); !qv.Safe {
			return qv.String(), nil
		}
	}
	return "", nil
}

func sortedSlots(m map[int]lease.Lease) []int {
	var out []int
	for s := range m {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// role is node's role in the quorum q (nil: no quorum known).
func role(q *kafka.Quorum, node int) string {
	switch {
	case q == nil || !q.IsVoter(int32(node)):
		return RoleBroker
	case q.Leader == int32(node):
		return RoleLeader
	}
	return RoleController
}

// order returns the planned slots that keep, in the roll's order: brokers, then
// controllers, then the quorum leader; by slot within each.
func (r *roller) order(q *kafka.Quorum, keep func(int) bool) []int {
	rank := map[string]int{RoleBroker: 0, RoleController: 1, RoleLeader: 2}
	var out []int
	for _, s := range r.planned {
		if keep(s) {
			out = append(out, s)
		}
	}
	slices.SortStableFunc(out, func(a, b int) int {
		return rank[role(q, r.cfg.NodeID(a))] - rank[role(q, r.cfg.NodeID(b))]
	})
	return out
}

// resolveTemplate finds the group's launch template and the version it launches.
func (r *roller) resolveTemplate(ctx context.Context, g *astypes.AutoScalingGroup) error {
	spec := g.LaunchTemplate
	if spec == nil && g.MixedInstancesPolicy != nil && g.MixedInstancesPolicy.LaunchTemplate != nil {
		spec = g.MixedInstancesPolicy.LaunchTemplate.LaunchTemplateSpecification
	}
	if spec == nil {
		return Usage(`give --launched-before <RFC 3339 time> or "now": the holders launched before it are replaced`,
			"group %s has no launch template, so the roll cannot tell new holders from old by version", r.cfg.ASGName)
	}
	in := &ec2.DescribeLaunchTemplatesInput{}
	if id := aws.ToString(spec.LaunchTemplateId); id != "" {
		in.LaunchTemplateIds = []string{id}
	} else {
		in.LaunchTemplateNames = []string{aws.ToString(spec.LaunchTemplateName)}
	}
	ctx, cancel := context.WithTimeout(ctx, r.opt.CallTimeout)
	defer cancel()
	out, err := r.c.EC2.DescribeLaunchTemplates(ctx, in)
	if err != nil {
		return awsError(err, "describing the group's launch template")
	}
	if len(out.LaunchTemplates) == 0 {
		return Refused("check the group's launch template", "the launch template of group %s does not exist", r.cfg.ASGName)
	}
	lt := out.LaunchTemplates[0]
	r.ltID = aws.ToString(lt.LaunchTemplateId)
	switch v := aws.ToString(spec.Version); v {
	case "$Latest":
		r.ltVersion = strconv.FormatInt(aws.ToInt64(lt.LatestVersionNumber), 10)
	case "", "$Default":
		r.ltVersion = strconv.FormatInt(aws.ToInt64(lt.DefaultVersionNumber), 10)
	default:
		r.ltVersion = v
	}
	return nil
}

// Tags EC2 puts on an instance launched from a launch template.
const (
	tagLaunchTemplateID      = "aws:ec2launchtemplate:id"
	tagLaunchTemplateVersion = "aws:ec2launchtemplate:version"
)

// rolled reports whether slot s is bound to the holder this run put there.
func (r *roller) rolled(w world, s int) bool {
	l := w.leases[s]
	return l.State == lease.Bound && l.Holder != "" && r.replaced[s] == l.Holder
}

// describe describes one instance.
func (r *roller) describe(ctx context.Context, id string) (ec2types.Instance, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opt.CallTimeout)
	defer cancel()
	out, err := r.c.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return ec2types.Instance{}, err
	}
	if len(out.Reservations) == 0 || len(out.Reservations[0].Instances) == 0 {
		return ec2types.Instance{}, fmt.Errorf("instance %s not found", id)
	}
	return out.Reservations[0].Instances[0], nil
}

// isNew reports whether slot s's holder is new. A slot that is not bound is not yet
// judged: the waits see to it first.
func (r *roller) isNew(w world, s int) bool {
	l := w.leases[s]
	if l.State != lease.Bound {
		return false
	}
	ok, _ := r.newHolder(w.inst[l.Holder])
	return ok
}

// newHolder says whether instance i is new, and why.
func (r *roller) newHolder(i ec2types.Instance) (bool, string) {
	if i.InstanceId == nil {
		return false, "EC2 does not know the holder"
	}
	if !r.opt.LaunchedBefore.IsZero() {
		at := aws.ToTime(i.LaunchTime)
		if at.Before(r.opt.LaunchedBefore) {
			return false, "launched " + at.UTC().Format(time.RFC3339) + ", before " + r.opt.LaunchedBefore.Format(time.RFC3339)
		}
		return true, "launched " + at.UTC().Format(time.RFC3339)
	}
	id, v := tagValue(i.Tags, tagLaunchTemplateID), tagValue(i.Tags, tagLaunchTemplateVersion)
	switch {
	case id == "":
		return false, "not launched from a launch template"
	case id != r.ltID:
		return false, "launched from launch template " + id + ", not the group's " + r.ltID
	case v != r.ltVersion && !newerVersion(v, r.ltVersion):
		return false, "launch template version " + v + ", the group's is " + r.ltVersion
	}
	return true, "launch template version " + v
}

// newerVersion reports whether launch template version v is a later one than base
// (a version made while the roll ran: the replacement is newer than the roll's).
func newerVersion(v, base string) bool {
	a, err1 := strconv.ParseInt(v, 10, 64)
	b, err2 := strconv.ParseInt(base, 10, 64)
	return err1 == nil && err2 == nil && a > b
}

// slotRow describes slot s for the plan.
func (r *roller) slotRow(w world, q *kafka.Quorum, s int) RollSlot {
	l := w.leases[s]
	row := RollSlot{Slot: s, NodeID: r.cfg.NodeID(s), Role: role(q, r.cfg.NodeID(s)), State: string(l.State),
		Holder: l.Holder, Volume: l.VolumeID, ENI: l.ENIID}
	i, ok := w.inst[l.Holder]
	if ok {
		row.LaunchTime = aws.ToTime(i.LaunchTime).UTC().Format(time.RFC3339)
		if id := tagValue(i.Tags, tagLaunchTemplateID); id != "" {
			row.LaunchTemplate = id + " version " + tagValue(i.Tags, tagLaunchTemplateVersion)
		}
	}
	switch {
	case l.State != lease.Bound:
		row.Why = "slot is " + string(l.State) + ": the roll waits for it to settle, then judges its holder"
	default:
		row.New, row.Why = r.newHolder(i)
	}
	return row
}
