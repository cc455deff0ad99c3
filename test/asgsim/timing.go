package asgsim

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// The simulator's time model.
//
// Simulated time runs continuously with real time, faster by Timing.Scale (100 by
// default: one real millisecond is a tenth of a simulated second, a simulated minute
// passes in 0.6 s). Everything the simulator plays itself (Auto Scaling, EC2's
// instance states, the brokers, SSM, EventBridge and Lambda) is scheduled in
// simulated time; the real handlers run in real time against moto, with every wait
// and bound they have configured at its production value divided by Scale (a
// heartbeat every 30 simulated seconds is one every 0.3 real seconds). moto answers a
// call in a few real milliseconds, which is a few hundred simulated milliseconds to
// a few simulated seconds: a call is slow in simulated time, about as slow as a slow
// AWS call, and faster than a throttled one.
//
// Windows is the table of every simulated window, in simulated time, from which each
// instance draws its own durations (seeded). docs/simulation.md lists them with what
// is and is not modelled.

// Window is a duration range in simulated time.
type Window struct{ Min, Max time.Duration }

// draw returns a duration in w, uniformly.
func (w Window) draw(r *rand.Rand) time.Duration {
	if w.Max <= w.Min {
		return w.Min
	}
	return w.Min + time.Duration(r.Int64N(int64(w.Max-w.Min)))
}

// Windows are the state windows the simulator models, in simulated time.
type Windows struct {
	// Pending is how long an instance stays pending (EC2) after its launch.
	Pending Window
	// ShuttingDown is how long an instance stays shutting-down after its terminate
	// lifecycle action ended; OSStopsKafka is when, within it, the operating system's
	// shutdown has stopped Kafka and unmounted the data volume (never after the end of
	// ShuttingDown).
	ShuttingDown, OSStopsKafka Window
	// HookTimeout is the lifecycle hooks' heartbeat timeout (the template's 900 s):
	// an action with no heartbeat for this long ends with its default result.
	HookTimeout time.Duration
	// EventDelay is EventBridge's delivery latency; LateDelay how late a late or
	// duplicate-late delivery comes (up to the hour Lambda keeps an event).
	EventDelay, LateDelay, ReorderDelay Window
	// LambdaRetry are the delays of Lambda's two retries of a failed asynchronous
	// invocation (about one and two minutes).
	LambdaRetry [2]time.Duration
	// Invocation is the function timeout of launch and terminate (the template's 900
	// s); reconcile, dns and grow have theirs (600, 120, 400 s).
	Invocation, ReconcileTimeout, DNSTimeout, GrowTimeout time.Duration
	// KafkaStart is how long the broker's user data takes, once the instance is in
	// service and bound, to mount the volume and start Kafka; CatchUp how long a
	// started broker takes to rejoin every ISR.
	KafkaStart, CatchUp Window
	// SessionTimeout is how long Kafka keeps a broker that died in its ISRs and
	// registered (broker.session.timeout.ms); the broker answers nothing meanwhile.
	SessionTimeout time.Duration
	// KafkaRestart is when systemd restarts a Kafka that died on a running instance
	// (when the seed says it does).
	KafkaRestart Window
	// StopCommand is how long the stop-and-unmount command runs over SSM; GrowCommand
	// the filesystem growth.
	StopCommand, GrowCommand Window
	// HealthCheck is how long Auto Scaling takes to notice an instance that died and
	// replace it.
	HealthCheck Window
	// Relaunch is the pause before Auto Scaling launches again after an abandoned
	// launch (times the number of abandons in a row, at most 8).
	Relaunch time.Duration
	// RefreshWarmup is the instance refresh's pause after a replacement is in service.
	RefreshWarmup time.Duration
	// ReconcileEvery is the reconcile schedule (the template's 5 minutes).
	ReconcileEvery time.Duration
}

