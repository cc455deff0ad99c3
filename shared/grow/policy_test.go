package grow

import (
	"math"
	"strings"
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/config"
)

// defaults is the growth policy of the default configuration.
var defaults = config.GrowConfig{ThresholdPercent: 80, TargetPercent: 60, StepPercent: 10, MinStepGiB: 10, MaxSizeGiB: 16384}

func TestPlan(t *testing.T) {
	with := func(f func(*config.GrowConfig)) config.GrowConfig {
		p := defaults
		f(&p)
		return p
	}
	tests := []struct {
		name       string
		policy     config.GrowConfig
		size       int32
		used       float64
		wantAction Action
		wantTo     int32
		wantCapped bool
		wantReason string
	}{
		{"issue example: 100 GiB at 85%, target 60%", defaults, 100, 85, Grow, 142, false, "= 142 GiB"},
		{"threshold use: 100 GiB at 80%", defaults, 100, 80, Grow, 134, false, "= 134 GiB"},
		{"alarm datapoint 83.41%", defaults, 100, 83.41, Grow, 140, false, ""},
		{"step wins on a big volume just above target", defaults, 1000, 61, Grow, 1100, false, "+10% = 1100"},
		{"min step wins on a small volume", defaults, 20, 61, Grow, 30, false, "+10 GiB = 30"},
		{"step rounds up: 105 GiB + 10% = 115.5", with(func(p *config.GrowConfig) { p.MinStepGiB = 1 }), 105, 61, Grow, 116, false, ""},
		{"float noise does not round up: 100 + 10% is 110", with(func(p *config.GrowConfig) { p.MinStepGiB = 1 }), 100, 61, Grow, 110, false, "= 110 GiB"},
		{"exact target ratio stays whole: 90% of 100 at 60% = 150", defaults, 100, 90, Grow, 150, false, "= 150 GiB"},
		{"full disk", defaults, 100, 100, Grow, 167, false, ""},
		{"over 100% is read as 100%", defaults, 100, 140, Grow, 167, false, ""},
		{"at target: nothing", defaults, 100, 60, Keep, 100, false, "at or below"},
		{"below target: nothing", defaults, 100, 12.5, Keep, 100, false, "at or below"},
		{"capped at max", with(func(p *config.GrowConfig) { p.MaxSizeGiB = 120 }), 100, 85, Grow, 120, true, "capped at the 120 GiB maximum"},
		{"at max: alert, no growth", with(func(p *config.GrowConfig) { p.MaxSizeGiB = 100 }), 100, 85, AtMax, 100, false, "maximum size"},
		{"above max (max lowered later): never shrink", with(func(p *config.GrowConfig) { p.MaxSizeGiB = 50 }), 100, 85, AtMax, 100, false, "maximum size"},
		{"zero steps, barely above target: no no-op", with(func(p *config.GrowConfig) { p.StepPercent, p.MinStepGiB = 0, 0 }), 100, 60.0000000000001, Keep, 100, false, "less than a whole GiB"},
		{"zero steps, clearly above target", with(func(p *config.GrowConfig) { p.StepPercent, p.MinStepGiB = 0, 0 }), 100, 61, Grow, 102, false, ""},
		{"largest sizes do not overflow", with(func(p *config.GrowConfig) { p.MaxSizeGiB = 65536 }), 60000, 99, Grow, 65536, true, ""},
		{"no size", defaults, 0, 85, Keep, 0, false, "not a size"},
		{"NaN use", defaults, 100, math.NaN(), Keep, 100, false, "not a measurement"},
		{"negative use", defaults, 100, -1, Keep, 100, false, "not a measurement"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Plan(tt.policy, tt.size, tt.used)
			if d.Action != tt.wantAction || d.ToGiB != tt.wantTo || d.Capped != tt.wantCapped || d.FromGiB != tt.size {
				t.Fatalf("Plan(%d GiB, %v%%) = %s %d -> %d capped=%v (%s), want %s to %d capped=%v",
					tt.size, tt.used, d.Action, d.FromGiB, d.ToGiB, d.Capped, d.Reason, tt.wantAction, tt.wantTo, tt.wantCapped)
			}
			if !strings.Contains(d.Reason, tt.wantReason) {
				t.Errorf("reason %q lacks %q", d.Reason, tt.wantReason)
			}
			if d.Action == Grow && d.ToGiB <= d.FromGiB {
				t.Errorf("a growth to %d GiB from %d GiB is a no-op or a shrink", d.ToGiB, d.FromGiB)
			}
		})
	}
}

// Whatever the input, a decision never shrinks, never asks for the size the volume has,
// never exceeds the max, and brings use to the target unless capped.
func TestPlanInvariants(t *testing.T) {
	for size := int32(1); size <= 2000; size += 7 {
		for used := 0.0; used <= 100; used += 3.3 {
			d := Plan(defaults, size, used)
			switch d.Action {
			case Grow:
				if d.ToGiB <= size || d.ToGiB > defaults.MaxSizeGiB {
					t.Fatalf("Plan(%d, %.1f) grows to %d", size, used, d.ToGiB)
				}
				if after := d.UsedGiB / float64(d.ToGiB) * 100; !d.Capped && after > float64(defaults.TargetPercent)+1e-9 {
					t.Fatalf("Plan(%d, %.1f) to %d GiB leaves %.2f%% used, above the target", size, used, d.ToGiB, after)
				}
			case Keep, AtMax:
				if d.ToGiB != size {
					t.Fatalf("Plan(%d, %.1f) = %s with size %d", size, used, d.Action, d.ToGiB)
				}
			}
		}
	}
}
