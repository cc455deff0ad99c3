// Package grow makes a broker slot's data volume grow by itself when the slot's disk
// alarm fires (≥ SLOTKEEPER_GROW_THRESHOLD_PERCENT used):
//
//   - Alarms keeps the alarm slotkeeper-<cluster>-disk-<slot> pointed at the slot's
//     current holder (a launch Follower and a reconcile repair);
//   - Handler.Run takes the alarm (the direct alarm action payload or the EventBridge
//     event), decides the new size with Plan, calls ModifyVolume, waits (bounded) for
//     the modification to reach optimizing, grows the filesystem online over SSM on the
//     holder (FilesystemScript) and records the growth in the slot's history;
//   - Handler.Reconcile, run by the reconcile function, finishes growths that EC2 or the
//     holder refused for now ("pending growths", stored on the lease item), and grows
//     again every slot whose disk alarm stays in ALARM after a growth (an alarm action
//     fires on a change of state only, so a disk still full is found by looking).
//
// Rules (DESIGN, "ModifyVolume"): a volume only grows; a new modification only once the
// previous one is completed (optimizing is still in flight), at most
// SLOTKEEPER_GROW_MAX_PER_DAY in a rolling 24 hours and SLOTKEEPER_GROW_MIN_INTERVAL
// apart; never a no-op one; never beyond SLOTKEEPER_GROW_MAX_SIZE_GIB nor the volume
// type's maximum (at the cap, an alert instead); a rate-limit or state error means "not
// now", recorded and retried, never a crash. Repeated alarms for one breach grow once:
// a modification in progress, or one that started after the alarm's breach, is the
// growth that breach asked for. Concurrent deliveries of one alarm grow once: the
// growth is recorded with a conditional write before ModifyVolume, and only its
// writer calls it. An alarm acts only when its dimensions name the slot's current
// holder and the data mount.
package grow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/alert"
	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/remote"
	"github.com/slotkeeper/slotkeeper/shared/resources"
)

// Outcomes of one growth attempt (metric dimension Outcome and log field outcome).
const (
	OutcomeGrown      = "grown"      // volume modified, filesystem grown, history recorded
	OutcomeFilesystem = "filesystem" // an applied modification only needed its filesystem step, now done
	OutcomePending    = "pending"    // not now: recorded on the slot for a later retry
	OutcomeInFlight   = "in-flight"  // a modification, or another invocation's growth, is in progress: nothing new
	OutcomeWaiting    = "waiting"    // EBS's rate rule: recorded as pending, to start at its not_before time
	OutcomeStale      = "stale"      // the volume has grown since the alarm's breach
	OutcomeKeep       = "keep"       // nothing to grow (below target, or already at the size wanted)
	OutcomeAtMax      = "at-max"     // at the maximum size: alerted instead
	OutcomeFailed     = "failed"     // EC2 refused the growth for good: alerted
	OutcomeIgnored    = "ignored"    // not a breach of one of this cluster's disk alarms
	OutcomeMalformed  = "malformed"
	OutcomeRetry      = "retry" // a transient error: Lambda delivers the event again
)

// Metrics written by the grow path (embedded metric format, dimensions Cluster and
// Function=grow). GrowthAtMax is the one to alarm on.
const (
	MetricGrowths            = "Growths"            // growths finished
	MetricGrowthGiB          = "GrowthGiB"          // GiB added by them
	MetricGrowthPending      = "GrowthPending"      // growths put off ("not now")
	MetricGrowthAtMax        = "GrowthAtMax"        // breaches of a volume at the max size
	MetricGrowthFailed       = "GrowthFailed"       // growths EC2 refused for good
	MetricFilesystemFailures = "FilesystemFailures" // filesystem script failures (retried)
	MetricFullDisks          = "FullDisks"          // slots whose disk alarm stayed in ALARM, seen by the reconciler
)

// measureWindow is how far back the reconciler looks for a disk-use datapoint of a
// slot whose alarm stays in ALARM (the agent reports every minute).
const measureWindow = 10 * time.Minute

// retryCommandWait bounds the wait for the filesystem step's result in Reconcile.
const retryCommandWait = time.Minute

// Handler handles disk alarms and finishes pending growths. Build it with New.
type Handler struct {
	cfg     config.Config
	ec2     awsapi.EC2
	db      awsapi.DynamoDB
	cw      awsapi.CloudWatch
	alerts  *alert.Notifier
	log     *slog.Logger
	metrics io.Writer

	// Now is the clock: EBS's rate rule, the growth history and a writer's deadline.
	Now func() time.Time

	// Poll paces the wait for a volume modification to reach optimizing and bounds it
	// (Timeout; SLOTKEEPER_ATTACH_TIMEOUT). A wait that runs out leaves the growth
	// pending for the reconciler, which never waits.
	Poll resources.Poll
	// Remote runs the filesystem script on the slot's holder, waiting for its result
	// up to SLOTKEEPER_SSM_TIMEOUT (Reconcile: at most a minute).
	Remote *remote.Runner
}

// New returns a grow handler. metrics receives the embedded-metric-format lines
// (os.Stdout in Lambda). cw is read by Reconcile only (the alarms that stay in ALARM and
// the disk use they watch).
func New(cfg config.Config, ec2 awsapi.EC2, db awsapi.DynamoDB, ssm awsapi.SSM, sns awsapi.SNS, cw awsapi.CloudWatch, log *slog.Logger, metrics io.Writer) *Handler {
	return &Handler{
		cfg: cfg, ec2: ec2, db: db, cw: cw, log: log, metrics: metrics, Now: time.Now,
		alerts: &alert.Notifier{SNS: sns, TopicARN: cfg.AlertTopicARN, Cluster: cfg.Cluster},
		Poll:   resources.Poll{Initial: 2 * time.Second, Max: 15 * time.Second, Timeout: cfg.AttachTimeout},
		Remote: &remote.Runner{SSM: ssm, Timeout: cfg.SSMTimeout, Poll: time.Second},
	}
}

// Name names the handler as a reconcile repair.
func (h *Handler) Name() string { return "grow" }

