// Package terminate hands a leaving broker's slot back cleanly. On the terminate
// lifecycle action of a slot holder it decides whether the termination is planned;
// for a broker whose instance still runs it takes the cluster's removal token (one
// removal at a time) and waits (with heartbeats, bounded) until Kafka can lose the
// broker (partitions and controller quorum); it stops the broker and unmounts its data
// volume over SSM, detaches the slot's volume and ENI so that the replacement can
// attach them at once, releases the lease, gives the token back and completes the
// action with CONTINUE.
//
// Every step is idempotent: a redelivered event resumes where the last attempt
// stopped (a draining lease waits for safety only while its broker still serves; a
// released lease leaves only the completion), and an event whose action is no longer
// active changes nothing.
package terminate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"

	"github.com/slotkeeper/slotkeeper/shared/alert"
	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/hostcmd"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/lifecycle"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/remote"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// Outcomes of one invocation.
const (
	OutcomeReleased  = "released"
	OutcomeNoSlot    = "no-slot"
	OutcomeIgnored   = "ignored"
	OutcomeMalformed = "malformed"
	OutcomeRetry     = "retry"
)

// Kafka is what the terminate path asks of the cluster.
type Kafka interface {
	RemovalSafe(ctx context.Context, broker int32) (kafka.Verdict, error)
	Quorum(ctx context.Context) (kafka.Quorum, error)
	Registered(ctx context.Context, broker int32) (bool, error)
}

// Drainer is told when a slot starts draining, so that what follows the slot (the
// bootstrap DNS record) stops sending clients to the leaving broker.
type Drainer interface {
	Name() string
	SlotDraining(ctx context.Context, l lease.Lease) error
}

// Handler handles terminate lifecycle events. Build it with New.
type Handler struct {
	cfg     config.Config
	ec2     awsapi.EC2
	asg     awsapi.AutoScaling
	db      awsapi.DynamoDB
	ssm     awsapi.SSM
	log     *slog.Logger
	metrics io.Writer

	// Kafka answers the safety questions; nil when no bootstrap is configured.
	Kafka Kafka
	// Alerts receives the alert of a forced unsafe termination.
	Alerts *alert.Notifier
	// Drainers are told when a slot starts draining.
	Drainers []Drainer
	// Poll paces and bounds waits for detaches (Timeout: before a plain detach is forced).
	Poll resources.Poll
	// HeartbeatInterval is how often the lifecycle action is extended while waiting.
	HeartbeatInterval time.Duration
	// SafetyRecheck and SafetyMaxWait pace and bound the removal gate (the wait for
	// the removal token, then for removal safety) of a planned termination; after
	// SafetyMaxWait, counted from when the removal first asked for the token (recorded
	// on the lease, so redeliveries do not restart it), the termination proceeds,
	// loudly. UnplannedSafetyMaxWait bounds the gate of an unplanned termination of a
	// running instance (never above SafetyMaxWait).
	SafetyRecheck, SafetyMaxWait, UnplannedSafetyMaxWait time.Duration
	// GateReserve is the time the rest of a removal needs after its gate (the last
	// verdict, the stop-and-unmount command, the check that the broker left, the
	// detaches, the release and the completion): the gate ends, as at its bound, that
	// long before the invocation's deadline, and at the latest halfway through the time
	// the invocation had when it started.
	GateReserve time.Duration
	// StampTTL is how long this invocation's stamp on the removal token keeps it alive
	// for other deliveries of its event; it renews the stamp every StampTTL/2 while it
	// holds the token. Zero: two heartbeat intervals.
	StampTTL time.Duration
	// ForceDetachAfter bounds the plain detach from an instance on which Kafka could
	// not be seen stopped (stopping, shutting down): past it the detach is forced,
	// loudly.
	ForceDetachAfter time.Duration
	// Now is the clock of the gate; time.Now when nil.
	Now func() time.Time
	// LeaveTimeout bounds the wait for the stopped broker to leave the cluster metadata.
	LeaveTimeout time.Duration
	// SSMPoll is the first interval between SSM result checks.
	SSMPoll time.Duration
}

