package grow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/resources"
)

// The metric a disk alarm watches: what the CloudWatch agent configuration the project
// ships (deploy/cloudwatch-agent.json) makes the agent publish for the data mount. The
// agent rolls disk_used_percent up to exactly these two dimensions
// (aggregation_dimensions [["InstanceId", "path"]]), so the alarm's dimensions are
// known before the instance exists: its id and SLOTKEEPER_DATA_MOUNT. The unrolled
// metric also carries fstype (and device, unless dropped), which slotkeeper cannot
// know in advance.
const (
	MetricNamespace    = "CWAgent"
	MetricName         = "disk_used_percent"
	DimensionInstance  = "InstanceId"
	DimensionPath      = "path"
	alarmPeriodSeconds = 60 // the agent's collection interval
	// alarmDatapoints of as many 1-minute periods must breach: one sample over the
	// threshold (a compaction's temporary files) does not grow a volume.
	alarmDatapoints = 2
	// treatMissingData is notBreaching: a missing datapoint is good news, not bad.
	// Datapoints go missing whenever the holder changes (the old instance is gone and
	// the alarm points at it until the new one is bound) or the agent restarts; as
	// "breaching" they would grow a volume on no evidence, and as "missing" the alarm
	// would sit in INSUFFICIENT_DATA through every replacement. notBreaching also
	// brings the alarm back to OK, so the next real breach is a fresh OK -> ALARM
	// transition, the only thing that runs alarm actions.
	treatMissingData = "notBreaching"
)

// AlarmInput returns the PutMetricAlarm request that makes slot's disk alarm watch
// the data mount of instance. Alarm actions run only on state transitions, so an
// alarm that stays in ALARM invokes the grow function once per breach.
func AlarmInput(cfg config.Config, slot int, instance string) *cloudwatch.PutMetricAlarmInput {
	return &cloudwatch.PutMetricAlarmInput{
		AlarmName: aws.String(AlarmName(cfg.Cluster, slot)),
		AlarmDescription: aws.String(fmt.Sprintf(
			"slotkeeper: %s slot %d data volume (%s) is %d%% full or more; invokes the grow function. Managed by slotkeeper: edits are overwritten.",
			cfg.Cluster, slot, cfg.Grow.DataMount, cfg.Grow.ThresholdPercent)),
		Namespace:  aws.String(MetricNamespace),
		MetricName: aws.String(MetricName),
		Dimensions: []types.Dimension{
			{Name: aws.String(DimensionInstance), Value: aws.String(instance)},
			{Name: aws.String(DimensionPath), Value: aws.String(cfg.Grow.DataMount)},
		},
		Statistic:          types.StatisticMaximum,
		Period:             aws.Int32(alarmPeriodSeconds),
		EvaluationPeriods:  aws.Int32(alarmDatapoints),
		DatapointsToAlarm:  aws.Int32(alarmDatapoints),
		Threshold:          aws.Float64(float64(cfg.Grow.ThresholdPercent)),
		ComparisonOperator: types.ComparisonOperatorGreaterThanOrEqualToThreshold,
		TreatMissingData:   aws.String(treatMissingData),
		ActionsEnabled:     aws.Bool(true),
		AlarmActions:       []string{cfg.Grow.FunctionARN},
		// No OKActions and no InsufficientDataActions: PutMetricAlarm replaces the whole
		// alarm, so leaving them out also removes any added by hand.
		Tags: []types.Tag{ // applied when the alarm is created; CloudWatch ignores them on updates
			{Key: aws.String(resources.TagCluster), Value: aws.String(cfg.Cluster)},
			{Key: aws.String(resources.TagSlot), Value: aws.String(strconv.Itoa(slot))},
		},
	}
}

// Alarms points the slots' disk alarms at their holders. It is the launch path's
// "alarm" Follower (the alarm watches the new holder before the instance is put in
// service) and a reconcile repair (alarms that drifted are pointed back). With no
// grow function configured (SLOTKEEPER_GROW_FUNCTION_ARN empty) it does nothing and
// makes no call.
type Alarms struct {
	cfg config.Config
	cw  awsapi.CloudWatch
	log *slog.Logger
}

var _ launch.Follower = (*Alarms)(nil)

// NewAlarms returns the disk alarm manager of cfg's cluster. Wire it into the launch
// handler with launch.Handler.Followers = append(..., grow.NewAlarms(cfg, cw, log)).
func NewAlarms(cfg config.Config, cw awsapi.CloudWatch, log *slog.Logger) *Alarms {
	return &Alarms{cfg: cfg, cw: cw, log: log}
}

// Name implements launch.Follower.
func (a *Alarms) Name() string { return "alarm" }

// enabled reports whether slotkeeper manages disk alarms.
func (a *Alarms) enabled() bool { return a.cfg.Grow.FunctionARN != "" }

// SlotBound implements launch.Follower: the slot's alarm now watches the new holder.
// When the launch's own bind has just moved the slot to the holder (b.Moved), the
// alarm cannot already watch it, so it is written without being read first (one
// PutMetricAlarm, which replaces the whole alarm); a redelivery that found the slot
// bound reads it and writes it only if it differs (Point).
func (a *Alarms) SlotBound(ctx context.Context, b launch.Bound) error {
	if !a.enabled() {
		return nil
	}
	if b.Moved {
		_, err := a.put(ctx, b.Lease.Slot, b.Lease.Holder, nil, false)
		return err
	}
	_, err := a.Point(ctx, b.Lease.Slot, b.Lease.Holder)
	return err
}

