package lease_test

import (
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/lease"
)

func TestInvolves(t *testing.T) {
	holdings := []lease.Holding{
		{Slot: 0, State: lease.Bound, Holder: "i-holder"},
		{Slot: 1, State: lease.Free, LastHolder: "i-last"},
		{Slot: 2, State: lease.Free, Holder: "i-stale-free"}, // a free item keeps no holder, but never count one
		{Slot: 3, State: lease.Claimed, Holder: "i-claimer", LastHolder: "i-before"},
	}
	for id, want := range map[string]bool{
		"i-holder": true, "i-last": true, "i-claimer": true, "i-before": true,
		"i-stale-free": false, "i-foreign": false, "": false,
	} {
		if _, got := lease.Involves(holdings, id); got != want {
			t.Errorf("Involves(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestPendingGrowthDeadlines(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	stamp := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339Nano) }
	tests := []struct {
		p                 lease.PendingGrowth
		progress, waiting bool
	}{
		{lease.PendingGrowth{}, false, false},
		{lease.PendingGrowth{Until: stamp(time.Minute)}, true, false},
		{lease.PendingGrowth{Until: stamp(-time.Minute)}, false, false},
		{lease.PendingGrowth{NotBefore: stamp(time.Hour)}, false, true},
		{lease.PendingGrowth{NotBefore: stamp(-time.Hour)}, false, false},
		{lease.PendingGrowth{Until: "soon", NotBefore: "later"}, false, false},
	}
	for _, tt := range tests {
		if got := tt.p.InProgress(now); got != tt.progress {
			t.Errorf("%+v InProgress = %v", tt.p, got)
		}
		if got := tt.p.Waiting(now); got != tt.waiting {
			t.Errorf("%+v Waiting = %v", tt.p, got)
		}
	}
}
