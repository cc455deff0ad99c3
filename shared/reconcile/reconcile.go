// Package reconcile repairs drift between the lease table and the world: it releases
// leases whose holder is gone (after force-detaching what the dead holder still has),
// releases claims that were never bound, reports volumes and ENIs that no slot
// references (it never deletes them), runs the repairs of the other paths (pending
// disk growth, DNS records, disk alarms), checks Kafka's health, and publishes metrics.
//
// It runs on a schedule and on EC2 "terminated" state changes. A terminated event acts
// only for an instance that holds, or last held, one of the cluster's slots (the rule
// sees every instance of the account and region): anything else is a logged no-op
// that costs one read. Two runs at the same time do not fight: every repair of a lease
// is a fenced conditional write, and the loser of a race finds the lease already moved
// on.
//
// A pass isolates failures: a slot whose repair fails (a detach that does not finish,
// a racing launch) is logged, counted and reported, and every other slot, every other
// repair and the metrics go on; the pass then ends as "partial" (a success: the next
// scheduled pass tries again, instead of Lambda repeating the whole pass at once).
// Every EC2 describe is chunked and paginated (package resources), so the cost of a
// pass grows linearly with the slot count.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/eventbridge"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// Outcomes of one invocation.
const (
	OutcomeReconciled = "reconciled"
	OutcomePartial    = "partial" // reconciled, but some repairs failed: see Report.Failures
	OutcomeIgnored    = "ignored"
	OutcomeMalformed  = "malformed"
	OutcomeRetry      = "retry"
)

// MetricRepairFailures counts the repairs that failed in a pass (dimension Repair:
// release, orphans, kafka-health, or a repairer's name: grow, alarm, dns); for the
// release and the repairers that work slot by slot, one per failing slot.
const MetricRepairFailures = "RepairFailures"

// DefaultParallel is how many slots a pass repairs at once: each release may wait for
// a detach (up to SLOTKEEPER_ATTACH_TIMEOUT), and one stuck slot must not hold up the
// others.
const DefaultParallel = 4

// ErrMalformed marks an event that cannot be understood.
var ErrMalformed = errors.New("malformed reconcile trigger")

// A Repairer is another path's repair, run on every reconcile with the current leases
// (pending disk growth, DNS records, disk alarms). It returns how many things it fixed.
type Repairer interface {
	Name() string
	Reconcile(ctx context.Context, leases []lease.Lease) (repairs int, err error)
}

// Health is what reconcile asks Kafka.
type Health interface {
	Health(ctx context.Context) (kafka.Health, error)
}

// Handler runs reconciles. Build it with New.
type Handler struct {
	cfg     config.Config
	ec2     awsapi.EC2
	asg     awsapi.AutoScaling
	db      awsapi.DynamoDB
	log     *slog.Logger
	metrics io.Writer

	// Repairers run after the lease repairs, in order.
	Repairers []Repairer
	// Kafka reports cluster health; nil when no bootstrap is configured.
	Kafka Health
	// Poll paces and bounds detach waits.
	Poll resources.Poll
	// Now is the clock (claim TTL).
	Now func() time.Time
	// Parallel is how many slots are repaired at once (DefaultParallel).
	Parallel int
}

// New returns a reconcile handler.
func New(cfg config.Config, ec2 awsapi.EC2, asg awsapi.AutoScaling, db awsapi.DynamoDB, log *slog.Logger, metrics io.Writer) *Handler {
	return &Handler{
		cfg: cfg, ec2: ec2, asg: asg, db: db, log: log, metrics: metrics,
		Poll:     resources.Poll{Initial: time.Second, Max: 10 * time.Second, Timeout: cfg.AttachTimeout},
		Now:      time.Now,
		Parallel: DefaultParallel,
	}
}

// Orphan is a volume or ENI tagged with the cluster that no lease records.
type Orphan struct {
	Kind string `json:"kind"` // volume | eni
	ID   string `json:"id"`
	Slot string `json:"slot"` // its slotkeeper:slot tag
	Why  string `json:"why"`
}

// Failure is one repair that failed in a pass.
type Failure struct {
	Slot   int    `json:"slot"` // -1 when the repair is not a slot's
	Repair string `json:"repair"`
	Error  string `json:"error"`
}

