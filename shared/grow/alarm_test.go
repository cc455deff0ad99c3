package grow

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/slotkeeper/slotkeeper/shared/config"
)

func testConfig() config.Config {
	return config.Config{
		Cluster: "kafka-prod", SlotCount: 6,
		Grow: config.GrowConfig{ThresholdPercent: 80, TargetPercent: 60, StepPercent: 10, MinStepGiB: 10, MaxSizeGiB: 16384,
			FunctionARN: "arn:aws:lambda:us-east-1:123456789012:function:slotkeeper-grow", DataMount: "/var/lib/kafka"},
	}
}

func TestAlarmInput(t *testing.T) {
	in := AlarmInput(testConfig(), 2, "i-0abc")
	if got := aws.ToString(in.AlarmName); got != "slotkeeper-kafka-prod-disk-2" {
		t.Errorf("name %q", got)
	}
	wantDims := map[string]string{"InstanceId": "i-0abc", "path": "/var/lib/kafka"}
	if got := dimensions(in.Dimensions); !maps.Equal(got, wantDims) {
		t.Errorf("dimensions %v, want %v", got, wantDims)
	}
	if aws.ToString(in.Namespace) != "CWAgent" || aws.ToString(in.MetricName) != "disk_used_percent" ||
		aws.ToFloat64(in.Threshold) != 80 || in.ComparisonOperator != types.ComparisonOperatorGreaterThanOrEqualToThreshold ||
		aws.ToString(in.TreatMissingData) != "notBreaching" || in.Statistic != types.StatisticMaximum ||
		!slices.Equal(in.AlarmActions, []string{testConfig().Grow.FunctionARN}) || len(in.OKActions) != 0 || in.Unit != "" {
		t.Errorf("alarm %+v", in)
	}
}

// The alarm watches exactly the metric the shipped agent configuration publishes: the
// disk plugin on the data mount, used_percent, rolled up to the alarm's dimensions.
func TestAgentConfigMatchesAlarm(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "cloudwatch-agent.json"))
	if err != nil {
		t.Fatal(err)
	}
	var agent struct {
		Metrics struct {
			Namespace        string            `json:"namespace"`
			AppendDimensions map[string]string `json:"append_dimensions"`
			Aggregation      [][]string        `json:"aggregation_dimensions"`
			Collected        struct {
				Disk struct {
					Resources   []string `json:"resources"`
					Measurement []string `json:"measurement"`
					Interval    int      `json:"metrics_collection_interval"`
				} `json:"disk"`
			} `json:"metrics_collected"`
		} `json:"metrics"`
	}
	if err := json.Unmarshal(raw, &agent); err != nil {
		t.Fatalf("deploy/cloudwatch-agent.json: %v", err)
	}
	m := agent.Metrics
	in := AlarmInput(testConfig(), 0, "i-1")
	dimNames := slices.Sorted(maps.Keys(dimensions(in.Dimensions)))
	if m.Namespace != aws.ToString(in.Namespace) {
		t.Errorf("agent namespace %q, alarm %q", m.Namespace, aws.ToString(in.Namespace))
	}
	if m.AppendDimensions["InstanceId"] != "${aws:InstanceId}" {
		t.Errorf("append_dimensions %v: the alarm needs InstanceId", m.AppendDimensions)
	}
	if !slices.ContainsFunc(m.Aggregation, func(d []string) bool { return slices.Equal(slices.Sorted(slices.Values(d)), dimNames) }) {
		t.Errorf("aggregation_dimensions %v: none is the alarm's %v", m.Aggregation, dimNames)
	}
	if d := m.Collected.Disk; !slices.Equal(d.Resources, []string{testConfig().Grow.DataMount}) || !slices.Equal(d.Measurement, []string{"used_percent"}) ||
		int32(d.Interval) != aws.ToInt32(in.Period) {
		t.Errorf("disk plugin %+v: want used_percent of %s every %d s", d, testConfig().Grow.DataMount, aws.ToInt32(in.Period))
	}
}

func TestAlarmMatches(t *testing.T) {
	want := AlarmInput(testConfig(), 1, "i-new")
	current := func(edit func(*types.MetricAlarm)) types.MetricAlarm {
		m := types.MetricAlarm{
			AlarmName: want.AlarmName, AlarmDescription: want.AlarmDescription, Namespace: want.Namespace, MetricName: want.MetricName,
			Dimensions: want.Dimensions, Statistic: want.Statistic, Period: want.Period, EvaluationPeriods: want.EvaluationPeriods,
			DatapointsToAlarm: want.DatapointsToAlarm, Threshold: want.Threshold, ComparisonOperator: want.ComparisonOperator,
			TreatMissingData: want.TreatMissingData, ActionsEnabled: want.ActionsEnabled, AlarmActions: want.AlarmActions,
		}
		if edit != nil {
			edit(&m)
		}
		return m
	}
	tests := []struct {
		name  string
		alarm types.MetricAlarm
		match bool
	}{
		{"as wanted", current(nil), true},
		{"dimensions in another order", current(func(m *types.MetricAlarm) { m.Dimensions = []types.Dimension{want.Dimensions[1], want.Dimensions[0]} }), true},
		{"old holder", current(func(m *types.MetricAlarm) { m.Dimensions = AlarmInput(testConfig(), 1, "i-old").Dimensions }), false},
		{"other threshold", current(func(m *types.MetricAlarm) { m.Threshold = aws.Float64(90) }), false},
		{"OK action added by hand", current(func(m *types.MetricAlarm) { m.OKActions = []string{"arn:aws:sns:x"} }), false},
		{"actions disabled", current(func(m *types.MetricAlarm) { m.ActionsEnabled = aws.Bool(false) }), false},
		{"missing data breaching", current(func(m *types.MetricAlarm) { m.TreatMissingData = aws.String("breaching") }), false},
		{"unit set", current(func(m *types.MetricAlarm) { m.Unit = types.StandardUnitPercent }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := alarmMatches(tt.alarm, want); got != tt.match {
				t.Errorf("alarmMatches = %v, want %v", got, tt.match)
			}
		})
	}
}