// Point makes slot's disk alarm watch instance. It is idempotent: an alarm that is
// already exactly as wanted is left alone (no PutMetricAlarm, whose account-wide rate
// is low). It reports whether it wrote the alarm.
func (a *Alarms) Point(ctx context.Context, slot int, instance string) (changed bool, err error) {
	if !a.enabled() {
		return false, nil
	}
	name := AlarmName(a.cfg.Cluster, slot)
	out, err := a.cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{
		AlarmNames: []string{name}, AlarmTypes: []types.AlarmType{types.AlarmTypeMetricAlarm},
	})
	if err != nil {
		return false, fmt.Errorf("describing disk alarm %s: %w", name, err)
	}
	var cur *types.MetricAlarm
	if len(out.MetricAlarms) > 0 {
		cur = &out.MetricAlarms[0]
	}
	return a.put(ctx, slot, instance, cur, true)
}

// put writes slot's alarm for instance unless cur already is that alarm. read says
// whether the alarm was read (cur nil: there is none) or not (written blind).
func (a *Alarms) put(ctx context.Context, slot int, instance string, cur *types.MetricAlarm, read bool) (bool, error) {
	want := AlarmInput(a.cfg, slot, instance)
	if cur != nil && alarmMatches(*cur, want) {
		return false, nil
	}
	if _, err := a.cw.PutMetricAlarm(ctx, want); err != nil {
		return false, fmt.Errorf("pointing disk alarm %s at %s: %w", aws.ToString(want.AlarmName), instance, err)
	}
	from := "(new alarm)"
	if !read {
		from = "(not read: the slot has just moved to this holder)"
	}
	if cur != nil {
		from = dimensions(cur.Dimensions)[DimensionInstance]
	}
	a.log.InfoContext(ctx, "disk alarm points at the slot's holder", obs.KeySlot, slot, obs.KeyInstance, instance,
		"alarm", aws.ToString(want.AlarmName), "previous_instance", from)
	return true, nil
}

// Reconcile points the disk alarm of every bound slot in leases at its holder,
// creating missing alarms and correcting drifted ones, and returns how many it wrote.
// It implements the reconcile function's repair of disk alarms.
func (a *Alarms) Reconcile(ctx context.Context, leases []lease.Lease) (repairs int, err error) {
	if !a.enabled() {
		return 0, nil
	}
	existing := map[string]types.MetricAlarm{}
	p := cloudwatch.NewDescribeAlarmsPaginator(a.cw, &cloudwatch.DescribeAlarmsInput{
		AlarmNamePrefix: aws.String("slotkeeper-" + a.cfg.Cluster + "-disk-"),
		AlarmTypes:      []types.AlarmType{types.AlarmTypeMetricAlarm},
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return 0, fmt.Errorf("listing disk alarms of cluster %s: %w", a.cfg.Cluster, err)
		}
		for _, m := range page.MetricAlarms {
			existing[aws.ToString(m.AlarmName)] = m
		}
	}
	var errs []error
	for _, l := range leases {
		if l.State != lease.Bound || l.Holder == "" {
			continue // a free or moving slot: its next bind points the alarm
		}
		var cur *types.MetricAlarm
		if m, ok := existing[AlarmName(a.cfg.Cluster, l.Slot)]; ok {
			cur = &m
		}
		changed, err := a.put(ctx, l.Slot, l.Holder, cur, true)
		if err != nil {
			errs = append(errs, err)
		}
		if changed {
			repairs++
		}
	}
	return repairs, errors.Join(errs...)
}

// alarmMatches reports whether alarm m is what want would make it.
func alarmMatches(m types.MetricAlarm, want *cloudwatch.PutMetricAlarmInput) bool {
	return aws.ToString(m.Namespace) == aws.ToString(want.Namespace) &&
		aws.ToString(m.MetricName) == aws.ToString(want.MetricName) &&
		maps.Equal(dimensions(m.Dimensions), dimensions(want.Dimensions)) &&
		m.Statistic == want.Statistic && m.ExtendedStatistic == nil &&
		aws.ToInt32(m.Period) == aws.ToInt32(want.Period) &&
		aws.ToInt32(m.EvaluationPeriods) == aws.ToInt32(want.EvaluationPeriods) &&
		aws.ToInt32(m.DatapointsToAlarm) == aws.ToInt32(want.DatapointsToAlarm) &&
		aws.ToFloat64(m.Threshold) == aws.ToFloat64(want.Threshold) &&
		m.ComparisonOperator == want.ComparisonOperator &&
		aws.ToString(m.TreatMissingData) == aws.ToString(want.TreatMissingData) &&
		aws.ToBool(m.ActionsEnabled) == aws.ToBool(want.ActionsEnabled) &&
		slices.Equal(m.AlarmActions, want.AlarmActions) &&
		len(m.OKActions) == 0 && len(m.InsufficientDataActions) == 0 &&
		aws.ToString(m.AlarmDescription) == aws.ToString(want.AlarmDescription) &&
		m.Unit == ""
}

func dimensions(dims []types.Dimension) map[string]string {
	out := make(map[string]string, len(dims))
	for _, d := range dims {
		out[aws.ToString(d.Name)] = aws.ToString(d.Value)
	}
	return out
}