// New returns a terminate handler.
func New(cfg config.Config, ec2 awsapi.EC2, asg awsapi.AutoScaling, db awsapi.DynamoDB, ssm awsapi.SSM, log *slog.Logger, metrics io.Writer) *Handler {
	return &Handler{
		cfg: cfg, ec2: ec2, asg: asg, db: db, ssm: ssm, log: log, metrics: metrics,
		Poll:                   resources.Poll{Initial: time.Second, Max: 10 * time.Second, Timeout: cfg.AttachTimeout},
		HeartbeatInterval:      cfg.HeartbeatInterval,
		SafetyRecheck:          cfg.SafetyRecheck,
		SafetyMaxWait:          cfg.SafetyMaxWait,
		UnplannedSafetyMaxWait: cfg.UnplannedSafetyMaxWait,
		// The stop-and-unmount command and the wait for the broker to leave (one SSM
		// timeout each), the detach of the volume and the ENI (each forced past the
		// attach timeout and waited for again), and 3 minutes for the last verdict,
		// the release, the completion and the calls the SDK retries.
		GateReserve:      2*cfg.SSMTimeout + 4*cfg.AttachTimeout + 3*time.Minute,
		ForceDetachAfter: cfg.ForceDetachAfter,
		LeaveTimeout:     cfg.SSMTimeout,
		SSMPoll:          time.Second,
	}
}

// verdict is the removal-safety verdict on one broker: the partition rule and the
// controller quorum rule, from answers read within one check.
type verdict struct {
	Partitions kafka.Verdict
	Quorum     kafka.QuorumVerdict
	// NoQuorum, when set, says why the quorum rule does not apply: the cluster does
	// not support DescribeQuorum (kafka.ErrQuorumUnsupported).
	NoQuorum string
}

// Safe reports whether both rules allow the removal.
func (v verdict) Safe() bool { return v.Partitions.Safe && (v.NoQuorum != "" || v.Quorum.Safe) }

// describe says why removal was (not) safe: the rule that blocks it first, then the
// other; or Kafka's error.
func describe(v verdict, err error) string {
	if err != nil {
		return "Kafka could not be asked: " + err.Error()
	}
	if v.NoQuorum != "" {
		return v.Partitions.String() + "; the controller quorum rule does not apply: " + v.NoQuorum
	}
	if !v.Quorum.Safe && v.Partitions.Safe {
		return v.Quorum.String() + "; " + v.Partitions.String()
	}
	return v.Partitions.String() + "; " + v.Quorum.String()
}

// Result says what one invocation did.
type Result struct {
	Outcome string `json:"outcome"`
	Slot    int    `json:"slot"`
	Planned bool   `json:"planned"`
	// Forced is true when the broker left although removal was not safe (bound hit).
	Forced bool `json:"forced,omitempty"`
	// SafetyChecks counts the removal-safety checks made (0: none was needed).
	SafetyChecks int `json:"safety_checks,omitempty"`
	// TokenWaitMS is how long the removal waited for the removal token.
	TokenWaitMS int64 `json:"token_wait_ms,omitempty"`
	// Stopped is true when the stop-and-unmount command confirmed that Kafka stopped
	// and the data volume was unmounted.
	Stopped bool `json:"stopped,omitempty"`
	// Detached counts the slot resources detached; LeftAttached is true when they
	// were left on an instance that may still run Kafka (its stop failed).
	Detached     int    `json:"detached"`
	LeftAttached bool   `json:"left_attached,omitempty"`
	Reason       string `json:"reason,omitempty"`
}

// Invoke is the Lambda entry point (Handler is a lambda.Handler).
func (h *Handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return app.Respond(h.Run(ctx, payload))
}

