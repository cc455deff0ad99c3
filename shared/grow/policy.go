package grow

import (
	"fmt"
	"math"

	"github.com/slotkeeper/slotkeeper/shared/config"
)

// Action is what a growth decision says to do.
type Action string

// Growth decisions.
const (
	// Keep: the volume is at or below the target use (or cannot get bigger by a whole
	// GiB); nothing to do.
	Keep Action = "keep"
	// Grow: modify the volume to Decision.ToGiB.
	Grow Action = "grow"
	// AtMax: the volume is at the maximum size already; alert instead of growing.
	AtMax Action = "at-max"
)

// Decision is the outcome of Plan.
type Decision struct {
	Action  Action
	FromGiB int32
	ToGiB   int32 // equals FromGiB unless Action is Grow
	// UsedGiB is how much of the volume is in use, by the measurement Plan was given.
	UsedGiB float64
	// Capped means the policy asked for more than the maximum size: ToGiB is the max.
	Capped bool
	// Reason explains the decision in words, for logs and the growth history.
	Reason string
}

// Plan decides how far a volume of sizeGiB at usedPercent use grows under policy p
// (DESIGN, "Growth size"):
//
//	new size = max(size × (1 + step %), size + min step GiB, used ÷ target %)
//
// rounded up to a whole GiB and capped at p.MaxSizeGiB. A volume at or below the
// target use keeps its size; a volume never shrinks, and a decision never asks for the
// size it has (a no-op ModifyVolume still uses up one of EBS's modifications). Plan is
// pure: it looks at nothing but its arguments.
func Plan(p config.GrowConfig, sizeGiB int32, usedPercent float64) Decision {
	d := Decision{Action: Keep, FromGiB: sizeGiB, ToGiB: sizeGiB}
	switch {
	case sizeGiB <= 0:
		d.Reason = fmt.Sprintf("volume size %d GiB is not a size", sizeGiB)
		return d
	case math.IsNaN(usedPercent) || usedPercent < 0:
		d.Reason = fmt.Sprintf("use %v%% is not a measurement", usedPercent)
		return d
	}
	usedPercent = min(usedPercent, 100)
	size := float64(sizeGiB)
	d.UsedGiB = size * usedPercent / 100
	if usedPercent <= float64(p.TargetPercent) {
		d.Reason = fmt.Sprintf("%.1f%% used is at or below the %d%% target", usedPercent, p.TargetPercent)
		return d
	}
	if sizeGiB >= p.MaxSizeGiB {
		d.Action = AtMax
		d.Reason = fmt.Sprintf("%.1f%% used of %d GiB, and %d GiB is the maximum size", usedPercent, sizeGiB, p.MaxSizeGiB)
		return d
	}

	byStep := int64(sizeGiB) + ceilDiv(int64(sizeGiB)*int64(p.StepPercent), 100)
	byMinStep := int64(sizeGiB) + int64(p.MinStepGiB)
	byTarget := ceil(d.UsedGiB * 100 / float64(p.TargetPercent))
	want := max(byStep, byMinStep, byTarget)
	to := min(want, int64(p.MaxSizeGiB))
	if to <= int64(sizeGiB) { // only reachable with a zero step and a use barely above target
		d.Reason = fmt.Sprintf("%.1f%% used of %d GiB needs less than a whole GiB more", usedPercent, sizeGiB)
		return d
	}
	d.Action, d.ToGiB, d.Capped = Grow, int32(to), want > to
	d.Reason = fmt.Sprintf("%.1f%% used of %d GiB (%.1f GiB): max(+%d%% = %d, +%d GiB = %d, %.1f GiB at %d%% = %d) = %d GiB",
		usedPercent, sizeGiB, d.UsedGiB, p.StepPercent, byStep, p.MinStepGiB, byMinStep, d.UsedGiB, p.TargetPercent, byTarget, want)
	if d.Capped {
		d.Reason += fmt.Sprintf(", capped at the %d GiB maximum", p.MaxSizeGiB)
	}
	return d
}

// ceilDiv is ⌈a / b⌉ for a ≥ 0, b > 0.
func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// ceil rounds x up to a whole number, ignoring float noise below 1e-9 (100 × 1.1 is
// 110.00000000000001 in binary floating point and must stay 110).
func ceil(x float64) int64 { return int64(math.Ceil(x - 1e-9)) }