// DefaultWindows are the windows of a campaign: AWS's and Kafka's usual figures.
var DefaultWindows = Windows{
	Pending:          Window{5 * time.Second, 40 * time.Second},
	ShuttingDown:     Window{20 * time.Second, 120 * time.Second},
	OSStopsKafka:     Window{3 * time.Second, 30 * time.Second},
	HookTimeout:      900 * time.Second,
	EventDelay:       Window{200 * time.Millisecond, 2 * time.Second},
	LateDelay:        Window{16 * time.Minute, 50 * time.Minute},
	ReorderDelay:     Window{10 * time.Second, 90 * time.Second},
	LambdaRetry:      [2]time.Duration{60 * time.Second, 120 * time.Second},
	Invocation:       900 * time.Second,
	ReconcileTimeout: 600 * time.Second,
	DNSTimeout:       120 * time.Second,
	GrowTimeout:      400 * time.Second,
	KafkaStart:       Window{10 * time.Second, 60 * time.Second},
	CatchUp:          Window{5 * time.Second, 40 * time.Second},
	SessionTimeout:   9 * time.Second,
	KafkaRestart:     Window{20 * time.Second, 120 * time.Second},
	StopCommand:      Window{2 * time.Second, 20 * time.Second},
	GrowCommand:      Window{1 * time.Second, 5 * time.Second},
	HealthCheck:      Window{30 * time.Second, 120 * time.Second},
	Relaunch:         15 * time.Second,
	RefreshWarmup:    30 * time.Second,
	ReconcileEvery:   5 * time.Minute,
}

// Timing is a run's time model: the speed-up and the windows.
type Timing struct {
	// Scale is how much faster simulated time runs than real time.
	Scale int
	Windows
}

// DefaultTiming is the campaign's time model.
var DefaultTiming = Timing{Scale: 100, Windows: DefaultWindows}

// Real converts a simulated duration to real time.
func (t Timing) Real(sim time.Duration) time.Duration { return sim / time.Duration(t.Scale) }

// Sim converts a real duration to simulated time.
func (t Timing) Sim(real time.Duration) time.Duration { return real * time.Duration(t.Scale) }

// clock is a run's simulated clock: simulated time since the run started, which
// runs Scale times faster than real time, jumps forward (warp) over stretches in
// which nothing runs in real time, and stands still (hold) while the simulator
// itself applies a step and checks the invariants: reading the world at moto takes
// real time (more on a loaded machine, or under the race detector) which is no time
// in the simulated world, so a slow check never makes a lifecycle action time out
// or a window pass.
type clock struct {
	start  atomic.Int64 // real UnixNano of simulated time 0, moved back by every warp
	held   atomic.Int64 // simulated time + 1 while held; 0 when running
	scale  time.Duration
	holdMu sync.Mutex
	holds  int
}

func newClock(scale int) *clock {
	c := &clock{scale: time.Duration(scale)}
	c.start.Store(time.Now().UnixNano())
	return c
}

// now is the simulated time elapsed.
func (c *clock) now() time.Duration {
	if h := c.held.Load(); h > 0 {
		return time.Duration(h - 1)
	}
	return c.running()
}

func (c *clock) running() time.Duration {
	return time.Duration(time.Now().UnixNano()-c.start.Load()) * c.scale
}

// hold stops simulated time until the matching release (holds nest).
func (c *clock) hold() {
	c.holdMu.Lock()
	defer c.holdMu.Unlock()
	if c.holds == 0 {
		c.held.Store(int64(c.running()) + 1)
	}
	c.holds++
}

// release lets simulated time run again from where hold stopped it.
func (c *clock) release() {
	c.holdMu.Lock()
	defer c.holdMu.Unlock()
	if c.holds == 0 {
		return
	}
	c.holds--
	if c.holds > 0 {
		return
	}
	at := time.Duration(c.held.Load() - 1)
	c.start.Store(time.Now().UnixNano() - int64(at/c.scale))
	c.held.Store(0)
}

// realAt is the real instant at which simulated time at is reached.
func (c *clock) realAt(at time.Duration) time.Time {
	return time.Unix(0, c.start.Load()).Add(at / c.scale)
}

// warp moves simulated time forward by d at once.
func (c *clock) warp(d time.Duration) {
	if d > 0 {
		c.start.Add(-int64(d / c.scale))
	}
}
