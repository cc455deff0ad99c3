package emulator

import (
	"testing"
	"time"
)

// The model's draws: within the documented range at scale 1, scaled, nothing at
// scale 0, and the same sequence from the same seed.
func TestLatencyDraws(t *testing.T) {
	draws := func(m *LatencyModel, s span, n int) []time.Duration {
		e := &Emulator{}
		e.SetLatency(m)
		out := make([]time.Duration, n)
		for i := range out {
			out[i], _ = e.lat.draw(s)
		}
		return out
	}
	lo, hi := CallLatency("ec2", "DescribeVolumes")
	if lo != 80*time.Millisecond || hi != 150*time.Millisecond {
		t.Errorf("EC2 describe range %s–%s, want 80ms–150ms", lo, hi)
	}
	if lo, hi := CallLatency("dynamodb", "GetItem"); lo != 5*time.Millisecond || hi != 15*time.Millisecond {
		t.Errorf("DynamoDB range %s–%s, want 5ms–15ms", lo, hi)
	}
	if lo, hi := StateWindow("attach"); lo != time.Second || hi != 4*time.Second {
		t.Errorf("attach window %s–%s, want 1s–4s", lo, hi)
	}
	one := draws(&LatencyModel{Seed: 7, Scale: 1}, spanEC2Describe, 50)
	for _, d := range one {
		if d < lo || d >= hi {
			t.Errorf("describe delay %s outside [%s, %s)", d, lo, hi)
		}
	}
	again := draws(&LatencyModel{Seed: 7, Scale: 1}, spanEC2Describe, 50)
	half := draws(&LatencyModel{Seed: 7, Scale: 0.5}, spanEC2Describe, 50)
	for i := range one {
		if again[i] != one[i] {
			t.Errorf("draw %d: %s then %s from the same seed", i, one[i], again[i])
		}
		if diff := half[i] - one[i]/2; diff < -time.Microsecond || diff > time.Microsecond {
			t.Errorf("draw %d at scale 0.5: %s, want half of %s", i, half[i], one[i])
		}
	}
	for i, d := range draws(&LatencyModel{Seed: 7, Scale: 0}, spanAttachWindow, 10) {
		if d != 0 {
			t.Errorf("draw %d at scale 0: %s, want 0", i, d)
		}
	}
	var off latency
	if d, on := off.draw(spanEC2Describe); on || d != 0 {
		t.Errorf("a model that is off drew %s (on %v)", d, on)
	}
}
