package grow

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// sample reads a sample event from events/, modified by edit (which gets the decoded
// JSON object and the alarm detail object within it).
func sample(t testing.TB, file string, edit func(top, detail map[string]any)) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "events", file))
	if err != nil {
		t.Fatal(err)
	}
	if edit == nil {
		return raw
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	d, _ := m["alarmData"].(map[string]any)
	if d == nil {
		d, _ = m["detail"].(map[string]any)
	}
	edit(m, d)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func state(d map[string]any) map[string]any { return d["state"].(map[string]any) }

func TestParseAlarm(t *testing.T) {
	breach := time.Date(2026, 11, 21, 20, 15, 0, 0, time.UTC)
	tests := []struct {
		name        string
		raw         []byte
		wantErr     error // nil, ErrMalformed or ErrNotAlarm
		wantSource  string
		wantState   string
		wantUsed    float64
		wantTime    time.Time
		wantDimPath string
	}{
		{"alarm action sample", sample(t, "alarm-action.json", nil), nil, SourceAlarmAction, StateAlarm, 83.41, breach, "/var/lib/kafka"},
		{"EventBridge sample", sample(t, "alarm-state-change.json", nil), nil, SourceEventBridge, StateAlarm, 83.41, breach, "/var/lib/kafka"},
		{"alarm action back to OK", sample(t, "alarm-action-ok.json", nil), nil, SourceAlarmAction, StateOK, 59.01, breach.Add(15 * time.Minute), "/var/lib/kafka"},
		{"no reasonData: use unknown", sample(t, "alarm-action.json", func(_, d map[string]any) { delete(state(d), "reasonData") }), nil, SourceAlarmAction, StateAlarm, 0, breach, "/var/lib/kafka"},
		{"reasonData not JSON: use unknown", sample(t, "alarm-action.json", func(_, d map[string]any) { state(d)["reasonData"] = "{oops" }), nil, SourceAlarmAction, StateAlarm, 0, breach, "/var/lib/kafka"},
		{"datapoints out of range ignored", sample(t, "alarm-action.json", func(_, d map[string]any) {
			state(d)["reasonData"] = `{"recentDatapoints":[250,-3,91.5],"evaluatedDatapoints":[{"value":101}]}`
		}), nil, SourceAlarmAction, StateAlarm, 91.5, breach, "/var/lib/kafka"},
		{"state timestamp missing: event time", sample(t, "alarm-state-change.json", func(_, d map[string]any) { delete(state(d), "timestamp") }), nil, SourceEventBridge, StateAlarm, 83.41, breach, "/var/lib/kafka"},
		{"RFC 3339 state timestamp", sample(t, "alarm-action.json", func(_, d map[string]any) { state(d)["timestamp"] = "2026-11-21T20:15:00Z" }), nil, SourceAlarmAction, StateAlarm, 83.41, breach, "/var/lib/kafka"},
		{"no metric configuration", sample(t, "alarm-action.json", func(_, d map[string]any) { delete(d, "configuration") }), nil, SourceAlarmAction, StateAlarm, 83.41, breach, ""},

		{"not JSON", []byte("disk full!"), ErrMalformed, "", "", 0, time.Time{}, ""},
		{"JSON array", []byte(`[1]`), ErrMalformed, "", "", 0, time.Time{}, ""},
		{"alarmData not an object", []byte(`{"source":"aws.cloudwatch","alarmData":[]}`), ErrMalformed, "", "", 0, time.Time{}, ""},
		{"alarmData null", []byte(`{"source":"aws.cloudwatch","alarmData":null}`), ErrMalformed, "", "", 0, time.Time{}, ""},
		{"no alarm name", sample(t, "alarm-action.json", func(_, d map[string]any) { delete(d, "alarmName") }), ErrMalformed, "", "", 0, time.Time{}, ""},
		{"no state", sample(t, "alarm-state-change.json", func(_, d map[string]any) { delete(d, "state") }), ErrMalformed, "", "", 0, time.Time{}, ""},
		{"no timestamp at all", sample(t, "alarm-action.json", func(m, d map[string]any) { delete(state(d), "timestamp"); delete(m, "time") }), ErrMalformed, "", "", 0, time.Time{}, ""},
		{"bad timestamp", sample(t, "alarm-action.json", func(_, d map[string]any) { state(d)["timestamp"] = "yesterday" }), ErrMalformed, "", "", 0, time.Time{}, ""},
		{"EventBridge without detail", sample(t, "alarm-state-change.json", func(m, _ map[string]any) { delete(m, "detail") }), ErrMalformed, "", "", 0, time.Time{}, ""},

		{"another EventBridge event", sample(t, "state-change-running.json", nil), ErrNotAlarm, "", "", 0, time.Time{}, ""},
		{"scheduled event", sample(t, "schedule.json", nil), ErrNotAlarm, "", "", 0, time.Time{}, ""},
		{"alarm action from elsewhere", sample(t, "alarm-action.json", func(m, _ map[string]any) { m["source"] = "my.app" }), ErrNotAlarm, "", "", 0, time.Time{}, ""},
		{"empty object", []byte(`{}`), ErrNotAlarm, "", "", 0, time.Time{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ParseAlarm(tt.raw)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseAlarm error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAlarm: %v", err)
			}
			if a.Source != tt.wantSource || a.State != tt.wantState || a.UsedPercent != tt.wantUsed || !a.StateTime.Equal(tt.wantTime) ||
				a.Name != "slotkeeper-kafka-prod-disk-2" || a.Dimensions["path"] != tt.wantDimPath {
				t.Errorf("ParseAlarm = %+v, want source %s, state %s, used %v, time %v, path %q",
					a, tt.wantSource, tt.wantState, tt.wantUsed, tt.wantTime, tt.wantDimPath)
			}
			if a.ARN != "arn:aws:cloudwatch:us-east-1:123456789012:alarm:slotkeeper-kafka-prod-disk-2" {
				t.Errorf("ARN = %q", a.ARN)
			}
		})
	}
}