// IdentityProblem is a slot whose recorded volume or ENI is gone, not a well-formed
// id, tagged for another cluster or slot, or can never be attached to the slot's
// instances.
type IdentityProblem struct {
	Slot int    `json:"slot"`
	Kind string `json:"kind"` // volume | eni
	ID   string `json:"id"`
	Why  string `json:"why"`
}

// Report says what one run found and did.
type Report struct {
	Outcome      string            `json:"outcome"`
	Trigger      string            `json:"trigger,omitempty"`
	Failures     []Failure         `json:"failures,omitempty"`
	SlotsByState map[string]int    `json:"slots_by_state,omitempty"`
	Released     []int             `json:"released,omitempty"`
	Detached     int               `json:"detached,omitempty"`
	Orphans      []Orphan          `json:"orphans,omitempty"`
	Identity     []IdentityProblem `json:"identity,omitempty"`
	Repairs      map[string]int    `json:"repairs,omitempty"`
	Kafka        *kafka.Health     `json:"kafka,omitempty"`
	Unregistered []int32           `json:"unregistered_brokers,omitempty"`
	Reason       string            `json:"reason,omitempty"`
}

// Invoke is the Lambda entry point (Handler is a lambda.Handler).
func (h *Handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return app.Respond(h.Run(ctx, payload))
}

// Trigger is what started a pass.
type Trigger struct {
	// OK is true for the schedule and for an EC2 instance "terminated" state change.
	OK bool
	// What describes the trigger, or why it is not one.
	What string
	// Instance is the terminated instance; empty for the schedule.
	Instance string
}

