package demo_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
)

// Summarize turns each function's response into the timeline's outcome.
func TestSummarize(t *testing.T) {
	tests := []struct {
		fn   string
		resp map[string]any
		want string
	}{
		{"launch", map[string]any{"outcome": "continue", "slot": 1.0, "reason": "lowest"}, "continue · slot 1"},
		{"launch", map[string]any{"outcome": "abandon", "slot": -1.0, "reason": "no slot lives in us-east-1d"}, "abandon · no slot lives in us-east-1d"},
		{"terminate", map[string]any{"outcome": "released", "slot": 0.0, "planned": true, "safety_checks": 3.0}, "released · slot 0 · planned · 3 safety checks"},
		{"terminate", map[string]any{"outcome": "released", "slot": 1.0, "planned": false}, "released · slot 1 · unplanned"},
		{"terminate", map[string]any{"outcome": "released", "slot": 1.0, "planned": true, "forced": true}, "released · slot 1 · planned · FORCED"},
		{"reconcile", map[string]any{"outcome": "reconciled", "released": []any{1.0}}, "reconciled · released slot 1"},
		{"reconcile", map[string]any{"outcome": "reconciled", "repairs": map[string]any{"dns": 2.0, "alarm": 0.0}}, "reconciled · dns: 2 repaired"},
		{"reconcile", map[string]any{"outcome": "reconciled", "repairs": map[string]any{}}, "reconciled · nothing to repair"},
		{"grow", map[string]any{"outcome": "grown", "slot": 2.0, "from_gib": 100.0, "to_gib": 144.0}, "grown · slot 2 · 100 → 144 GiB"},
		{"dns", map[string]any{"outcome": "synced", "slot": 1.0, "changes": 2.0}, "synced · slot 1 · 2 record change(s)"},
		{"dns", map[string]any{"outcome": "ignored", "slot": -1.0, "reason": "instance i-0abc1 holds no slot of cluster demo"}, "ignored · holds no slot"},
	}
	for _, tt := range tests {
		if got := demo.Summarize(tt.fn, tt.resp); got != tt.want {
			t.Errorf("Summarize(%s, %v) = %q, want %q", tt.fn, tt.resp, got, tt.want)
		}
	}
}

// The timeline table: one row per event, function rows with their calls and duration,
// colour only when asked.
func TestWriteTimeline(t *testing.T) {
	events := []demo.Event{
		{AtMS: 1200, Event: "the group launches i-1 in us-east-1a", Outcome: "Pending:Wait"},
		{AtMS: 1300, Event: "launch lifecycle action of i-1", Function: "launch", Outcome: "continue · slot 0", Calls: 25, Writes: 8, DurationMS: 412, ColdStart: true},
		{AtMS: 2500, Event: "EC2: i-1 is running", Function: "dns", Outcome: "ignored · holds no slot", Calls: 1, DurationMS: 9},
	}
	for _, colour := range []bool{false, true} {
		var b bytes.Buffer
		out := slotctl.NewOutput(&b, &b, false, colour)
		demo.WriteTimeline(out, &b, events)
		text := b.String()
		lines := strings.Split(strings.TrimSpace(text), "\n")
		if len(lines) != 4 || !strings.Contains(lines[0], "AWS CALLS") {
			t.Fatalf("colour %v: %d lines:\n%s", colour, len(lines), text)
		}
		for _, want := range []string{"1.2s", "25 (8 writes)", "412 ms cold", "continue · slot 0", "9 ms"} {
			if !strings.Contains(text, want) {
				t.Errorf("colour %v: timeline lacks %q:\n%s", colour, want, text)
			}
		}
		if strings.Contains(text, "\x1b[") != colour {
			t.Errorf("colour %v: escape codes present = %v", colour, !colour)
		}
	}
}