func TestSlotOfAlarm(t *testing.T) {
	tests := []struct {
		name     string
		cluster  string
		alarm    string
		wantSlot int
		wantOK   bool
	}{
		{"slot 2", "kafka-prod", "slotkeeper-kafka-prod-disk-2", 2, true},
		{"slot 0", "kafka-prod", "slotkeeper-kafka-prod-disk-0", 0, true},
		{"last slot", "kafka-prod", "slotkeeper-kafka-prod-disk-5", 5, true},
		{"round trip", "c", AlarmName("c", 4), 4, true},
		{"slot beyond the count", "kafka-prod", "slotkeeper-kafka-prod-disk-6", 0, false},
		{"another cluster", "kafka", "slotkeeper-kafka-prod-disk-2", 0, false},
		{"a cluster whose name this one extends", "kafka-prod", "slotkeeper-kafka-disk-2", 0, false},
		{"leading zero", "kafka-prod", "slotkeeper-kafka-prod-disk-02", 0, false},
		{"sign", "kafka-prod", "slotkeeper-kafka-prod-disk-+2", 0, false},
		{"negative", "kafka-prod", "slotkeeper-kafka-prod-disk--1", 0, false},
		{"no slot", "kafka-prod", "slotkeeper-kafka-prod-disk-", 0, false},
		{"suffix", "kafka-prod", "slotkeeper-kafka-prod-disk-2-old", 0, false},
		{"another alarm kind", "kafka-prod", "slotkeeper-kafka-prod-cpu-2", 0, false},
		{"huge number", "kafka-prod", "slotkeeper-kafka-prod-disk-99999999999999999999", 0, false},
		{"unicode digit", "kafka-prod", "slotkeeper-kafka-prod-disk-٢", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			slot, ok := SlotOfAlarm(tt.cluster, 6, tt.alarm)
			if slot != tt.wantSlot || ok != tt.wantOK {
				t.Errorf("SlotOfAlarm(%q, 6, %q) = %d, %v, want %d, %v", tt.cluster, tt.alarm, slot, ok, tt.wantSlot, tt.wantOK)
			}
		})
	}
}

// seedAlarms seeds a fuzz target with every sample event.
func seedAlarms(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("..", "..", "events", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no sample events (%v)", err)
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte(`{"source":"aws.cloudwatch","alarmData":{"alarmName":"x","state":{"value":"ALARM","timestamp":"2026-11-21T20:15:00.000+0000","reasonData":"{\"recentDatapoints\":[1e308,NaN]}"}}}`))
}

// checkParsed holds for every alarm a parser accepts.
func checkParsed(t *testing.T, raw []byte, a Alarm, err error) {
	if err != nil {
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrNotAlarm) {
			t.Fatalf("error %v is neither ErrMalformed nor ErrNotAlarm", err)
		}
		return
	}
	if a.Name == "" || a.State == "" || a.StateTime.IsZero() {
		t.Fatalf("accepted %q as %+v: name, state and time are required", raw, a)
	}
	if math.IsNaN(a.UsedPercent) || a.UsedPercent < 0 || a.UsedPercent > 100 {
		t.Fatalf("accepted %q with use %v%%", raw, a.UsedPercent)
	}
}

func FuzzParseAlarmAction(f *testing.F) {
	seedAlarms(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		a, err := ParseAlarmAction(raw)
		checkParsed(t, raw, a, err)
		if err == nil && a.Source != SourceAlarmAction {
			t.Fatalf("source %q", a.Source)
		}
	})
}

func FuzzParseStateChange(f *testing.F) {
	seedAlarms(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		a, err := ParseStateChange(raw)
		checkParsed(t, raw, a, err)
		if err == nil && a.Source != SourceEventBridge {
			t.Fatalf("source %q", a.Source)
		}
		// ParseAlarm sends anything with a detail-type here.
		if b, berr := ParseAlarm(raw); err == nil && (berr != nil || b.Name != a.Name || !b.StateTime.Equal(a.StateTime)) {
			t.Fatalf("ParseAlarm disagrees: %+v, %v", b, berr)
		}
	})
}
