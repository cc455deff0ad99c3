package grow

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/eventbridge"
)

// Alarm states.
const (
	StateAlarm            = "ALARM"
	StateOK               = "OK"
	StateInsufficientData = "INSUFFICIENT_DATA"
)

// The two shapes in which an alarm state change reaches the grow function.
const (
	// SourceAlarmAction is the payload CloudWatch sends when an alarm action invokes a
	// Lambda function directly (events/alarm-action.json).
	SourceAlarmAction = "alarm-action"
	// SourceEventBridge is the EventBridge "CloudWatch Alarm State Change" event
	// (events/alarm-state-change.json).
	SourceEventBridge = "eventbridge"
)

// DetailTypeAlarmStateChange is the detail-type of alarm events on EventBridge.
const DetailTypeAlarmStateChange = "CloudWatch Alarm State Change"

// ErrMalformed marks a payload that is not a well-formed alarm event.
var ErrMalformed = errors.New("malformed alarm event")

// ErrNotAlarm marks a well-formed event that is not an alarm state change (another
// EventBridge event, another source): not ours to act on.
var ErrNotAlarm = errors.New("not a CloudWatch alarm state change")

// Alarm is a CloudWatch alarm state change, whichever shape it came in.
type Alarm struct {
	Source        string // SourceAlarmAction or SourceEventBridge
	Name          string
	ARN           string
	State         string // ALARM, OK or INSUFFICIENT_DATA
	PreviousState string
	// StateTime is when the alarm entered State: when the breach was detected.
	StateTime time.Time
	Reason    string
	// UsedPercent is the highest datapoint the alarm evaluated for this state (from
	// the state's reasonData), or 0 when the payload does not say.
	UsedPercent float64
	// Dimensions are the dimensions of the alarm's metric, as configured.
	Dimensions map[string]string
}

// The JSON of both payloads. aws-lambda-go has no type for the direct alarm action
// payload, and its timestamps ("2026-11-21T20:15:00.000+0000") are not RFC 3339, so
// they are kept as strings and parsed by parseTime.
type (
	alarmActionJSON struct {
		Source    string          `json:"source"`
		AlarmARN  string          `json:"alarmArn"`
		Time      string          `json:"time"`
		AlarmData json.RawMessage `json:"alarmData"` // alarmDetailJSON, read once the source is known
	}
	// stateChangeJSON's Detail is an alarmDetailJSON, read once the type is known.
	stateChangeJSON = eventbridge.Envelope
	alarmDetailJSON struct {
		AlarmName     string          `json:"alarmName"`
		State         *alarmStateJSON `json:"state"`
		PreviousState *alarmStateJSON `json:"previousState"`
		Configuration struct {
			Metrics []struct {
				MetricStat *struct {
					Metric struct {
						Namespace  string            `json:"namespace"`
						Name       string            `json:"name"`
						Dimensions map[string]string `json:"dimensions"`
					} `json:"metric"`
				} `json:"metricStat"`
			} `json:"metrics"`
		} `json:"configuration"`
	}
	alarmStateJSON struct {
		Value      string `json:"value"`
		Reason     string `json:"reason"`
		ReasonData string `json:"reasonData"` // JSON in a string
		Timestamp  string `json:"timestamp"`
	}
	// reasonDataJSON is the part of a metric alarm's reasonData that says what the
	// alarm saw: the datapoints it evaluated.
	reasonDataJSON struct {
		RecentDatapoints    []float64 `json:"recentDatapoints"`
		EvaluatedDatapoints []struct {
			Value *float64 `json:"value"`
		} `json:"evaluatedDatapoints"`
	}
)

// ParseAlarm parses either payload: the direct alarm action payload (it has alarmData)
// or the EventBridge event (it has detail-type). It returns ErrNotAlarm (wrapped) for
// JSON that is some other event, and ErrMalformed (wrapped) for anything else.
func ParseAlarm(raw []byte) (Alarm, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return Alarm{}, fmt.Errorf("%w: not a JSON object: %w", ErrMalformed, err)
	}
	_, hasDetailType := probe["detail-type"]
	_, hasAlarmData := probe["alarmData"]
	switch {
	case hasDetailType:
		return ParseStateChange(raw)
	case hasAlarmData:
		return ParseAlarmAction(raw)
	}
	return Alarm{}, fmt.Errorf("%w: neither an alarm action payload (alarmData) nor an EventBridge event (detail-type)", ErrNotAlarm)
}

// ParseAlarmAction parses the payload CloudWatch sends when an alarm action invokes a
// Lambda function directly.
func ParseAlarmAction(raw []byte) (Alarm, error) {
	var p alarmActionJSON
	if err := json.Unmarshal(raw, &p); err != nil {
		return Alarm{}, fmt.Errorf("%w: alarm action payload: %w", ErrMalformed, err)
	}
	if p.Source != "aws.cloudwatch" {
		return Alarm{}, fmt.Errorf("%w: source %q, not aws.cloudwatch", ErrNotAlarm, p.Source)
	}
	a, err := fromDetail(p.AlarmData, p.Time)
	if err != nil {
		return Alarm{}, fmt.Errorf("alarm action payload: %w", err)
	}
	a.Source, a.ARN = SourceAlarmAction, p.AlarmARN
	return a, nil
}

