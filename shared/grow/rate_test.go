package grow

import (
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/lease"
)

// EBS's rate rule: at most MaxPerDay modifications started in a rolling 24 hours, and
// MinInterval between two; the history and the volume's latest modification count.
func TestRateRule(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	history := func(starts ...time.Time) lease.Growth {
		var g lease.Growth
		for i, s := range starts {
			g.History = append(g.History, lease.GrowthRecord{VolumeID: "vol-1", ToGiB: int32(100 + i), At: s.Add(time.Minute).Format(time.RFC3339Nano),
				ModifiedAt: s.Format(time.RFC3339Nano)})
		}
		g.History = append(g.History, lease.GrowthRecord{VolumeID: "vol-other", ModifiedAt: ago(time.Minute).Format(time.RFC3339Nano)})
		return g
	}
	tests := []struct {
		name       string
		perDay     int
		interval   time.Duration
		g          lease.Growth
		latest     *modification
		wantWait   time.Duration // 0: may start now
		wantReason string
	}{
		{"never modified", 4, 0, lease.Growth{}, nil, 0, ""},
		{"three today", 4, 0, history(ago(20*time.Hour), ago(10*time.Hour), ago(time.Hour)), nil, 0, ""},
		{"four today: the fifth waits for the oldest to be a day old", 4, 0,
			history(ago(20*time.Hour), ago(10*time.Hour), ago(5*time.Hour), ago(time.Hour)), nil, 4 * time.Hour, "4 modifications of vol-1"},
		{"four, one of them yesterday", 4, 0, history(ago(25*time.Hour), ago(10*time.Hour), ago(5*time.Hour), ago(time.Hour)), nil, 0, ""},
		{"a modification by hand counts", 4, 0, history(ago(20*time.Hour), ago(10*time.Hour), ago(5*time.Hour)),
			&modification{start: ago(2 * time.Hour)}, 4 * time.Hour, "4 modifications"},
		{"the latest is in the history already", 4, 0, history(ago(20*time.Hour), ago(10*time.Hour), ago(5*time.Hour)),
			&modification{start: ago(5 * time.Hour)}, 0, ""},
		{"one a day", 1, 0, history(ago(3 * time.Hour)), nil, 21 * time.Hour, "SLOTKEEPER_GROW_MAX_PER_DAY = 1"},
		{"legacy six hours", 4, 6 * time.Hour, history(ago(2 * time.Hour)), nil, 4 * time.Hour, "SLOTKEEPER_GROW_MIN_INTERVAL = 6h0m0s"},
		{"six hours passed", 4, 6 * time.Hour, history(ago(7 * time.Hour)), nil, 0, ""},
		{"the later of both rules", 2, 6 * time.Hour, history(ago(23*time.Hour), ago(30*time.Minute)), nil, 5*time.Hour + 30*time.Minute, "MIN_INTERVAL"},
		{"records without modified_at count by their time", 1, 0,
			lease.Growth{History: []lease.GrowthRecord{{VolumeID: "vol-1", At: ago(time.Hour).Format(time.RFC3339Nano)}}}, nil, 23 * time.Hour, "MAX_PER_DAY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := &job{Handler: &Handler{cfg: config.Config{Grow: config.GrowConfig{MaxPerDay: tt.perDay, MinInterval: tt.interval}}}}
			next, why := j.rateRule(tt.g, "vol-1", tt.latest, now)
			if tt.wantWait == 0 {
				if !next.IsZero() {
					t.Fatalf("waits until %s (%s), want no wait", next, why)
				}
				return
			}
			if got := next.Sub(now); got != tt.wantWait || !strings.Contains(why, tt.wantReason) {
				t.Fatalf("waits %s (%q), want %s (%q)", got, why, tt.wantWait, tt.wantReason)
			}
		})
	}
}