// Result says what one growth attempt did.
type Result struct {
	Outcome  string `json:"outcome"`
	Slot     int    `json:"slot"` // -1 when no slot is involved
	VolumeID string `json:"volume_id,omitempty"`
	FromGiB  int32  `json:"from_gib,omitempty"`
	ToGiB    int32  `json:"to_gib,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// PendingCleared: the slot's pending growth is done with (finished or moot).
	PendingCleared bool `json:"pending_cleared,omitempty"`
}

// Invoke is the Lambda entry point (it makes Handler a lambda.Handler): it takes the
// raw payload, so that a payload that is not JSON still gets a clear error and log
// line, and answers with the Result as JSON.
func (h *Handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return app.Respond(h.Run(ctx, payload))
}

// Run handles one alarm payload. Only a transition to ALARM of one of this cluster's
// disk alarms acts; anything else is a logged no-op that makes no AWS call. A returned
// error means the payload was malformed or a transient failure struck before the
// growth could be recorded; Lambda then delivers it again.
func (h *Handler) Run(ctx context.Context, raw []byte) (res Result, err error) {
	o, finish := obs.Begin(h.log, h.metrics, h.cfg.MetricsNamespace, "grow", h.cfg.Cluster)
	defer func() { finish(ctx, res.Outcome, err) }()

	a, err := ParseAlarm(raw)
	if errors.Is(err, ErrNotAlarm) {
		o.Log.InfoContext(ctx, "ignoring event", obs.KeyOutcome, OutcomeIgnored, obs.KeyReason, err.Error())
		return Result{Outcome: OutcomeIgnored, Slot: -1, Reason: err.Error()}, nil
	}
	if err != nil {
		o.Log.ErrorContext(ctx, "rejecting alarm payload", obs.KeyOutcome, OutcomeMalformed, obs.KeyErr, err.Error())
		return Result{Outcome: OutcomeMalformed, Slot: -1, Reason: err.Error()}, err
	}
	o = o.With("alarm", a.Name, "alarm_state", a.State, "alarm_time", a.StateTime.Format(time.RFC3339))
	slot, ok := SlotOfAlarm(h.cfg.Cluster, h.cfg.SlotCount, a.Name)
	why := ""
	switch {
	case !ok:
		why = fmt.Sprintf("alarm %q is not the disk alarm of one of cluster %s's %d slots", a.Name, h.cfg.Cluster, h.cfg.SlotCount)
	case a.State != StateAlarm:
		why = fmt.Sprintf("alarm state %s: only ALARM grows a volume", a.State)
	}
	if why == "" && a.Dimensions[DimensionPath] != h.cfg.Grow.DataMount {
		why = fmt.Sprintf("alarm %s watches path %q, not the data mount %s", a.Name, a.Dimensions[DimensionPath], h.cfg.Grow.DataMount)
	}
	if why != "" {
		o.Log.InfoContext(ctx, "ignoring alarm", obs.KeyOutcome, OutcomeIgnored, obs.KeyReason, why)
		return Result{Outcome: OutcomeIgnored, Slot: -1, Reason: why}, nil
	}

	// The use the alarm measured. The datapoints in reasonData are what the alarm
	// evaluated (statistic Maximum over 1-minute periods); when the payload does not
	// carry them, the alarm having fired means at least the threshold is used.
	used, source := a.UsedPercent, "alarm datapoints"
	if threshold := float64(h.cfg.Grow.ThresholdPercent); used < threshold {
		used, source = threshold, "alarm threshold"
	}
	o = o.With(obs.KeySlot, slot, "used_percent", used, "used_source", source, "alarm_instance", a.Dimensions[DimensionInstance])
	j := h.newJob(ctx, o, obs.Actor(ctx, "grow"), h.Poll, h.Remote)
	res, err = j.grow(ctx, request{
		kind: fromAlarm, slot: slot, usedPercent: used, alarmTime: a.StateTime, instance: a.Dimensions[DimensionInstance],
		reason: fmt.Sprintf("alarm %s at %s: %.1f%% used (%s)", a.Name, a.StateTime.Format(time.RFC3339), used, source),
	})
	if err != nil {
		o.Log.WarnContext(ctx, "growth failed; the alarm will be delivered again", obs.KeyOutcome, OutcomeRetry, obs.KeyErr, err.Error())
	}
	return res, err
}

// Reconcile is the grow path's repair, run by the reconcile function:
//
//   - it finishes the pending growths of the slots in leases: growths that EC2 put off
//     (rate limit, a modification in progress), whose modification had not reached
//     optimizing in time, whose filesystem step failed, or that wait for EBS's rate
//     rule (from their not_before time on). A pending growth whose writer is still at
//     work (until its deadline) is left to it;
//   - it grows again every bound slot whose disk alarm is still in ALARM: an alarm
//     action fires on a change of state only, so a disk that stays full after a growth
//     (fast ingest, a small step), or whose breach came while a modification was in
//     flight, is found by looking. The slot's use is measured from the alarm's metric
//     (its latest datapoint, which must postdate the slot's last growth), and the
//     growth follows the same rules as an alarm's: the previous modification
//     completed, the rate rule, the caps.
//
// It never waits for a modification: one still in progress is finished by a later run.
// Each slot's failure is its own: the others go on, and the errors are returned
// together. It returns how many pending growths it finished or found moot, and how
// many new growths it started.
func (h *Handler) Reconcile(ctx context.Context, leases []lease.Lease) (repairs int, err error) {
	m := h.newMetrics()
	o := &obs.Obs{Log: h.log.With(obs.KeyFunction, "grow", obs.KeyCluster, h.cfg.Cluster), Metrics: m}
	defer func() {
		if ferr := m.Flush(); ferr != nil {
			o.Log.WarnContext(ctx, "flushing metrics", obs.KeyErr, ferr.Error())
		}
	}()
	pending, err := lease.NewStore(h.db, h.cfg.Table, h.cfg.Cluster).PendingGrowths(ctx)
	if err != nil {
		return 0, err
	}
	// A retry never waits for a modification, and waits for the filesystem step at
	// most retryCommandWait: the reconciler runs every few minutes and has every
	// slot to see to.
	run := *h.Remote
	run.Timeout = min(run.Timeout, retryCommandWait)
	now := h.Now()
	sorted := slices.SortedFunc(slices.Values(leases), func(a, b lease.Lease) int { return a.Slot - b.Slot })
	var errs []error
	for _, l := range sorted {
		p, ok := pending[l.Slot]
		if !ok {
			continue
		}
		so := o.With(obs.KeySlot, l.Slot, "pending_since", p.Since, "attempts", p.Attempts)
		switch {
		case p.InProgress(now):
			so.Log.InfoContext(ctx, "pending growth in progress; left to its writer", "writer", p.Actor, "until", p.Until)
			continue
		case p.Waiting(now):
			so.Log.InfoContext(ctx, "pending growth waits for EBS's rate rule", "not_before", p.NotBefore, "to_gib", p.ToGiB)
			continue
		}
		j := h.newJob(ctx, so, obs.Actor(ctx, "grow-retry"), resources.Poll{}, &run)
		res, err := j.grow(ctx, request{
			kind: fromRetry, slot: l.Slot, usedPercent: p.UsedPercent, pending: &p,
			reason: fmt.Sprintf("retry of the growth pending since %s: %s", p.Since, p.Reason),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("pending growth of slot %d: %w", l.Slot, err))
			continue
		}
		so.Log.InfoContext(ctx, "retried pending growth", obs.KeyOutcome, res.Outcome, obs.KeyReason, res.Reason, "finished", res.PendingCleared)
		if res.PendingCleared {
			repairs++
		}
	}

	n, err := h.growFullDisks(ctx, o, sorted, pending, &run)
	repairs += n
	if err != nil {
		errs = append(errs, err)
	}
	return repairs, errors.Join(errs...)
}

// fullDisk is a slot's disk alarm that is in ALARM.
type fullDisk struct {
	alarm           string
	instance, mount string // the alarm's dimensions
	since           time.Time
}

// growFullDisks grows the bound slots whose disk alarm is in ALARM and that have no
// pending growth (a pending growth is the retry's to finish). It returns how many
// growths it started and the errors of the slots that failed.
func (h *Handler) growFullDisks(ctx context.Context, o *obs.Obs, leases []lease.Lease, pending map[int]lease.PendingGrowth, run *remote.Runner) (int, error) {
	if h.cfg.Grow.FunctionARN == "" || h.cw == nil {
		return 0, nil // slotkeeper manages no disk alarms
	}
	full, err := h.fullDisks(ctx)
	if err != nil {
		return 0, err
	}
	o.Metrics.Count(MetricFullDisks, float64(len(full)))
	started := 0
	var errs []error
	for _, l := range leases {
		a, ok := full[l.Slot]
		if !ok {
			continue
		}
		so := o.With(obs.KeySlot, l.Slot, "alarm", a.alarm, "alarm_since", a.since.Format(time.RFC3339))
		_, hasPending := pending[l.Slot]
		switch {
		case l.State != lease.Bound:
			so.Log.InfoContext(ctx, "disk alarm in ALARM for a slot that is not bound; its next holder's alarm decides", "state", l.State)
			continue
		case hasPending:
			continue // the retry above sees to it
		case a.instance != l.Holder || a.mount != h.cfg.Grow.DataMount:
			so.Log.InfoContext(ctx, "disk alarm in ALARM does not watch the slot's holder; the alarm repair points it there",
				"alarm_instance", a.instance, "alarm_path", a.mount, obs.KeyInstance, l.Holder)
			continue
		}
		used, at, found, err := h.measure(ctx, l.Holder)
		if err != nil {
			errs = append(errs, fmt.Errorf("disk use of slot %d: %w", l.Slot, err))
			continue
		}
		if !found {
			so.Log.InfoContext(ctx, "disk alarm in ALARM, but no datapoint in the last "+measureWindow.String()+"; nothing to measure a growth on", obs.KeyInstance, l.Holder)
			continue
		}
		if used < float64(h.cfg.Grow.ThresholdPercent) {
			so.Log.InfoContext(ctx, "disk alarm in ALARM, but the latest datapoint is below the threshold", "used_percent", used, "at", at.Format(time.RFC3339))
			continue
		}
		so = so.With("used_percent", used, "measured_at", at.Format(time.RFC3339))
		j := h.newJob(ctx, so, obs.Actor(ctx, "grow-full"), resources.Poll{}, run)
		res, err := j.grow(ctx, request{
			kind: fromFullDisk, slot: l.Slot, usedPercent: used, measuredAt: at, instance: a.instance,
			reason: fmt.Sprintf("disk still full: alarm %s in ALARM since %s, %.1f%% used at %s", a.alarm, a.since.Format(time.RFC3339), used, at.Format(time.RFC3339)),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("growth of full disk of slot %d: %w", l.Slot, err))
			continue
		}
		so.Log.InfoContext(ctx, "disk still full", obs.KeyOutcome, res.Outcome, obs.KeyReason, res.Reason, "from_gib", res.FromGiB, "to_gib", res.ToGiB)
		switch res.Outcome {
		case OutcomeGrown, OutcomeFilesystem, OutcomePending, OutcomeWaiting:
			started++
		}
	}
	return started, errors.Join(errs...)
}

// fullDisks returns the cluster's disk alarms that are in ALARM, by slot (one paginated
// DescribeAlarms, whatever the slot count).
func (h *Handler) fullDisks(ctx context.Context) (map[int]fullDisk, error) {
	full := map[int]fullDisk{}
	p := cloudwatch.NewDescribeAlarmsPaginator(h.cw, &cloudwatch.DescribeAlarmsInput{
		AlarmNamePrefix: aws.String("slotkeeper-" + h.cfg.Cluster + "-disk-"),
		AlarmTypes:      []cwtypes.AlarmType{cwtypes.AlarmTypeMetricAlarm},
		StateValue:      cwtypes.StateValueAlarm,
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the disk alarms in ALARM of cluster %s: %w", h.cfg.Cluster, err)
		}
		for _, m := range page.MetricAlarms {
			slot, ok := SlotOfAlarm(h.cfg.Cluster, h.cfg.SlotCount, aws.ToString(m.AlarmName))
			if !ok || m.StateValue != cwtypes.StateValueAlarm {
				continue
			}
			dims := dimensions(m.Dimensions)
			full[slot] = fullDisk{alarm: aws.ToString(m.AlarmName), instance: dims[DimensionInstance], mount: dims[DimensionPath],
				since: aws.ToTime(m.StateUpdatedTimestamp)}
		}
	}
	return full, nil
}

// measure returns the latest disk-use datapoint (Maximum over a minute) of the data
// mount of instance in the last measureWindow; found is false when there is none.
func (h *Handler) measure(ctx context.Context, instance string) (used float64, at time.Time, found bool, err error) {
	end := h.Now()
	out, err := h.cw.GetMetricStatistics(ctx, &cloudwatch.GetMetricStatisticsInput{
		Namespace: aws.String(MetricNamespace), MetricName: aws.String(MetricName),
		Dimensions: []cwtypes.Dimension{
			{Name: aws.String(DimensionInstance), Value: aws.String(instance)},
			{Name: aws.String(DimensionPath), Value: aws.String(h.cfg.Grow.DataMount)},
		},
		StartTime: aws.Time(end.Add(-measureWindow)), EndTime: aws.Time(end),
		Period: aws.Int32(alarmPeriodSeconds), Statistics: []cwtypes.Statistic{cwtypes.StatisticMaximum},
	})
	if err != nil {
		return 0, time.Time{}, false, fmt.Errorf("reading %s of %s: %w", MetricName, instance, err)
	}
	for _, d := range out.Datapoints {
		if t := aws.ToTime(d.Timestamp); d.Maximum != nil && (!found || t.After(at)) {
			used, at, found = *d.Maximum, t, true
		}
	}
	return used, at, found, nil
}

func (h *Handler) newMetrics() *obs.Metrics {
	return obs.NewMetrics(h.metrics, h.cfg.MetricsNamespace, map[string]string{"Cluster": h.cfg.Cluster, "Function": "grow"})
}

// job is one growth attempt on one slot.
type job struct {
	*Handler
	o      *obs.Obs
	store  *lease.Store
	res    *resources.Manager
	poll   resources.Poll // the wait for a modification to be applied
	remote *remote.Runner // the filesystem step
	// token identifies this attempt's writes of the pending growth; cur is the pending
	// growth as this attempt last read or wrote it (nil: none), the condition of its
	// next write.
	token string
	cur   *lease.PendingGrowth
	// seq is the slot's growth_seq as this attempt read it (-1: not to be checked): a
	// first pending record is written only while no growth was recorded since, so an
	// attempt that read the slot before another finished a whole growth (and cleared
	// its record) cannot start a second modification for the same breach.
	seq int64
	// deadline is when this attempt is gone for sure (the Lambda deadline): the
	// pending growth it writes before ModifyVolume is its own until then.
	deadline time.Time
}

func (h *Handler) newJob(ctx context.Context, o *obs.Obs, actor string, poll resources.Poll, run *remote.Runner) *job {
	store := lease.NewStore(h.db, h.cfg.Table, h.cfg.Cluster)
	store.Actor, store.Now = actor, h.Now
	deadline, ok := ctx.Deadline()
	if !ok { // outside Lambda: the longest this attempt can take, and a minute
		deadline = h.Now().Add(poll.Timeout + run.Timeout + time.Minute)
	}
	return &job{
		Handler: h, o: o, store: store, poll: poll, remote: run, deadline: deadline,
		token: fmt.Sprintf("%016x", rand.Uint64()),
		res:   resources.New(h.cfg, h.ec2, resources.Poll{}, o.Log), // finds the volume only: no waits
	}
}

// kind says where a growth request comes from.
type kind int

const (
	fromAlarm    kind = iota // the slot's disk alarm fired (alarm action or EventBridge)
	fromRetry                // the reconciler finishes a pending growth
	fromFullDisk             // the reconciler found the alarm still in ALARM
)

// request is one growth to work on.
type request struct {
	kind        kind
	slot        int
	usedPercent float64
	alarmTime   time.Time            // fromAlarm: when the alarm's breach was detected
	measuredAt  time.Time            // fromFullDisk: when usedPercent was measured
	instance    string               // fromAlarm, fromFullDisk: the alarm's InstanceId dimension
	pending     *lease.PendingGrowth // fromRetry: the growth to finish
	reason      string
}

// grow takes one growth request as far as it can go now.
func (j *job) grow(ctx context.Context, rq request) (Result, error) {
	res := Result{Slot: rq.slot}

	// 1. The slot: it must have a lease (a broker identity), bound or on its way.
	var l lease.Lease
	var g lease.Growth
	err := j.o.Step(ctx, "read-slot", func(ctx context.Context) error {
		var err error
		l, g, err = j.store.LeaseAndGrowth(ctx, rq.slot)
		return err
	})
	if err != nil {
		return res, err
	}
	if l.State == lease.Free {
		return j.done(ctx, res, OutcomeIgnored, fmt.Sprintf("slot %d is free: no broker uses its volume", rq.slot))
	}
	if rq.kind != fromRetry && rq.instance != l.Holder {
		// Anyone who can name an alarm like ours could otherwise grow our disks.
		return j.done(ctx, res, OutcomeIgnored, fmt.Sprintf("the alarm watches instance %q, but slot %d is held by %s", rq.instance, rq.slot, l.Holder))
	}
	j.cur, j.seq = g.Pending, g.Seq
	now := j.Now()
	if p := g.Pending; p != nil && p.InProgress(now) {
		// Another invocation recorded this growth first and is at work on it: only the
		// writer of the record modifies the volume.
		return j.done(ctx, res, OutcomeInFlight, fmt.Sprintf("a growth of slot %d to %d GiB is in progress (%s, until %s)", rq.slot, p.ToGiB, p.Actor, p.Until))
	}
	if rq.kind == fromRetry {
		if g.Pending == nil {
			res.PendingCleared = true
			return j.done(ctx, res, OutcomeKeep, "the pending growth was finished meanwhile")
		}
		rq.pending = g.Pending // as it is now, not as it was listed
		if rq.pending.Waiting(now) {
			return j.done(ctx, res, OutcomeWaiting, fmt.Sprintf("the growth waits for EBS's rate rule until %s", rq.pending.NotBefore))
		}
	}

	// 2. The slot's volume: the one its lease records, described by its id (tags only
	// cross-check it: a volume the lease records but whose tags name another slot, or
	// that is gone, is refused; an alarm's refusal alerts).
	var v *resources.Volume
	err = j.o.Step(ctx, "find-volume", func(ctx context.Context) error {
		var err error
		v, err = j.res.RecordedVolume(ctx, l)
		return err
	})
	if ie := (*resources.IdentityError)(nil); errors.As(err, &ie) {
		if rq.pending == nil {
			j.alert(ctx, j.o.Log.With(obs.KeyOutcome, OutcomeFailed), fmt.Sprintf("slot %d volume growth refused", rq.slot), ie.Msg)
		}
		return j.done(ctx, res, OutcomeFailed, ie.Msg)
	}
	if err != nil {
		return res, err
	}
	if v == nil {
		return j.done(ctx, res, OutcomeIgnored, fmt.Sprintf("slot %d has no data volume", rq.slot))
	}
	res.VolumeID, res.FromGiB, res.ToGiB = v.ID, v.SizeGiB, v.SizeGiB
	if rq.pending != nil && rq.pending.VolumeID != v.ID {
		// The slot's volume changed under the pending growth (an operator swapped it):
		// the old request is moot; the new volume's alarm speaks for it.
		return j.clearPending(ctx, res, fmt.Sprintf("pending growth was for volume %s, the slot's volume is %s", rq.pending.VolumeID, v.ID))
	}

	// 3. The volume's latest modification.
	mod, err := j.latestModification(ctx, v.ID)
	if err != nil {
		return res, err
	}
	size := v.SizeGiB
	if mod.applied() {
		size = max(size, mod.to) // the new size, whatever DescribeVolumes says yet
	}
	res.FromGiB, res.ToGiB = size, size
	if mod.inFlight() {
		// No new modification while one is modifying (EC2 would refuse it anyway).
		// Whoever started it records it as pending and finishes it.
		return j.done(ctx, res, OutcomeInFlight, fmt.Sprintf("volume %s is modifying to %d GiB since %s", v.ID, mod.to, mod.start.Format(time.RFC3339)))
	}
	if mod.applied() && mod.to > mod.from && !g.Grown(v.ID, mod.to) {
		// A growth whose filesystem step is left (an interrupted attempt, or a
		// modification made by hand): do it first.
		p := lease.PendingGrowth{VolumeID: v.ID, FromGiB: mod.from, ToGiB: mod.to, UsedPercent: rq.usedPercent,
			Reason: fmt.Sprintf("filesystem step of the modification of %s to %d GiB started %s", v.ID, mod.to, mod.start.Format(time.RFC3339))}
		if g.Pending != nil && g.Pending.VolumeID == v.ID && g.Pending.ToGiB >= mod.to {
			p = *g.Pending // keep the bigger request if this step fails
		}
		r, rep, err := j.finish(ctx, rq.slot, v.ID, mod, rq.usedPercent, p.Reason, p)
		if err != nil || r.Outcome != OutcomeGrown {
			return r, err
		}
		r.Outcome = OutcomeFilesystem
		if !j.growFurther(rq, mod, rep) {
			return r, nil
		}
		j.o.Log.InfoContext(ctx, "filesystem step done; the request asks for more", obs.KeyReason, rq.reason)
		g.History = append(g.History, lease.GrowthRecord{VolumeID: v.ID, ToGiB: mod.to, At: j.store.Now().UTC().Format(time.RFC3339Nano),
			ModifiedAt: mod.start.UTC().Format(time.RFC3339Nano)})
		j.seq = -1 // this attempt recorded that growth itself
	}

	// 4. Repeated alarms for one breach grow once: a growth that started after the
	// breach was detected is that breach's growth, and the alarm's measurement
	// describes the volume before it. EC2 reports whole seconds, so a growth started
	// in the breach's second counts as after it (a new breach takes minutes). A disk
	// that stays full after that growth keeps its alarm in ALARM, and the reconciler
	// grows it again (fromFullDisk).
	switch {
	case rq.kind == fromAlarm && mod.applied() && !mod.start.Before(rq.alarmTime.Truncate(time.Second)):
		return j.done(ctx, res, OutcomeStale, fmt.Sprintf("volume %s grew to %d GiB at %s, after the breach at %s",
			v.ID, mod.to, mod.start.Format(time.RFC3339), rq.alarmTime.Format(time.RFC3339)))
	case rq.kind == fromFullDisk && rq.measuredAt.Before(g.LastGrown(v.ID)):
		return j.done(ctx, res, OutcomeKeep, fmt.Sprintf("the latest datapoint (%s) predates the last growth of %s (%s)",
			rq.measuredAt.Format(time.RFC3339), v.ID, g.LastGrown(v.ID).Format(time.RFC3339)))
	}

	// 5. How far to grow: the policy, within the configured maximum and the largest
	// volume of its type that EBS allows.
	policy, limit := j.cfg.Grow, fmt.Sprintf("the maximum size (SLOTKEEPER_GROW_MAX_SIZE_GIB = %d GiB)", j.cfg.Grow.MaxSizeGiB)
	if lim, ok := config.LimitsOf(v.Type); ok && lim.MaxGiB < policy.MaxSizeGiB {
		policy.MaxSizeGiB, limit = lim.MaxGiB, fmt.Sprintf("the largest %s volume EBS allows (%d GiB)", v.Type, lim.MaxGiB)
	}
	d := Plan(policy, size, rq.usedPercent)
	if p := rq.pending; p != nil {
		// A retry finishes the recorded decision, within today's maximum.
		d = Decision{Action: Grow, FromGiB: size, ToGiB: min(p.ToGiB, policy.MaxSizeGiB), Capped: p.ToGiB > policy.MaxSizeGiB, Reason: p.Reason}
		switch {
		case size >= p.ToGiB:
			return j.clearPending(ctx, res, fmt.Sprintf("volume %s is %d GiB already, the pending growth wanted %d GiB", v.ID, size, p.ToGiB))
		case size >= policy.MaxSizeGiB:
			d.Action, d.ToGiB = AtMax, size
		}
	}
	switch d.Action {
	case Keep:
		return j.done(ctx, res, OutcomeKeep, d.Reason)
	case AtMax:
		j.atMax(ctx, rq, v.ID, size, limit, d.Reason)
		res, err := j.done(ctx, res, OutcomeAtMax, d.Reason)
		if rq.pending != nil && err == nil {
			return j.clearPending(ctx, res, d.Reason)
		}
		return res, err
	}
	res.ToGiB = d.ToGiB
	if d.Capped {
		j.o.Log.WarnContext(ctx, "growth capped", obs.KeyReason, d.Reason, "limit", limit)
	}

	// 6. EBS's rules for a new modification: the previous one completed (optimizing is
	// still in flight) or failed (EBS documents a failed modification as one to retry:
	// the volume kept its size), at most MaxPerDay started in a rolling 24 hours (a
	// failed one counts, to be safe), MinInterval apart.
	failed := mod != nil && mod.state == ec2types.VolumeModificationStateFailed
	if mod != nil && !failed && mod.state != ec2types.VolumeModificationStateCompleted {
		return j.done(ctx, res, OutcomeInFlight, fmt.Sprintf("the modification of %s to %d GiB is %s: the next one waits until it is completed",
			v.ID, mod.to, mod.state))
	}
	p := lease.PendingGrowth{VolumeID: v.ID, FromGiB: size, ToGiB: d.ToGiB, UsedPercent: rq.usedPercent, Reason: d.Reason}
	if rq.pending != nil {
		p.Since, p.Attempts, p.Reason = rq.pending.Since, rq.pending.Attempts, rq.pending.Reason
	}
	if notBefore, why := j.rateRule(g, v.ID, mod, now); !notBefore.IsZero() {
		return j.wait(ctx, res, p, notBefore, why)
	}
	if failed {
		j.alert(ctx, j.o.Log.With("volume", v.ID, "size_gib", size, "to_gib", mod.to),
			fmt.Sprintf("slot %d disk modification failed", rq.slot),
			fmt.Sprintf("The modification of the data volume %s of Kafka cluster %s slot %d (broker node id %d) to %d GiB, started %s, failed: %s.\n"+
				"slotkeeper modifies it again now, within the EBS rate rules; if this repeats, look at the volume in the EC2 console.",
				v.ID, j.cfg.Cluster, rq.slot, j.cfg.NodeID(rq.slot), mod.to, mod.start.Format(time.RFC3339), mod.message))
	}

	// 7. Write ahead, conditionally: of two invocations deciding this growth at once,
	// only the one whose record lands calls ModifyVolume; and once ModifyVolume is
	// accepted, a crash must not lose the filesystem step.
	p.Until = j.deadline.UTC().Format(time.RFC3339Nano)
	err = j.o.Step(ctx, "record-pending", func(ctx context.Context) error {
		var err error
		p, err = j.writePending(ctx, rq.slot, p)
		return err
	})
	if errors.Is(err, lease.ErrFenced) {
		return j.done(ctx, res, OutcomeInFlight, "another invocation recorded a growth of the slot first; it makes the modification")
	}
	if err != nil {
		return res, err
	}

	// 8. ModifyVolume.
	err = j.o.Step(ctx, "modify-volume", func(ctx context.Context) error {
		_, err := j.ec2.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: &v.ID, Size: aws.Int32(d.ToGiB)})
		return err
	})
	if err != nil {
		if permanent(err) {
			return j.failed(ctx, rq, res, fmt.Errorf("EC2 refused to grow volume %s to %d GiB: %w", v.ID, d.ToGiB, err))
		}
		return j.notNow(ctx, rq.slot, res, p, fmt.Errorf("ModifyVolume %s to %d GiB: %w", v.ID, d.ToGiB, err))
	}
	j.o.Log.InfoContext(ctx, "volume modification started", "volume", v.ID, "from_gib", size, "to_gib", d.ToGiB, obs.KeyReason, d.Reason)

	// 9. The filesystem can grow once the modification is optimizing.
	applied, err := j.waitApplied(ctx, v.ID, d.ToGiB)
	if err != nil {
		return j.notNow(ctx, rq.slot, res, p, err)
	}
	applied.from = size
	r, _, err := j.finish(ctx, rq.slot, v.ID, applied, rq.usedPercent, d.Reason, p)
	return r, err
}

// rateRule returns when EBS's rate rule lets the next modification of volume start,
// and why, or the zero time when it may start now. The modifications counted are those
// of the slot's growth history and the volume's latest one (which may have been made
// by hand).
func (j *job) rateRule(g lease.Growth, volume string, latest *modification, now time.Time) (time.Time, string) {
	starts := g.ModificationTimes(volume)
	if latest != nil && !latest.start.IsZero() && !slices.ContainsFunc(starts, func(t time.Time) bool {
		return t.Truncate(time.Second).Equal(latest.start.Truncate(time.Second))
	}) {
		starts = append(starts, latest.start)
		slices.SortFunc(starts, time.Time.Compare)
	}
	var next time.Time
	var why string
	recent := slices.DeleteFunc(slices.Clone(starts), func(t time.Time) bool { return !t.After(now.Add(-24 * time.Hour)) })
	if n := j.cfg.Grow.MaxPerDay; len(recent) >= n {
		next = recent[len(recent)-n].Add(24 * time.Hour)
		why = fmt.Sprintf("%d modifications of %s started in the last 24 hours (SLOTKEEPER_GROW_MAX_PER_DAY = %d)", len(recent), volume, n)
	}
	if gap := j.cfg.Grow.MinInterval; gap > 0 && len(starts) > 0 {
		if t := starts[len(starts)-1].Add(gap); t.After(now) && t.After(next) {
			next = t
			why = fmt.Sprintf("the last modification of %s started %s ago (SLOTKEEPER_GROW_MIN_INTERVAL = %s)", volume, now.Sub(starts[len(starts)-1]).Round(time.Second), gap)
		}
	}
	if !next.After(now) {
		return time.Time{}, ""
	}
	return next, why
}

// wait records p as a pending growth that may not start before notBefore (EBS's rate
// rule); the reconciler starts it from then on. A pending growth already waiting for
// that time is left as it is.
func (j *job) wait(ctx context.Context, res Result, p lease.PendingGrowth, notBefore time.Time, why string) (Result, error) {
	p.NotBefore, p.Until = notBefore.UTC().Format(time.RFC3339Nano), ""
	res.Outcome, res.Reason = OutcomeWaiting, fmt.Sprintf("%s: the growth to %d GiB starts at %s", why, p.ToGiB, p.NotBefore)
	if c := j.cur; c != nil && c.NotBefore == p.NotBefore && c.ToGiB >= p.ToGiB && c.VolumeID == p.VolumeID {
		j.o.Log.InfoContext(ctx, "growth waits for EBS's rate rule (already recorded)", obs.KeyOutcome, OutcomeWaiting, obs.KeyReason, res.Reason)
		return res, nil
	}
	err := j.o.Step(ctx, "record-pending", func(ctx context.Context) error {
		_, err := j.writePending(ctx, res.Slot, p)
		return err
	})
	if errors.Is(err, lease.ErrFenced) {
		return j.done(ctx, res, OutcomeInFlight, "another invocation recorded a growth of the slot first")
	}
	if err != nil {
		return res, err
	}
	j.o.Metrics.Count(MetricGrowthPending, 1)
	j.o.Log.WarnContext(ctx, "growth waits for EBS's rate rule: recorded as pending", obs.KeyOutcome, OutcomeWaiting, obs.KeyReason, res.Reason, "to_gib", p.ToGiB)
	return res, nil
}

// writePending writes p as the slot's pending growth, conditioned on the record being
// as this attempt last saw it, and remembers what it wrote.
func (j *job) writePending(ctx context.Context, slot int, p lease.PendingGrowth) (lease.PendingGrowth, error) {
	p.Token, p.Actor = j.token, ""
	w, err := j.store.WritePending(ctx, slot, j.cur, j.seq, p)
	if err != nil {
		return p, err
	}
	j.cur = &w
	return w, nil
}

// growFurther decides whether a request goes on to a new growth after the filesystem
// step of an earlier modification. A retry does when its recorded size is not reached.
// An alarm does only when its breach came after that modification started and the
// step found the filesystem grown already: otherwise the breach was measured on the
// smaller filesystem, which the step has just relieved. A full disk's measurement
// predates the step, so it does not.
func (j *job) growFurther(rq request, mod *modification, rep *Report) bool {
	switch rq.kind {
	case fromRetry:
		return rq.pending.ToGiB > mod.to
	case fromAlarm:
		return mod.start.Before(rq.alarmTime.Truncate(time.Second)) && rep != nil && !rep.Grew()
	}
	return false
}

// finish grows the filesystem of the applied modification mod of volume on the slot's
// holder and records the growth (which clears the pending growth it fulfils). When the
// holder cannot do it now, p is recorded as pending. It returns the script's report
// when the script printed one.
func (j *job) finish(ctx context.Context, slot int, volume string, mod *modification, used float64, reason string, p lease.PendingGrowth) (Result, *Report, error) {
	fromGiB, toGiB := mod.from, mod.to
	res := Result{Slot: slot, VolumeID: volume, FromGiB: fromGiB, ToGiB: toGiB}
	var l lease.Lease
	err := j.o.Step(ctx, "read-holder", func(ctx context.Context) error {
		var err error
		l, err = j.store.Get(ctx, slot) // the holder may have changed during the wait
		return err
	})
	if err != nil {
		return res, nil, err
	}
	if l.State != lease.Bound {
		r, err := j.notNow(ctx, slot, res, p, fmt.Errorf("slot %d is %s: its filesystem grows once a holder is bound", slot, l.State))
		return r, nil, err
	}
	var out remote.Result
	err = j.o.Step(ctx, "grow-filesystem", func(ctx context.Context) error {
		var err error
		out, err = j.remote.Run(ctx, l.Holder, fmt.Sprintf("slotkeeper: grow %s to %d GiB", j.cfg.Grow.DataMount, toGiB), FilesystemScript(j.cfg.Grow.DataMount, toGiB))
		return err
	})
	if err != nil {
		j.o.Metrics.Count(MetricFilesystemFailures, 1)
		j.o.Log.ErrorContext(ctx, "growing the filesystem failed; the growth stays pending", obs.KeyInstance, l.Holder,
			"command", out.CommandID, obs.KeyErr, err.Error())
		r, err := j.notNow(ctx, slot, res, p, fmt.Errorf("growing the filesystem on %s: %w", l.Holder, err))
		return r, nil, err
	}
	var rep *Report
	if r, ok := ParseReport(out.Stdout); ok {
		rep = &r
	}
	rec := lease.GrowthRecord{VolumeID: volume, FromGiB: fromGiB, ToGiB: toGiB, UsedPercent: used, Instance: l.Holder, Reason: reason}
	if !mod.start.IsZero() {
		rec.ModifiedAt = mod.start.UTC().Format(time.RFC3339Nano)
	}
	err = j.o.Step(ctx, "record-growth", func(ctx context.Context) error {
		var err error
		res.PendingCleared, err = j.store.RecordGrowth(ctx, slot, rec)
		return err
	})
	if err != nil {
		return res, rep, err // a retry finds the modification applied and not recorded, and repeats the harmless step
	}
	j.o.Metrics.Count(MetricGrowths, 1)
	j.o.Metrics.Count(MetricGrowthGiB, float64(toGiB-fromGiB))
	report := "(no report: the command printed none)"
	if rep != nil {
		report = rep.String()
	}
	j.o.Log.InfoContext(ctx, "volume and filesystem grown", obs.KeyOutcome, OutcomeGrown, "volume", volume,
		"from_gib", fromGiB, "to_gib", toGiB, obs.KeyInstance, l.Holder, "command", out.CommandID, "filesystem", report)
	res.Outcome, res.Reason = OutcomeGrown, reason
	return res, rep, nil
}

// notNow records p as the slot's pending growth, with cause as its last error and no
// writer at work on it, and reports success: a later reconcile (or alarm) finishes it.
// Only when the record cannot be written does it return an error, so that the request
// is delivered again.
func (j *job) notNow(ctx context.Context, slot int, res Result, p lease.PendingGrowth, cause error) (Result, error) {
	p.Attempts++
	p.LastError = cause.Error()
	if len(p.LastError) > 500 {
		p.LastError = p.LastError[:500]
	}
	p.Until = ""
	err := j.o.Step(ctx, "record-pending", func(ctx context.Context) error {
		_, err := j.writePending(ctx, slot, p)
		return err
	})
	if errors.Is(err, lease.ErrFenced) {
		// Someone else wrote the slot's growth since (it is theirs to finish now).
		j.o.Log.WarnContext(ctx, "growth put off, and the pending growth changed meanwhile: left to its new writer", obs.KeyReason, cause.Error())
		res.Outcome, res.Reason = OutcomePending, cause.Error()
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("%w; and recording the pending growth failed: %w", cause, err)
	}
	j.o.Metrics.Count(MetricGrowthPending, 1)
	j.o.Log.WarnContext(ctx, "growth put off: recorded as pending for the reconciler", obs.KeyOutcome, OutcomePending,
		obs.KeyReason, cause.Error(), "code", awsapi.Code(cause), "to_gib", p.ToGiB, "attempts", p.Attempts)
	res.Outcome, res.Reason = OutcomePending, cause.Error()
	return res, nil
}

// failed gives up on a growth EC2 refused for good: it clears the pending growth and
// alerts the operator.
func (j *job) failed(ctx context.Context, rq request, res Result, cause error) (Result, error) {
	j.o.Metrics.Count(MetricGrowthFailed, 1)
	j.alert(ctx, j.o.Log.With(obs.KeyOutcome, OutcomeFailed, obs.KeyErr, cause.Error()),
		fmt.Sprintf("slot %d volume growth refused", rq.slot),
		fmt.Sprintf("slotkeeper could not grow the data volume of cluster %s slot %d, and will not retry: %v\nRequest: %s\n"+
			"Fix the cause and grow the volume by hand, or wait for the next alarm.", j.cfg.Cluster, rq.slot, cause, rq.reason))
	res.Outcome, res.Reason = OutcomeFailed, cause.Error()
	if j.cur != nil {
		if err := j.store.ClearPendingGrowth(ctx, rq.slot, *j.cur); err != nil && !errors.Is(err, lease.ErrFenced) {
			return res, err
		}
	}
	res.PendingCleared = true
	return res, nil
}

// atMax raises the loud signal for a breach of a volume at its maximum size (limit
// says which: the configured one or the type's): the GrowthAtMax metric, an error log
// and an operator notification.
func (j *job) atMax(ctx context.Context, rq request, volume string, sizeGiB int32, limit, reason string) {
	j.o.Metrics.Count(MetricGrowthAtMax, 1)
	j.alert(ctx, j.o.Log.With(obs.KeyOutcome, OutcomeAtMax, "volume", volume, "size_gib", sizeGiB, "max_gib", j.cfg.Grow.MaxSizeGiB, "limit", limit),
		fmt.Sprintf("slot %d disk at max size", rq.slot),
		fmt.Sprintf("The data volume %s of Kafka cluster %s slot %d (broker node id %d) is %d GiB, %s, and it is still filling: %s.\n"+
			"slotkeeper will not grow it. Lower retention, move partitions to other brokers, add brokers, or raise the maximum size "+
			"(or move the broker to a volume type that allows more).",
			volume, j.cfg.Cluster, rq.slot, j.cfg.NodeID(rq.slot), sizeGiB, limit, reason))
}

// alert logs the alert at error level and publishes it to the operators' SNS topic, if
// one is configured. A failed publish is logged: it must not fail the growth path.
func (j *job) alert(ctx context.Context, log *slog.Logger, subject, message string) {
	err := j.o.Step(ctx, "alert", func(ctx context.Context) error { return j.alerts.Send(ctx, log, subject, message) })
	if err != nil {
		j.o.Log.WarnContext(ctx, "could not notify the operators", obs.KeyErr, err.Error())
	}
}

// done logs an outcome that needs nothing else.
func (j *job) done(ctx context.Context, res Result, outcome, reason string) (Result, error) {
	j.o.Log.InfoContext(ctx, "nothing to grow now", obs.KeyOutcome, outcome, obs.KeyReason, reason)
	res.Outcome, res.Reason = outcome, reason
	return res, nil
}

// clearPending drops the slot's pending growth, as this attempt read it, because it is
// moot.
func (j *job) clearPending(ctx context.Context, res Result, reason string) (Result, error) {
	var err error
	if j.cur != nil {
		err = j.o.Step(ctx, "clear-pending", func(ctx context.Context) error { return j.store.ClearPendingGrowth(ctx, res.Slot, *j.cur) })
	}
	if err != nil && !errors.Is(err, lease.ErrFenced) { // fenced: it changed meanwhile, and is someone else's now
		return res, err
	}
	res.PendingCleared = err == nil
	if res.Outcome == "" {
		res.Outcome = OutcomeKeep
	}
	res.Reason = reason
	j.o.Log.InfoContext(ctx, "pending growth no longer needed", obs.KeyOutcome, res.Outcome, obs.KeyReason, reason, "cleared", res.PendingCleared)
	return res, nil
}

// modification is the part of an EBS volume modification the grow path looks at.
type modification struct {
	state    ec2types.VolumeModificationState
	from, to int32
	start    time.Time
	message  string
}

func (m *modification) inFlight() bool {
	return m != nil && m.state == ec2types.VolumeModificationStateModifying
}

// applied: the new size is usable (the filesystem may grow from optimizing on).
func (m *modification) applied() bool {
	return m != nil && (m.state == ec2types.VolumeModificationStateOptimizing || m.state == ec2types.VolumeModificationStateCompleted)
}

// latestModification returns the volume's most recent modification, or nil when it
// was never modified.
func (j *job) latestModification(ctx context.Context, volume string) (*modification, error) {
	var latest *modification
	err := j.o.Step(ctx, "describe-modifications", func(ctx context.Context) error {
		out, err := j.ec2.DescribeVolumesModifications(ctx, &ec2.DescribeVolumesModificationsInput{VolumeIds: []string{volume}})
		if awsapi.Code(err) == "InvalidVolumeModification.NotFound" { // AWS's answer for a volume never modified
			return nil
		}
		if err != nil {
			return fmt.Errorf("describing modifications of volume %s: %w", volume, err)
		}
		for _, vm := range out.VolumesModifications {
			m := &modification{
				state: vm.ModificationState, from: aws.ToInt32(vm.OriginalSize), to: aws.ToInt32(vm.TargetSize),
				start: aws.ToTime(vm.StartTime), message: aws.ToString(vm.StatusMessage),
			}
			if m.to == 0 { // not a size change (type, IOPS): the size stays what it was
				m.from, m.to = aws.ToInt32(vm.OriginalSize), aws.ToInt32(vm.OriginalSize)
			}
			// Sizes only grow, so of two modifications started in the same second (EC2
			// reports whole seconds) the bigger one is the later.
			if latest == nil || m.start.After(latest.start) || (m.start.Equal(latest.start) && m.to > latest.to) {
				latest = m
			}
		}
		return nil
	})
	return latest, err
}

// waitApplied polls the volume's modifications, within j.poll, until the one to toGiB
// is optimizing or completed. A zero poll timeout checks once.
func (j *job) waitApplied(ctx context.Context, volume string, toGiB int32) (*modification, error) {
	delay, deadline := max(j.poll.Initial, time.Second/10), time.Now().Add(j.poll.Timeout)
	for {
		m, err := j.latestModification(ctx, volume)
		if err != nil {
			return nil, err
		}
		switch {
		case m != nil && m.to >= toGiB && m.applied():
			return m, nil
		case m != nil && m.to >= toGiB && m.state == ec2types.VolumeModificationStateFailed:
			return nil, fmt.Errorf("the modification of volume %s to %d GiB failed: %s", volume, toGiB, m.message)
		}
		if !time.Now().Before(deadline) {
			state := "not found"
			if m != nil {
				state = fmt.Sprintf("%s to %d GiB", m.state, m.to)
			}
			return nil, fmt.Errorf("the modification of volume %s to %d GiB is not optimizing after %s (%s)", volume, toGiB, j.poll.Timeout, state)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the modification of volume %s: %w", volume, ctx.Err())
		case <-time.After(delay/2 + rand.N(delay/2+1)):
		}
		delay = min(delay*3/2, max(j.poll.Max, delay))
	}
}

// permanent reports whether a ModifyVolume error is one that no retry can fix. Every
// other error (VolumeModificationRateExceeded, IncorrectModificationState, throttling
// past the SDK's retries, 5xx) means "not now".
func permanent(err error) bool {
	switch awsapi.Code(err) {
	case "InvalidParameterValue", "InvalidParameterCombination", "InvalidParameter",
		"UnauthorizedOperation", "InvalidVolume.NotFound":
		return true
	}
	return false
}