// ParseTrigger classifies a trigger: the schedule, an EC2 instance "terminated" state
// change (whose instance is then checked against the leases), or anything else, a no-op
// with the reason given.
func ParseTrigger(raw []byte) (Trigger, error) {
	var e eventbridge.Envelope
	if err := eventbridge.Decode(raw, &e); err != nil {
		return Trigger{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	switch {
	case e.Source == "aws.events" && e.DetailType == "Scheduled Event":
		return Trigger{OK: true, What: "schedule"}, nil
	case e.Source == dns.SourceEC2 && e.DetailType == dns.DetailTypeStateChange:
		sc, err := dns.ParseStateChange(raw)
		if err != nil {
			return Trigger{}, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if sc.State != slot.Terminated {
			return Trigger{What: "instance " + sc.InstanceID + " is " + sc.State + ", not terminated"}, nil
		}
		return Trigger{OK: true, What: "instance " + sc.InstanceID + " terminated", Instance: sc.InstanceID}, nil
	}
	return Trigger{What: fmt.Sprintf("source %q, detail-type %q is not a reconcile trigger", e.Source, e.DetailType)}, nil
}

// Parse classifies a trigger as ParseTrigger does: ok is true for the schedule and for
// an EC2 instance "terminated" state change; anything else is a no-op with the reason
// given.
func Parse(raw []byte) (ok bool, what string, err error) {
	tr, err := ParseTrigger(raw)
	return tr.OK, tr.What, err
}

type run struct {
	*Handler
	o     *obs.Obs
	store *lease.Store
	res   *resources.Manager
	rep   *Report
}

// Run reconciles once if raw is a trigger. A pass in which some repairs failed ends as
// "partial", with the failures in the report, and no error: the next scheduled pass
// tries them again. It returns an error only when the pass could not start (the
// leases could not be read), so that Lambda delivers the trigger again, or for a
// malformed trigger.
func (h *Handler) Run(ctx context.Context, raw []byte) (rep Report, err error) {
	o, finish := obs.Begin(h.log, h.metrics, h.cfg.MetricsNamespace, "reconcile", h.cfg.Cluster)
	defer func() {
		outcome := rep.Outcome
		if err != nil && outcome != OutcomeMalformed {
			outcome = OutcomeRetry
		}
		finish(ctx, outcome, nil)
	}()
	tr, err := ParseTrigger(raw)
	if err != nil {
		o.Log.ErrorContext(ctx, "rejecting reconcile trigger", obs.KeyOutcome, OutcomeMalformed, obs.KeyErr, err.Error())
		return Report{Outcome: OutcomeMalformed, Reason: err.Error()}, err
	}
	if !tr.OK {
		o.Log.InfoContext(ctx, "ignoring event", obs.KeyOutcome, OutcomeIgnored, obs.KeyReason, tr.What)
		return Report{Outcome: OutcomeIgnored, Reason: tr.What}, nil
	}
	store := lease.NewStore(h.db, h.cfg.Table, h.cfg.Cluster)
	store.Actor = obs.Actor(ctx, "reconcile")
	if tr.Instance != "" {
		// The rule sees every instance terminated in the account and region: a pass
		// (EC2, Route 53, CloudWatch and Kafka reads, all throttled per account) only for
		// an instance that holds or last held one of our slots. One read decides.
		var holdings []lease.Holding
		err := o.Step(ctx, "read-holders", func(ctx context.Context) error {
			var err error
			holdings, err = store.Holdings(ctx)
			return err
		})
		if err != nil {
			return Report{Trigger: tr.What}, err
		}
		if _, ok := lease.Involves(holdings, tr.Instance); !ok {
			why := fmt.Sprintf("instance %s holds no slot of cluster %s and held none last", tr.Instance, h.cfg.Cluster)
			o.Log.InfoContext(ctx, "ignoring event", obs.KeyOutcome, OutcomeIgnored, obs.KeyReason, why, obs.KeyInstance, tr.Instance)
			return Report{Outcome: OutcomeIgnored, Trigger: tr.What, Reason: why}, nil
		}
	}
	r := &run{Handler: h, o: o.With("trigger", tr.What), store: store,
		rep: &Report{Outcome: OutcomeReconciled, Trigger: tr.What, Repairs: map[string]int{}}}
	r.res = resources.New(h.cfg, h.ec2, h.Poll, r.o.Log)
	err = r.reconcile(ctx)
	if err == nil && len(r.rep.Failures) > 0 {
		r.rep.Outcome = OutcomePartial
	}
	r.o.Log.InfoContext(ctx, "reconciled", obs.KeyOutcome, r.rep.Outcome, "released", r.rep.Released,
		"orphans", len(r.rep.Orphans), "repairs", r.rep.Repairs, "slots", r.rep.SlotsByState, "failures", len(r.rep.Failures))
	return *r.rep, err
}

// fail records a failed repair: an error log, the RepairFailures metric and an entry
// of the report. slot is -1 when the repair is not one slot's.
func (r *run) fail(ctx context.Context, slot int, repair string, err error) {
	r.rep.Failures = append(r.rep.Failures, Failure{Slot: slot, Repair: repair, Error: err.Error()})
	r.o.Metrics.Count(MetricRepairFailures, 1, "Repair", repair)
	log := r.o.Log
	if slot >= 0 {
		log = log.With(obs.KeySlot, slot)
	}
	log.ErrorContext(ctx, "repair failed; the rest of the pass goes on", "repair", repair, obs.KeyErr, err.Error())
}

// failAll records err as the failure of repair, one entry per error when err joins
// several (a repairer that works slot by slot).
func (r *run) failAll(ctx context.Context, repair string, err error) {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		for _, e := range joined.Unwrap() {
			r.fail(ctx, -1, repair, e)
		}
		return
	}
	r.fail(ctx, -1, repair, err)
}

func (r *run) reconcile(ctx context.Context) error {
	leases, err := r.repairLeases(ctx)
	if err != nil {
		return err // nothing else is meaningful without the leases
	}
	if err := r.o.Step(ctx, "orphans", r.findOrphans(leases)); err != nil {
		r.fail(ctx, -1, "orphans", err)
	}
	for _, rp := range r.Repairers {
		err := r.o.Step(ctx, "repair-"+rp.Name(), func(ctx context.Context) error {
			n, err := rp.Reconcile(ctx, leases)
			r.rep.Repairs[rp.Name()] += n
			r.o.Metrics.Count("Repairs", float64(n), "Repair", rp.Name())
			return err
		})
		if err != nil {
			r.failAll(ctx, rp.Name(), err)
		}
	}
	if r.Kafka != nil {
		if err := r.o.Step(ctx, "kafka-health", func(ctx context.Context) error { return r.kafkaHealth(ctx, leases) }); err != nil {
			r.fail(ctx, -1, "kafka-health", err)
		}
	}
	r.slotMetrics(leases)
	return nil
}

// repairLeases releases the leases of dead holders and stale claims, slot by slot, and
// returns the leases as they are afterwards. Only a failure to read the leases is
// returned; a slot whose repair fails is recorded (r.fail) and left as it was.
func (r *run) repairLeases(ctx context.Context) ([]lease.Lease, error) {
	var leases []lease.Lease
	var states map[string]string
	err := r.o.Step(ctx, "leases", func(ctx context.Context) error {
		var err error
		if leases, err = r.store.List(ctx); err != nil {
			return err
		}
		var holders []string
		for _, l := range leases {
			if l.State != lease.Free {
				holders = append(holders, l.Holder)
			}
		}
		if states, err = r.res.InstanceStates(ctx, holders); err != nil {
			r.fail(ctx, -1, "release", fmt.Errorf("describing the slot holders: %w", err))
			states = nil
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if states != nil {
		r.releaseDead(ctx, leases, states)
	}
	r.o.Metrics.Count("SlotsReleased", float64(len(r.rep.Released)))
	return leases, nil
}

// slotRepair is what the repair of one slot's lease came to.
type slotRepair struct {
	lease    lease.Lease // the lease afterwards
	released bool
	detached int
	err      error
}

// releaseDead judges every held lease and releases those of dead holders and stale
// claims, Parallel slots at a time, and applies the results to leases and the report
// in slot order.
func (r *run) releaseDead(ctx context.Context, leases []lease.Lease, states map[string]string) {
	results := make([]slotRepair, len(leases))
	sem := make(chan struct{}, max(r.Parallel, 1))
	var wg sync.WaitGroup
	for i, l := range leases {
		results[i].lease = l
		if l.State == lease.Free {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i] = r.repairSlot(ctx, l, states[l.Holder])
		}()
	}
	wg.Wait()
	for i, res := range results {
		leases[i] = res.lease
		r.rep.Detached += res.detached
		if res.released {
			r.rep.Released = append(r.rep.Released, res.lease.Slot)
		}
		if res.err != nil {
			r.fail(ctx, res.lease.Slot, "release", res.err)
		}
	}
}

// repairSlot releases l if its holder is dead or its claim stale, detaching what the
// holder still has first.
func (r *run) repairSlot(ctx context.Context, l lease.Lease, state string) slotRepair {
	out := slotRepair{lease: l}
	why, mode, release, err := r.judge(ctx, l, state)
	if err != nil || !release {
		out.err = err
		return out
	}
	log := r.o.Log.With(obs.KeySlot, l.Slot, obs.KeyLeaseVersion, l.Version, obs.KeyInstance, l.Holder)
	if mode != nil {
		n, err := r.res.DetachFrom(ctx, l, l.Holder, *mode)
		out.detached = n
		if err != nil {
			out.err = fmt.Errorf("detaching slot %d's leftovers from %s: %w", l.Slot, l.Holder, err)
			return out
		}
	}
	released, err := r.store.Release(ctx, l, "reconcile: "+why)
	if errors.Is(err, lease.ErrFenced) {
		log.InfoContext(ctx, "slot already moved on; nothing to release", obs.KeyReason, why)
		if cur, gerr := r.store.Get(ctx, l.Slot); gerr == nil {
			out.lease = cur
		} else {
			out.err = gerr
		}
		return out
	}
	if err != nil {
		out.err = err
		return out
	}
	log.WarnContext(ctx, "released slot", obs.KeyReason, why)
	out.lease, out.released = released, true
	return out
}

// judge decides whether l must be released, why, and how to detach what its holder
// still has (nil: do not touch the attachments).
func (r *run) judge(ctx context.Context, l lease.Lease, state string) (string, *resources.DetachMode, bool, error) {
	force, plain := resources.Force, resources.Plain
	switch {
	case state == slot.ShuttingDown:
		// Its operating system may still be stopping Kafka: nothing is taken from it
		// (resources.DetachPolicy); the run after it is terminated releases the slot.
		return "", nil, false, nil
	case slot.Dead(state):
		return fmt.Sprintf("holder %s is %s", l.Holder, stateName(state)), &force, true, nil
	case l.State != lease.Claimed:
		return "", nil, false, nil // a bound or draining lease of a live holder is never touched
	}
	claimed, err := time.Parse(time.RFC3339Nano, l.ClaimedAt)
	if err != nil || r.Now().Sub(claimed) < r.cfg.ClaimTTL {
		return "", nil, false, nil
	}
	out, err := r.asg.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{l.Holder}})
	if err != nil {
		return "", nil, false, fmt.Errorf("describing claimer %s: %w", l.Holder, err)
	}
	if len(out.AutoScalingInstances) > 0 && aws.ToString(out.AutoScalingInstances[0].LifecycleState) == "Pending:Wait" {
		return "", nil, false, nil // its launch is still in progress
	}
	why := fmt.Sprintf("claimed %s ago by %s (%s) and never bound", r.Now().Sub(claimed).Round(time.Second), l.Holder, stateName(state))
	if slot.Alive(state) {
		return why, nil, true, nil // never take attachments from a live instance
	}
	return why, &plain, true, nil
}

func stateName(s string) string {
	if s == slot.Gone {
		return "gone"
	}
	return s
}

// found is a volume or ENI as the orphan report sees it.
type found struct {
	kind, id string
	tags     []types.Tag
	place    string    // a volume's AZ, an ENI's subnet
	state    string    // EC2's state (volume) or status (ENI)
	created  time.Time // a volume's creation time; zero for an ENI (EC2 does not say)
}

// findOrphans reports, and never deletes, every volume and ENI tagged with the cluster
// that no lease records: a slot tag outside 0..SlotCount-1, or a resource of a slot
// whose lease records another (or none). A resource a lease records is never an
// orphan, whatever its tags say; nor is one of a slot whose claim, younger than
// SLOTKEEPER_CLAIM_TTL, has not recorded that kind yet (its launch is creating it, or
// crashed between the create and the record and will take it on its retry). It also
// checks every recorded resource: one that is gone, not a well-formed id, tagged for
// another cluster or slot, or that can never be attached to the slot's instances
// (another AZ or subnet, a volume in the error state) is an identity problem, logged
// as an ALERT (the launch of that slot abandons until an operator acts).
func (r *run) findOrphans(leases []lease.Lease) func(context.Context) error {
	return func(ctx context.Context) error {
		byslot := map[int]lease.Lease{}
		recorded := map[string]map[string]int{lease.KindVolume: {}, lease.KindENI: {}} // kind -> id -> slot
		for _, l := range leases {
			byslot[l.Slot] = l
			for _, kind := range []string{lease.KindVolume, lease.KindENI} {
				id := l.Recorded(kind)
				switch {
				case id == "":
				case !resources.WellFormed(kind, id):
					r.identity(ctx, l.Slot, kind, id, fmt.Sprintf("slot %d records %s %q, which is not a well-formed id; "+
						"record the right one, or 'slotctl reset %d' forgets it", l.Slot, kind, id, l.Slot))
				default:
					recorded[kind][id] = l.Slot
				}
			}
		}
		var azs map[string]string // subnet -> AZ, learnt when a recorded volume is seen
		slotAZ := func(s int) string {
			if azs == nil {
				var err error
				if azs, err = r.res.SubnetAZs(ctx, r.cfg.Subnets); err != nil {
					r.o.Log.WarnContext(ctx, "cannot check recorded volumes' AZ", obs.KeyErr, err.Error())
					azs = map[string]string{}
				}
			}
			return azs[r.cfg.SubnetOf(s)]
		}
		seen := map[string]bool{}
		judge := func(f found) {
			kind, id := f.kind, f.id
			slotTag := tag(f.tags, resources.TagSlot)
			if s, ok := recorded[kind][id]; ok {
				seen[id] = true
				cluster := tag(f.tags, resources.TagCluster)
				switch {
				case cluster != r.cfg.Cluster || slotTag != strconv.Itoa(s):
					r.identity(ctx, s, kind, id, fmt.Sprintf("slot %d records %s %s, whose tags say %s=%q %s=%q: launches of the slot are refused until it is tagged again",
						s, kind, id, resources.TagCluster, cluster, resources.TagSlot, slotTag))
				case kind == lease.KindENI && f.place != r.cfg.SubnetOf(s):
					r.identity(ctx, s, kind, id, fmt.Sprintf("slot %d records eni %s, which is in subnet %s, not the slot's subnet %s: it can never be attached; "+
						"'slotctl reset %d' forgets it", s, id, f.place, r.cfg.SubnetOf(s), s))
				case kind == lease.KindVolume && f.state == string(types.VolumeStateError):
					r.identity(ctx, s, kind, id, fmt.Sprintf("slot %d records volume %s, which is in the error state: it can never be attached; "+
						"'slotctl reset %d' forgets it", s, id, s))
				case kind == lease.KindVolume && slotAZ(s) != "" && f.place != slotAZ(s):
					r.identity(ctx, s, kind, id, fmt.Sprintf("slot %d records volume %s, which is in %s, not the slot's AZ %s: it can never be attached; "+
						"'slotctl reset %d' forgets it", s, id, f.place, slotAZ(s), s))
				}
				return
			}
			n, err := strconv.Atoi(slotTag)
			var why string
			switch {
			case err != nil || n < 0 || n >= r.cfg.SlotCount:
				why = fmt.Sprintf("slot tag %q is not a slot of this cluster (0..%d)", slotTag, r.cfg.SlotCount-1)
			case byslot[n].Recorded(kind) != "":
				why = fmt.Sprintf("slot %d uses %s %s", n, kind, byslot[n].Recorded(kind))
			case r.inFlight(byslot[n], f.created):
				r.o.Log.InfoContext(ctx, "unrecorded "+kind+" of a slot being claimed: its launch records it (not an orphan yet)",
					"id", id, obs.KeySlot, n, obs.KeyInstance, byslot[n].Holder)
				return
			default:
				why = fmt.Sprintf("slot %d records no %s", n, kind)
			}
			r.rep.Orphans = append(r.rep.Orphans, Orphan{Kind: kind, ID: id, Slot: slotTag, Why: why})
			r.o.Log.WarnContext(ctx, "orphaned "+kind+" (reported, never deleted)", "id", id, obs.KeyReason, why)
		}
		volume := func(v types.Volume) found {
			return found{kind: lease.KindVolume, id: aws.ToString(v.VolumeId), tags: v.Tags, place: aws.ToString(v.AvailabilityZone),
				state: string(v.State), created: aws.ToTime(v.CreateTime)}
		}
		eni := func(n types.NetworkInterface) found {
			return found{kind: lease.KindENI, id: aws.ToString(n.NetworkInterfaceId), tags: n.TagSet, place: aws.ToString(n.SubnetId), state: string(n.Status)}
		}
		filter := []types.Filter{{Name: aws.String("tag:" + resources.TagCluster), Values: []string{r.cfg.Cluster}}}
		vols := ec2.NewDescribeVolumesPaginator(r.ec2, &ec2.DescribeVolumesInput{Filters: filter})
		for vols.HasMorePages() {
			page, err := vols.NextPage(ctx)
			if err != nil {
				return fmt.Errorf("listing the cluster's volumes: %w", err)
			}
			for _, v := range page.Volumes {
				judge(volume(v))
			}
		}
		enis := ec2.NewDescribeNetworkInterfacesPaginator(r.ec2, &ec2.DescribeNetworkInterfacesInput{Filters: filter})
		for enis.HasMorePages() {
			page, err := enis.NextPage(ctx)
			if err != nil {
				return fmt.Errorf("listing the cluster's ENIs: %w", err)
			}
			for _, n := range page.NetworkInterfaces {
				judge(eni(n))
			}
		}
		// Recorded resources the listing did not show have lost the cluster tag, or are gone.
		if err := r.unlisted(ctx, recorded, seen, judge, volume, eni); err != nil {
			return err
		}
		kinds := map[string]int{lease.KindVolume: 0, lease.KindENI: 0}
		for _, o := range r.rep.Orphans {
			kinds[o.Kind]++
		}
		for k, n := range kinds {
			r.o.Metrics.Count("Orphans", float64(n), "Kind", k)
		}
		r.o.Metrics.Count("IdentityAlerts", float64(len(r.rep.Identity)))
		return nil
	}
}

// inFlight reports whether l is a claim younger than SLOTKEEPER_CLAIM_TTL that a
// resource created at created (zero: unknown) may belong to: its launch records what it
// creates right after creating it, and takes on its retry what a crash left unrecorded.
func (r *run) inFlight(l lease.Lease, created time.Time) bool {
	if l.State != lease.Claimed {
		return false
	}
	claimed, err := time.Parse(time.RFC3339Nano, l.ClaimedAt)
	if err != nil || r.Now().Sub(claimed) >= r.cfg.ClaimTTL {
		return false
	}
	// A resource made before the claim is not the claim's (a minute of clock skew allowed).
	return created.IsZero() || !created.Before(claimed.Add(-time.Minute))
}

// unlisted describes, by id, the recorded resources the cluster's tag listing did not
// show: one found is judged (its tags disagree); one not found is gone.
func (r *run) unlisted(ctx context.Context, recorded map[string]map[string]int, seen map[string]bool, judge func(found),
	volume func(types.Volume) found, eni func(types.NetworkInterface) found) error {
	for _, kind := range []string{lease.KindVolume, lease.KindENI} {
		var ids []string
		for id := range recorded[kind] {
			if !seen[id] {
				ids = append(ids, id)
			}
		}
		if len(ids) == 0 {
			continue
		}
		slices.Sort(ids)
		for start := 0; start < len(ids); start += 200 {
			chunk := ids[start:min(start+200, len(ids))]
			if kind == lease.KindVolume {
				out, err := r.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []types.Filter{{Name: aws.String("volume-id"), Values: chunk}}})
				if err != nil {
					return fmt.Errorf("describing recorded volumes %v: %w", chunk, err)
				}
				for _, v := range out.Volumes {
					judge(volume(v))
				}
			} else {
				out, err := r.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{{Name: aws.String("network-interface-id"), Values: chunk}}})
				if err != nil {
					return fmt.Errorf("describing recorded ENIs %v: %w", chunk, err)
				}
				for _, n := range out.NetworkInterfaces {
					judge(eni(n))
				}
			}
		}
		for _, id := range ids {
			if !seen[id] {
				s := recorded[kind][id]
				r.identity(ctx, s, kind, id, fmt.Sprintf("slot %d records %s %s, which no longer exists; 'slotctl reset %d' gives the slot a new one", s, kind, id, s))
			}
		}
	}
	return nil
}

