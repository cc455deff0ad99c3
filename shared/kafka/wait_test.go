package kafka

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// fakeClock is a clock that only moves when the code under test sleeps or a
// check says it took time.
type fakeClock struct {
	now    time.Time
	pauses []time.Duration
}

func (f *fakeClock) Now() time.Time { return f.now }

func (f *fakeClock) Sleep(_ context.Context, d time.Duration) error {
	f.pauses = append(f.pauses, d)
	f.now = f.now.Add(d)
	return nil
}

var errUnreachable = errors.New("kafka unreachable")

var (
	safe    = Verdict{Broker: 0, Safe: true, Checked: 4}
	blocked = Verdict{Broker: 0, Blocking: []Blocker{{Topic: "orders", Reason: ReasonAtMinISR}}, Checked: 4}
)

// answer is one scripted result of a check; the check advances the clock by cost.
// The i-th check returns the i-th answer, the last one repeating.
type answer struct {
	v    Verdict
	err  error
	cost time.Duration
}

func TestWaitUntil(t *testing.T) {
	s := time.Second
	tests := []struct {
		name           string
		first, max     time.Duration
		bound          time.Duration
		answers        []answer
		wantPauses     []time.Duration
		wantChecks     int
		wantForced     bool
		wantErr        bool // WaitResult.Err set
		wantSafe       bool // WaitResult.Verdict.Safe
		wantWaited     time.Duration
		wantBlockingOf int // len(WaitResult.Verdict.Blocking)
	}{
		{
			name: "safe at once: no wait, no heartbeat", first: s, max: 4 * s, bound: time.Minute,
			answers:    []answer{{v: safe}},
			wantChecks: 1, wantSafe: true,
		},
		{
			name: "safe after three checks, backing off", first: s, max: 4 * s, bound: time.Minute,
			answers:    []answer{{v: blocked}, {v: blocked}, {v: safe}},
			wantPauses: []time.Duration{s, 2 * s}, wantChecks: 3, wantSafe: true, wantWaited: 3 * s,
		},
		{
			name: "never safe: forced at the bound, last pause trimmed to it", first: s, max: 4 * s, bound: 10 * s,
			answers:    []answer{{v: blocked}},
			wantPauses: []time.Duration{s, 2 * s, 4 * s, 3 * s}, wantChecks: 5, wantForced: true,
			wantWaited: 10 * s, wantBlockingOf: 1,
		},
		{
			name: "pauses stop doubling at max", first: s, max: 2 * s, bound: 7 * s,
			answers:    []answer{{v: blocked}},
			wantPauses: []time.Duration{s, 2 * s, 2 * s, 2 * s}, wantChecks: 5, wantForced: true,
			wantWaited: 7 * s, wantBlockingOf: 1,
		},
		{
			name: "kafka unreachable: forced at the bound, never forever", first: s, max: 4 * s, bound: 10 * s,
			answers:    []answer{{err: errUnreachable}},
			wantPauses: []time.Duration{s, 2 * s, 4 * s, 3 * s}, wantChecks: 5, wantForced: true, wantErr: true,
			wantWaited: 10 * s,
		},
		{
			name: "slow failing checks count toward the bound", first: s, max: 4 * s, bound: 30 * s,
			answers:    []answer{{err: errUnreachable, cost: 20 * s}},
			wantPauses: []time.Duration{s}, wantChecks: 2, wantForced: true, wantErr: true,
			wantWaited: 41 * s,
		},
		{
			name: "unreachable, then blocked, then safe", first: s, max: 4 * s, bound: time.Minute,
			answers:    []answer{{err: errUnreachable}, {v: blocked}, {v: safe}},
			wantPauses: []time.Duration{s, 2 * s}, wantChecks: 3, wantSafe: true, wantWaited: 3 * s,
		},
		{
			name: "last check failed: verdict is the last good one, error kept", first: s, max: 4 * s, bound: 3 * s,
			answers:    []answer{{v: blocked}, {err: errUnreachable}},
			wantPauses: []time.Duration{s, 2 * s}, wantChecks: 3, wantForced: true, wantErr: true,
			wantWaited: 3 * s, wantBlockingOf: 1,
		},
		{
			name: "zero bound: one check, then proceed", first: s, max: 4 * s, bound: 0,
			answers:    []answer{{v: blocked}},
			wantChecks: 1, wantForced: true, wantBlockingOf: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			calls, ticks := 0, 0
			check := func(context.Context) (Verdict, error) {
				a := tc.answers[min(calls, len(tc.answers)-1)]
				calls++
				clock.now = clock.now.Add(a.cost)
				return a.v, a.err
			}
			w := Wait{
				First: tc.first, Max: tc.max, Bound: tc.bound,
				Tick: func(context.Context) { ticks++ },
				Now:  clock.Now, Sleep: clock.Sleep,
			}
			res, err := w.Until(context.Background(), check)
			if err != nil {
				t.Fatalf("Until: %v", err)
			}
			t.Logf("checks=%d ticks=%d pauses=%v waited=%s forced=%v err=%v", res.Checks, res.Ticks, clock.pauses, res.Waited, res.Forced, res.Err)
			if !slices.Equal(clock.pauses, tc.wantPauses) {
				t.Errorf("pauses %v, want %v", clock.pauses, tc.wantPauses)
			}
			if res.Checks != tc.wantChecks || calls != tc.wantChecks {
				t.Errorf("checks %d (calls %d), want %d", res.Checks, calls, tc.wantChecks)
			}
			// Tick (the lifecycle heartbeat) comes before every pause, and only then.
			if ticks != len(tc.wantPauses) || res.Ticks != ticks {
				t.Errorf("ticks %d (reported %d), want one per pause: %d", ticks, res.Ticks, len(tc.wantPauses))
			}
			if res.Forced != tc.wantForced {
				t.Errorf("forced %v, want %v", res.Forced, tc.wantForced)
			}
			if (res.Err != nil) != tc.wantErr || (tc.wantErr && !errors.Is(res.Err, errUnreachable)) {
				t.Errorf("err %v, want set=%v", res.Err, tc.wantErr)
			}
			if res.Verdict.Safe != tc.wantSafe || len(res.Verdict.Blocking) != tc.wantBlockingOf {
				t.Errorf("verdict %s, want safe=%v with %d blockers", res.Verdict, tc.wantSafe, tc.wantBlockingOf)
			}
			if res.Waited != tc.wantWaited {
				t.Errorf("waited %s, want %s", res.Waited, tc.wantWaited)
			}
		})
	}
}

func TestWaitUntilStopsWhenContextEnds(t *testing.T) {
	tests := []struct {
		name  string
		check func(ctx context.Context, cancel context.CancelFunc) (Verdict, error)
	}{
		{"cancelled during a pause", func(_ context.Context, cancel context.CancelFunc) (Verdict, error) {
			cancel() // the pause that follows sees it
			return blocked, nil
		}},
		{"check fails because the context ended", func(ctx context.Context, cancel context.CancelFunc) (Verdict, error) {
			cancel()
			return Verdict{}, ctx.Err()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// The real Sleep: it must return at once on a cancelled context.
			w := Wait{First: time.Hour, Max: time.Hour, Bound: 24 * time.Hour}
			res, err := w.Until(ctx, func(ctx context.Context) (Verdict, error) { return tc.check(ctx, cancel) })
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err %v, want context.Canceled", err)
			}
			if res.Forced || res.Checks != 1 {
				t.Fatalf("result %+v: want one check, not forced", res)
			}
		})
	}
}