type invocation struct {
	*Handler
	o            *obs.Obs
	store        *lease.Store
	res          *resources.Manager
	actions      *lifecycle.Actions
	invocationID string
	forcedDetach atomic.Bool
	instance     resources.Instance // as classify described it
	// started is when the invocation started; deadline its deadline (zero: none).
	started, deadline time.Time
	// tokMu orders this invocation's writes to the removal token (the stamp's
	// renewals among them); stopStamp stops the renewals.
	tokMu     sync.Mutex
	stopStamp func()
	// quorumWarned is set once the invocation has warned that the cluster has no
	// controller quorum to ask.
	quorumWarned bool
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// Run handles one event. A returned error means the event should be delivered again;
// the lifecycle action was then not completed.
func (h *Handler) Run(ctx context.Context, raw []byte) (res Result, err error) {
	o, finish := obs.Begin(h.log, h.metrics, h.cfg.MetricsNamespace, "terminate", h.cfg.Cluster)
	defer func() { finish(ctx, res.Outcome, err) }()
	ev, ok, why, err := lifecycle.Accept(ctx, o.Log, raw, lifecycle.Filter{
		ASG: h.cfg.ASGName, Hook: h.cfg.TerminateHook, DetailType: lifecycle.DetailTypeTerminate, Transition: lifecycle.TransitionTerminate,
	})
	if err != nil {
		return Result{Outcome: OutcomeMalformed, Slot: -1, Reason: why}, err
	}
	if !ok {
		return Result{Outcome: OutcomeIgnored, Slot: -1, Reason: why}, nil
	}
	o = o.With(obs.KeyInstance, ev.Action.EC2InstanceID, obs.KeyEvent, ev.ID)
	inv := &invocation{Handler: h, o: o, invocationID: newInvocationID(ctx), started: time.Now()}
	if d, ok := ctx.Deadline(); ok {
		inv.deadline = d
	}
	inv.store = lease.NewStore(h.db, h.cfg.Table, h.cfg.Cluster)
	inv.store.Actor = obs.Actor(ctx, "terminate")
	if h.Now != nil {
		inv.store.Now = h.Now // the removal's recorded start and the gate share one clock
	}
	inv.res = resources.New(h.cfg, h.ec2, h.Poll, o.Log)
	inv.actions = &lifecycle.Actions{API: h.asg, Action: ev.Action, Log: o.Log}

	// Only a pending action is acted on: an event delivered after its action was
	// completed or expired (the instance's fate is decided) changes nothing.
	if err := inv.actions.Active(ctx); errors.Is(err, lifecycle.ErrNotActive) {
		why := err.Error() + " (it was completed or has expired: the instance's fate is decided)"
		o.Log.InfoContext(ctx, "ignoring event", obs.KeyOutcome, OutcomeIgnored, obs.KeyReason, why)
		return Result{Outcome: OutcomeIgnored, Slot: -1, Reason: why}, nil
	} else if err != nil {
		o.Log.WarnContext(ctx, "terminate failed; the event will be retried", obs.KeyOutcome, OutcomeRetry, obs.KeyErr, err.Error())
		return Result{}, err
	}

	stop := inv.actions.KeepAlive(ctx, h.HeartbeatInterval)
	res, err = inv.run(ctx)
	if inv.stopStamp != nil {
		inv.stopStamp()
	}
	stop()
	if err != nil {
		inv.endInvocation(ctx)
		o.Log.WarnContext(ctx, "terminate failed; the event will be retried", obs.KeyOutcome, OutcomeRetry, obs.KeyErr, err.Error())
	}
	return res, err
}

func (inv *invocation) run(ctx context.Context) (Result, error) {
	id := inv.actions.Action.EC2InstanceID

	// 1. The slot this instance holds, if any.
	var l *lease.Lease
	err := inv.o.Step(ctx, "find-slot", func(ctx context.Context) error {
		leases, err := inv.store.List(ctx)
		for i := range leases {
			if leases[i].HeldBy(id) {
				l = &leases[i]
			}
		}
		return err
	})
	if err != nil {
		return Result{}, err
	}
	if l == nil {
		// A redelivery after the release: the token may still be held for it.
		if err := inv.o.Step(ctx, "give-back-token", func(ctx context.Context) error {
			return inv.giveBackToken(ctx, id, id+" holds no slot")
		}); err != nil {
			return Result{}, err
		}
		if err := inv.complete(ctx); err != nil {
			return Result{}, err
		}
		inv.o.Log.InfoContext(ctx, "instance holds no slot; nothing to hand back", obs.KeyOutcome, OutcomeNoSlot)
		return Result{Outcome: OutcomeNoSlot, Slot: -1}, nil
	}
	inv.o = inv.o.With(obs.KeySlot, l.Slot, obs.KeyLeaseVersion, l.Version)
	broker := int32(inv.cfg.NodeID(l.Slot))
	res := Result{Outcome: OutcomeReleased, Slot: l.Slot}

	// 2. Planned or not, and whether the instance still runs.
	var why, state string
	err = inv.o.Step(ctx, "classify", func(ctx context.Context) error {
		var err error
		res.Planned, state, why, err = inv.classify(ctx, id)
		return err
	})
	if err != nil {
		return Result{}, err
	}
	res.Reason = why
	running := state == slot.Running
	inv.o.Log.InfoContext(ctx, "termination classified", "planned", res.Planned, "state", stateName(state), obs.KeyReason, why)

	// 3. A broker that may still run passes the removal gate: the removal token, then
	// removal safety, within one bound (shorter for an unplanned termination).
	if running {
		err := inv.gate(ctx, *l, broker, &res)
		switch {
		case errors.Is(err, lifecycle.ErrNotActive):
			// Another delivery of this event handed the slot back and completed the
			// action while this one waited for it.
			why := err.Error() + " (another delivery of this event completed it)"
			inv.o.Log.InfoContext(ctx, "ignoring event", obs.KeyOutcome, OutcomeIgnored, obs.KeyReason, why)
			return Result{Outcome: OutcomeIgnored, Slot: l.Slot, Reason: why}, nil
		case errors.Is(err, lease.ErrFenced):
			return inv.movedOn(ctx, res, err)
		case err != nil:
			return Result{}, err
		}
	}

	// 4. Draining: from here on the slot is being handed back.
	drained, err := inv.drain(ctx, *l)
	if errors.Is(err, lease.ErrFenced) {
		return inv.movedOn(ctx, res, err)
	}
	if err != nil {
		return Result{}, err
	}
	l = &drained

	// 5. Stop the broker and unmount its data volume, then confirm it left the cluster.
	if running {
		if res.Stopped, err = inv.stopAndUnmount(ctx, *l, broker); err != nil {
			return Result{}, err
		}
		if res.Stopped {
			inv.confirmLeft(ctx, broker)
		}
	}

	// 6. Detach the slot's volume and ENI so the replacement can attach them at once:
	// plainly, forced only once nothing can run on the instance or past the bound.
	// After a failed stop they stay where they are: Kafka may still use the volume.
	// The next holder's attach frees them once the instance no longer runs.
	if running && !res.Stopped {
		res.LeftAttached = true
		inv.o.Metrics.Count("VolumesLeftAttached", 1)
		msg := fmt.Sprintf("broker %d (slot %d, instance %s) could not be seen stopped and unmounted; its volume and ENI stay attached "+
			"until the instance no longer runs, and the slot's next holder attaches them then", broker, l.Slot, id)
		if err := inv.Alerts.Send(ctx, inv.o.Log, "broker stop failed: volume left attached", msg); err != nil {
			inv.o.Log.WarnContext(ctx, "alert not sent", obs.KeyErr, err.Error())
		}
	} else {
		mode := resources.Force // force at once only if halted; else plain, escalating
		inv.res.Detach = resources.DetachPolicy{ForceAfter: inv.ForceDetachAfter, Forced: inv.forced}
		if running {
			// Kafka was seen stopped and the filesystem unmounted: a plain detach should
			// finish at once; if it does not within the attach timeout, force it, loudly.
			mode, inv.res.Detach.ForceAfter = resources.PlainThenForce, inv.Poll.Timeout
		}
		err = inv.o.Step(ctx, "detach", func(ctx context.Context) error {
			// One fresh description of the instance says what of the slot's is still
			// attached to it and in which state it is; the volume and the ENI are then
			// detached at the same time.
			in, found, err := inv.res.DescribeInstance(ctx, id)
			if err != nil {
				return err
			}
			var n int
			if found {
				n, err = inv.res.DetachFromInstance(ctx, *l, in, mode)
			} else {
				n, err = inv.res.DetachFrom(ctx, *l, id, mode)
			}
			res.Detached = n
			inv.o.Log.InfoContext(ctx, "detached slot resources", "detached", n, "forced", inv.forcedDetach.Load())
			return err
		})
		if err != nil {
			return Result{}, err
		}
	}

	// 7. Release the lease (fenced), give the removal token back, and CONTINUE.
	err = inv.o.Step(ctx, "release", func(ctx context.Context) error {
		_, err := inv.store.Release(ctx, *l, fmt.Sprintf("%s terminated (%s)", id, why))
		return err
	})
	if errors.Is(err, lease.ErrFenced) {
		return inv.movedOn(ctx, res, err)
	}
	if err != nil {
		return Result{}, err
	}
	if err := inv.o.Step(ctx, "give-back-token", func(ctx context.Context) error {
		return inv.giveBackToken(ctx, id, fmt.Sprintf("slot %d released", l.Slot))
	}); err != nil {
		return Result{}, err
	}
	if err := inv.complete(ctx); err != nil {
		return Result{}, err
	}
	inv.o.Log.InfoContext(ctx, "slot handed back", obs.KeyOutcome, OutcomeReleased, "planned", res.Planned, "forced", res.Forced,
		"stopped", res.Stopped, "detached", res.Detached, "left_attached", res.LeftAttached)
	return res, nil
}

// gate waits, bounded, until l's broker may be removed: it takes the removal token,
// then waits for removal safety on fresh answers (for a slot already draining, whose
// earlier delivery passed the gate, only while its broker still serves: see
// removalSafe). The bound counts from when the removal
// first asked for the token (lease.RemovalStarted: a redelivery goes on with the bound
// of the first delivery), and the gate ends no later than GateReserve before the
// invocation's deadline, so that the stop, the detaches, the release and the
// completion still fit. When the gate ends unsatisfied it goes on, loudly (alert,
// metric UnsafeTerminationsForced): the instance leaves either way once the lifecycle
// action times out, and a controlled shutdown is better than none.
func (inv *invocation) gate(ctx context.Context, l lease.Lease, broker int32, res *Result) error {
	bound := inv.SafetyMaxWait
	if !res.Planned {
		bound = min(inv.UnplannedSafetyMaxWait, inv.SafetyMaxWait)
	}
	draining := l.State == lease.Draining
	var forcedWhy []string
	var start, deadline time.Time
	var cut string

	var tr tokenResult
	err := inv.o.Step(ctx, "removal-token", func(ctx context.Context) error {
		var err error
		if start, err = inv.store.RemovalStarted(ctx, l); err != nil {
			return err
		}
		deadline = start.Add(bound)
		if capAt, ok := inv.gateCap(); ok && capAt.Before(deadline) {
			deadline = capAt
			cut = fmt.Sprintf(" (its gate ended %s before the invocation's deadline, which the rest of the removal needs, before its bound of %s)",
				inv.deadline.Sub(capAt).Round(time.Second), bound)
		}
		tr, err = inv.takeToken(ctx, l, deadline, !draining)
		return err
	})
	if err != nil {
		return err
	}
	if tr.Held {
		inv.stopStamp = inv.keepStamp(ctx)
	}
	res.TokenWaitMS = tr.Waited.Milliseconds()
	inv.o.Metrics.Duration("RemovalTokenWait", tr.Waited)
	if tr.Forced {
		forcedWhy = append(forcedWhy, "the removal token was still held: "+tr.Why)
	}

	// A draining slot's earlier delivery passed the gate, but its stop may not have
	// taken effect (it died first, or the stop failed) while the cluster lost another
	// broker since: the redelivery waits too, within the same bound, for as long as
	// this broker is what holds a partition at min ISR or the quorum's majority.
	if inv.Kafka != nil {
		err := inv.o.Step(ctx, "safety", func(ctx context.Context) error {
			var last verdict
			w := kafka.Wait{First: inv.SafetyRecheck, Max: kafka.MaxRecheck, Bound: deadline.Sub(inv.now()), Now: inv.Now}
			wr, err := w.Until(ctx, func(ctx context.Context) (kafka.Verdict, error) {
				v, err := inv.removalSafe(ctx, broker, draining)
				if err == nil {
					last = v
				}
				if err != nil || !v.Safe() {
					inv.o.Log.WarnContext(ctx, "removal not safe yet; waiting", obs.KeyReason, describe(v, err))
				}
				both := v.Partitions
				both.Safe = v.Safe()
				return both, err
			})
			res.SafetyChecks = wr.Checks
			if err != nil {
				return err
			}
			inv.o.Log.InfoContext(ctx, "removal safety", "safe", wr.Err == nil && wr.Verdict.Safe, "checks", wr.Checks, "forced", wr.Forced,
				"waited_ms", wr.Waited.Milliseconds(),
				obs.KeyReason, describe(last, wr.Err))
			inv.o.Metrics.Duration("SafetyWait", wr.Waited)
			if wr.Forced {
				forcedWhy = append(forcedWhy, "removal is not safe: "+describe(last, wr.Err))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if len(forcedWhy) > 0 {
		res.Forced = true
		inv.o.Metrics.Count("UnsafeTerminationsForced", 1)
		msg := fmt.Sprintf("broker %d (slot %d, instance %s) is leaving %s after its removal began%s although %s",
			broker, l.Slot, l.Holder, inv.now().Sub(start).Round(time.Second), cut, strings.Join(forcedWhy, "; and "))
		if err := inv.Alerts.Send(ctx, inv.o.Log, "unsafe termination forced", msg); err != nil {
			inv.o.Log.WarnContext(ctx, "alert not sent", obs.KeyErr, err.Error())
		}
	}
	return nil
}

// gateCap is the latest the gate may end in this invocation: GateReserve before its
// deadline, and no later than halfway through the time it had when it started. There
// is none without a deadline.
func (inv *invocation) gateCap() (time.Time, bool) {
	if inv.deadline.IsZero() {
		return time.Time{}, false
	}
	reserve := min(inv.GateReserve, inv.deadline.Sub(inv.started)/2)
	return inv.deadline.Add(-reserve), true
}

// removalSafe applies both removal rules to fresh answers read within one deadline
// (kafka.CallTimeout): the partition rule and, for a controller voter, the quorum
// rule. Any failed or late answer is an error: not safe. For a draining slot
// (stopped, whose broker an earlier delivery may already have stopped) only what
// the broker still serves counts: a partition blocks only while the broker is in
// its ISR, and the quorum rule only while the broker is a caught-up voter; a
// stopped broker's leaving changes neither.
func (inv *invocation) removalSafe(ctx context.Context, broker int32, stopped bool) (verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, kafka.CallTimeout)
	defer cancel()
	pv, err := inv.Kafka.RemovalSafe(ctx, broker)
	if err != nil {
		return verdict{Partitions: pv}, err
	}
	if stopped {
		pv.Blocking = slices.DeleteFunc(pv.Blocking, func(b kafka.Blocker) bool { return !slices.Contains(b.ISR, broker) })
		pv.Safe = len(pv.Blocking) == 0
	}
	q, err := inv.Kafka.Quorum(ctx)
	if errors.Is(err, kafka.ErrQuorumUnsupported) {
		// No KRaft controller quorum to ask (ZooKeeper mode, or brokers before Kafka
		// 3.3): the quorum rule does not apply; the partition rule decides. Said once
		// per invocation.
		if !inv.quorumWarned {
			inv.quorumWarned = true
			inv.o.Log.WarnContext(ctx, "the controller quorum rule does not apply: the cluster does not support DescribeQuorum; the partition rule decides",
				"broker", broker, obs.KeyErr, err.Error())
		}
		return verdict{Partitions: pv, NoQuorum: kafka.ErrQuorumUnsupported.Error()}, nil
	}
	if err != nil {
		return verdict{Partitions: pv}, fmt.Errorf("deciding whether broker %d may leave the controller quorum: %w", broker, err)
	}
	qv := kafka.QuorumSafe(q, broker, kafka.DefaultCaughtUpLag)
	if stopped && !slices.Contains(q.CaughtUp(kafka.DefaultCaughtUpLag), broker) {
		qv.Safe = true
	}
	return verdict{Partitions: pv, Quorum: qv}, nil
}

// forced is the detach policy's report of a detach forced past its bound.
func (inv *invocation) forced(ctx context.Context, what, instance, state string, waited time.Duration) {
	inv.forcedDetach.Store(true)
	inv.o.Metrics.Count("ForcedDetaches", 1)
	msg := fmt.Sprintf("the plain detach of %s from %s (%s) did not finish in %s; it was forced although the instance may still run Kafka",
		what, instance, state, waited.Round(time.Second))
	if err := inv.Alerts.Send(ctx, inv.o.Log, "forced detach", msg); err != nil {
		inv.o.Log.WarnContext(ctx, "alert not sent", obs.KeyErr, err.Error())
	}
}

// movedOn handles a fenced write: the slot is no longer this instance's (a reconcile
// released it, or an earlier delivery did). Nothing of the slot is ours to touch.
func (inv *invocation) movedOn(ctx context.Context, res Result, err error) (Result, error) {
	inv.o.Log.InfoContext(ctx, "the slot moved on; completing", obs.KeyReason, err.Error())
	id := inv.actions.Action.EC2InstanceID
	if err := inv.giveBackToken(ctx, id, "the slot moved on"); err != nil {
		return Result{}, err
	}
	if err := inv.complete(ctx); err != nil {
		return Result{}, err
	}
	res.Outcome = OutcomeNoSlot
	return res, nil
}

func (inv *invocation) drain(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	var drained lease.Lease
	err := inv.o.Step(ctx, "drain", func(ctx context.Context) error {
		var err error
		drained, err = inv.store.Drain(ctx, l, "terminating")
		return err
	})
	if err != nil {
		return lease.Lease{}, err
	}
	for _, d := range inv.Drainers {
		if err := inv.o.Step(ctx, "drain-"+d.Name(), func(ctx context.Context) error { return d.SlotDraining(ctx, drained) }); err != nil {
			return lease.Lease{}, fmt.Errorf("%s for draining slot %d: %w", d.Name(), l.Slot, err)
		}
	}
	return drained, nil
}

// StopCommands is the commands parameter (AWS-RunShellScript) of the stop-and-unmount
// command sent under cfg to a leaving broker to which the slot's volume is attached
// with id volume at device (both empty when it is not attached there).
func StopCommands(cfg config.Config, volume, device string) []string {
	return hostcmd.SSMCommands(hostcmd.StopAndUnmount(hostcmd.Stop{
		Unit: cfg.KafkaUnit, Command: cfg.StopCommand, Mount: cfg.Grow.DataMount, Volume: volume, Device: device,
	}))
}

// attachedDevice names the device EC2 reports for a volume attachment when the script
// can look for it (/dev/sd<x>, /dev/xvd<x>); any other name is not passed on.
var attachedDevice = regexp.MustCompile(`^/dev/(sd|xvd)[a-z]+$`)

// stopAndUnmount runs the stop-and-unmount command (hostcmd.StopAndUnmount) on the
// instance over SSM and reports whether it confirmed that Kafka stopped and the slot's
// volume (the one l records, when EC2 has it attached to the instance) is mounted
// nowhere with nothing holding it. A command that ran and failed, or whose result did
// not come in time, or that cannot reach the instance, is not an error: the instance
// is leaving either way, and its volume then stays attached (see run). An error of the
// SSM or EC2 API itself is returned, and the event is delivered again (the script is
// safe to run twice).
func (inv *invocation) stopAndUnmount(ctx context.Context, l lease.Lease, broker int32) (bool, error) {
	id := l.Holder
	var ok bool
	err := inv.o.Step(ctx, "stop-and-unmount", func(ctx context.Context) error {
		// The instance's description (classify) says whether, and at which device,
		// the volume the lease records is attached to it.
		var volume, device string
		if l.VolumeID != "" {
			if a, ok := inv.instance.Volume(l.VolumeID); ok && inv.instance.ID == id && a.Status != "detached" {
				volume = l.VolumeID
				if attachedDevice.MatchString(a.Device) {
					device = a.Device
				}
			} else {
				inv.o.Log.InfoContext(ctx, "the slot's volume is not attached to the instance; the command checks the data mount only", "volume", l.VolumeID)
			}
		}
		r := &remote.Runner{SSM: inv.ssm, Timeout: inv.cfg.SSMTimeout, Poll: inv.SSMPoll}
		out, err := r.Run(ctx, id, fmt.Sprintf("slotkeeper: stop broker %d and unmount its data volume", broker), StopCommands(inv.cfg, volume, device))
		if err != nil {
			if !errors.Is(err, remote.ErrFailed) && !errors.Is(err, remote.ErrNoResult) && awsapi.Code(err) != "InvalidInstanceId" {
				return err
			}
			inv.o.Metrics.Count("BrokerStopFailures", 1)
			inv.o.Log.WarnContext(ctx, "the broker could not be seen stopped and unmounted", obs.KeyErr, err.Error())
			return nil
		}
		// The script exits 0 only once every check held; its report line, when the
		// output reached us, says what it found.
		rep, _ := hostcmd.ParseStopReport(out.Stdout)
		inv.o.Log.InfoContext(ctx, "broker stopped and its data volume unmounted", "command", out.CommandID,
			"unit", inv.cfg.KafkaUnit, "mount", inv.cfg.Grow.DataMount, "volume", volume, "device", rep.Device, "unmounted", rep.Unmounted)
		ok = true
		// The removal token (when it is held for this removal) records it: from now on
		// the removal counts as over once the slot is released.
		return inv.markStopped(ctx, l)
	})
	return ok, err
}

// confirmLeft waits, bounded, until the stopped broker has left the cluster metadata,
// so that the next removal's verdict sees it gone. Not being able to confirm it is not
// fatal.
func (inv *invocation) confirmLeft(ctx context.Context, broker int32) {
	if inv.Kafka == nil {
		return
	}
	_ = inv.o.Step(ctx, "confirm-left", func(ctx context.Context) error {
		deadline, delay := time.Now().Add(inv.LeaveTimeout), inv.SafetyRecheck
		for {
			registered, err := inv.Kafka.Registered(ctx, broker)
			if err == nil && !registered {
				return nil
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("broker %d still in the cluster metadata after %s (last error: %w)", broker, inv.LeaveTimeout, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(delay):
			}
			delay = min(delay*2, 10*time.Second)
		}
	})
}

func (inv *invocation) complete(ctx context.Context) error {
	return inv.o.Step(ctx, "complete-CONTINUE", func(ctx context.Context) error {
		_, err := inv.actions.Complete(ctx, lifecycle.Continue)
		return err
	})
}

// classify asks EC2 and the Auto Scaling group why the instance is leaving, and
// returns its EC2 state too.
func (inv *invocation) classify(ctx context.Context, id string) (planned bool, state, why string, err error) {
	in, found, err := inv.res.DescribeInstance(ctx, id)
	if err != nil {
		return false, "", "", err
	}
	state = slot.Gone
	if found {
		state, inv.instance = in.State, in
	}
	var health, cause string
	out, err := inv.asg.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return false, state, "", fmt.Errorf("describing %s in its Auto Scaling group: %w", id, err)
	}
	if len(out.AutoScalingInstances) > 0 {
		health = aws.ToString(out.AutoScalingInstances[0].HealthStatus)
	}
	acts, err := inv.asg.DescribeScalingActivities(ctx, &autoscaling.DescribeScalingActivitiesInput{
		AutoScalingGroupName: aws.String(inv.cfg.ASGName), MaxRecords: aws.Int32(50),
	})
	if err != nil {
		return false, state, "", fmt.Errorf("describing scaling activities of %s: %w", inv.cfg.ASGName, err)
	}
	for _, a := range acts.Activities {
		if strings.Contains(aws.ToString(a.Description), id) {
			cause = aws.ToString(a.Cause)
			break
		}
	}
	planned, why = Planned(state, health, cause)
	return planned, state, why, nil
}

// Planned decides from the instance's EC2 state, its Auto Scaling health status and
// the cause of the scaling activity that terminates it whether the termination is
// planned (a healthy broker leaving for scale-in, instance refresh, rebalancing, an
// operator's request) or not (an unhealthy or already-failed instance). Both kinds
// of a still-running instance pass the removal gate and get the stop-and-unmount
// command; an unplanned one waits at most SLOTKEEPER_UNPLANNED_SAFETY_MAX_WAIT.
func Planned(ec2State, health, cause string) (bool, string) {
	c := strings.ToLower(cause)
	switch {
	case ec2State != slot.Running:
		return false, fmt.Sprintf("instance is %s", orGone(ec2State))
	case strings.EqualFold(health, "Unhealthy"):
		return false, "the Auto Scaling group marked the instance unhealthy"
	case strings.Contains(c, "health check"), strings.Contains(c, "unhealthy"),
		strings.Contains(c, "interruption"), strings.Contains(c, "was terminated or stopped"):
		return false, "activity cause: " + cause
	case cause != "":
		return true, "activity cause: " + cause
	}
	return true, "healthy running instance leaving (no scaling activity found)"
}

func orGone(s string) string { return stateName(s) }