// ParseStateChange parses an EventBridge "CloudWatch Alarm State Change" event.
func ParseStateChange(raw []byte) (Alarm, error) {
	var e stateChangeJSON
	if err := json.Unmarshal(raw, &e); err != nil {
		return Alarm{}, fmt.Errorf("%w: EventBridge event: %w", ErrMalformed, err)
	}
	if e.Source != "aws.cloudwatch" || e.DetailType != DetailTypeAlarmStateChange {
		return Alarm{}, fmt.Errorf("%w: source %q, detail-type %q", ErrNotAlarm, e.Source, e.DetailType)
	}
	a, err := fromDetail(e.Detail, e.Time)
	if err != nil {
		return Alarm{}, fmt.Errorf("%s event: %w", DetailTypeAlarmStateChange, err)
	}
	a.Source = SourceEventBridge
	if len(e.Resources) > 0 {
		a.ARN = e.Resources[0]
	}
	return a, nil
}

// fromDetail reads what both payloads share: the alarm detail object. eventTime stands
// in for a missing state timestamp.
func fromDetail(raw json.RawMessage, eventTime string) (Alarm, error) {
	var d *alarmDetailJSON
	if err := json.Unmarshal(raw, &d); err != nil || d == nil {
		return Alarm{}, fmt.Errorf("%w: no alarm detail object (%w)", ErrMalformed, err)
	}
	if d.AlarmName == "" {
		return Alarm{}, fmt.Errorf("%w: no alarmName", ErrMalformed)
	}
	if d.State == nil || d.State.Value == "" {
		return Alarm{}, fmt.Errorf("%w: alarm %s has no state", ErrMalformed, d.AlarmName)
	}
	stamp := d.State.Timestamp
	if stamp == "" {
		stamp = eventTime
	}
	at, err := parseTime(stamp)
	if err != nil {
		return Alarm{}, fmt.Errorf("%w: alarm %s state timestamp: %w", ErrMalformed, d.AlarmName, err)
	}
	a := Alarm{
		Name: d.AlarmName, State: d.State.Value, StateTime: at, Reason: d.State.Reason,
		UsedPercent: maxDatapoint(d.State.ReasonData),
	}
	if d.PreviousState != nil {
		a.PreviousState = d.PreviousState.Value
	}
	for _, m := range d.Configuration.Metrics {
		if m.MetricStat != nil && len(m.MetricStat.Metric.Dimensions) > 0 {
			a.Dimensions = m.MetricStat.Metric.Dimensions
			break
		}
	}
	return a, nil
}

// timeLayouts are the timestamp formats alarm payloads use: CloudWatch's own
// ("2026-11-21T20:15:00.000+0000": a zone offset without a colon, so not RFC 3339) and
// EventBridge's RFC 3339 event time.
var timeLayouts = []string{
	"2006-01-02T15:04:05.000-0700",
	"2006-01-02T15:04:05-0700",
	time.RFC3339Nano,
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("missing")
	}
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a timestamp", s)
}

// maxDatapoint returns the highest disk-use datapoint in a metric alarm's reasonData
// (evaluatedDatapoints and recentDatapoints), or 0 when there is none. reasonData is
// free-form JSON in a string and absent for some transitions (SetAlarmState, alarms
// on expressions): anything unreadable counts as "not said". Values outside 0..100 are
// not a percentage and are ignored.
func maxDatapoint(reasonData string) float64 {
	if strings.TrimSpace(reasonData) == "" {
		return 0
	}
	var rd reasonDataJSON
	if err := json.Unmarshal([]byte(reasonData), &rd); err != nil {
		return 0
	}
	best := 0.0
	consider := func(v float64) {
		if !math.IsNaN(v) && v >= 0 && v <= 100 && v > best {
			best = v
		}
	}
	for _, v := range rd.RecentDatapoints {
		consider(v)
	}
	for _, d := range rd.EvaluatedDatapoints {
		if d.Value != nil {
			consider(*d.Value)
		}
	}
	return best
}

// AlarmName returns the name of slot's disk alarm: slotkeeper-<cluster>-disk-<slot>.
func AlarmName(cluster string, slot int) string {
	return "slotkeeper-" + cluster + "-disk-" + strconv.Itoa(slot)
}

// SlotOfAlarm returns the slot whose disk alarm is called name in cluster, which has
// slotCount slots, or false when name is no such alarm. The slot number is canonical
// decimal (no sign, no leading zero), so every slot has exactly one alarm name.
func SlotOfAlarm(cluster string, slotCount int, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "slotkeeper-"+cluster+"-disk-")
	if !ok || rest == "" || len(rest) > 4 || (len(rest) > 1 && rest[0] == '0') {
		return 0, false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	slot, err := strconv.Atoi(rest)
	if err != nil || slot >= slotCount {
		return 0, false
	}
	return slot, true
}