// identity reports a slot whose recorded resource is gone, malformed, tagged for
// another slot or unusable.
func (r *run) identity(ctx context.Context, s int, kind, id, why string) {
	r.rep.Identity = append(r.rep.Identity, IdentityProblem{Slot: s, Kind: kind, ID: id, Why: why})
	r.o.Log.ErrorContext(ctx, "ALERT: slot identity problem (launches of the slot abandon until an operator acts)",
		obs.KeySlot, s, "kind", kind, "id", id, obs.KeyReason, why)
}

func tag(tags []types.Tag, key string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

// kafkaHealth records the cluster's health and which bound slots' brokers are not
// registered.
func (r *run) kafkaHealth(ctx context.Context, leases []lease.Lease) error {
	hl, err := r.Kafka.Health(ctx)
	if err != nil {
		r.o.Metrics.Count("KafkaUnreachable", 1)
		return fmt.Errorf("kafka health: %w", err)
	}
	r.rep.Kafka = &hl
	for _, l := range leases {
		if l.State == lease.Bound && !slices.Contains(hl.Brokers, int32(r.cfg.NodeID(l.Slot))) {
			r.rep.Unregistered = append(r.rep.Unregistered, int32(r.cfg.NodeID(l.Slot)))
		}
	}
	r.o.Metrics.Count("UnderReplicatedPartitions", float64(hl.UnderReplicated))
	r.o.Metrics.Count("OfflinePartitions", float64(hl.Offline))
	r.o.Metrics.Count("UnregisteredBrokers", float64(len(r.rep.Unregistered)))
	if len(r.rep.Unregistered) > 0 {
		r.o.Log.WarnContext(ctx, "bound slots whose broker is not registered", "brokers", r.rep.Unregistered)
	}
	return nil
}

// slotMetrics counts the slots by state; never-claimed slots count as free.
func (r *run) slotMetrics(leases []lease.Lease) {
	counts := map[string]int{string(lease.Free): r.cfg.SlotCount, string(lease.Claimed): 0, string(lease.Bound): 0, string(lease.Draining): 0}
	for _, l := range leases {
		if l.Slot < r.cfg.SlotCount && l.State != lease.Free {
			counts[string(lease.Free)]--
			counts[string(l.State)]++
		}
	}
	for st, n := range counts {
		r.o.Metrics.Count("Slots", float64(n), "State", st)
	}
	r.rep.SlotsByState = counts
}
