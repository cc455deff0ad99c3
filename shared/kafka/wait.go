package kafka

import (
	"context"
	"fmt"
	"time"
)

// MaxRecheck is the longest pause of the removal-safety wait of the terminate path.
// A check costs a few small requests, so re-checking every few seconds is cheap,
// and a held termination proceeds within MaxRecheck plus one check of the ISRs
// being full again. The lifecycle action is kept alive separately (heartbeats).
const MaxRecheck = 4 * time.Second

// Wait is a bounded, backing-off wait for a broker's removal to become safe.
// It re-checks until a check says safe or until Bound has passed, and then lets
// the caller proceed anyway (Forced): a planned termination must never hang on a
// cluster that stays unhealthy or unreachable. A failed check (Kafka unreachable,
// configuration unreadable) counts as "not safe" and is bounded the same way.
//
// Now and Sleep are injectable so that the policy is tested without real time.
type Wait struct {
	// First is the first pause between checks; pauses double up to Max.
	First, Max time.Duration
	// Bound is the longest total wait, measured with Now from the first check.
	// Zero means one check and no waiting.
	Bound time.Duration
	// Tick is called before every pause (nil: nothing). The terminate path records
	// a lifecycle-action heartbeat there, so keep Max (plus a check's own duration,
	// at most CallTimeout) below the lifecycle hook's heartbeat timeout.
	Tick func(ctx context.Context)
	// Now reads the clock; nil means time.Now.
	Now func() time.Time
	// Sleep pauses for d or until ctx is done; nil means a real timer.
	Sleep func(ctx context.Context, d time.Duration) error
}

// WaitResult is how a Wait ended.
type WaitResult struct {
	// Verdict is the verdict of the last check that succeeded (zero if none did).
	Verdict Verdict
	// Err is the last check's error when the last check failed, else nil.
	Err error
	// Checks counts the checks made, Ticks the calls to Tick.
	Checks, Ticks int
	// Waited is the time from the first check to the end, by Now.
	Waited time.Duration
	// Forced is true when Bound passed without a safe verdict: the caller proceeds
	// anyway and must say so loudly (log and metric).
	Forced bool
}

// Until runs check until it reports safe or until the bound has passed. Its error
// is non-nil only when ctx ends first; a failing check is not an error (see
// WaitResult.Err).
func (w Wait) Until(ctx context.Context, check func(context.Context) (Verdict, error)) (WaitResult, error) {
	now, sleep := w.Now, w.Sleep
	if now == nil {
		now = time.Now
	}
	if sleep == nil {
		sleep = sleepCtx
	}
	pause := w.First
	if pause <= 0 {
		pause = time.Second
	}
	maxPause := max(w.Max, pause)

	var res WaitResult
	start := now()
	for {
		v, err := check(ctx)
		res.Checks++
		res.Err = err
		if err == nil {
			res.Verdict = v
		} else if ctx.Err() != nil {
			res.Waited = now().Sub(start)
			return res, fmt.Errorf("waiting for removal safety: %w", ctx.Err())
		}
		res.Waited = now().Sub(start)
		if err == nil && v.Safe {
			return res, nil
		}
		left := w.Bound - res.Waited
		if left <= 0 {
			res.Forced = true
			return res, nil
		}
		if w.Tick != nil {
			w.Tick(ctx)
			res.Ticks++
		}
		if err := sleep(ctx, min(pause, left)); err != nil {
			res.Waited = now().Sub(start)
			return res, fmt.Errorf("waiting for removal safety: %w", err)
		}
		pause = min(pause*2, maxPause)
	}
}

// sleepCtx pauses for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
