// Package terminate hands a leaving broker's slot back cleanly. On the terminate
// lifecycle action of a slot holder it decides whether the termination is planned,
// waits (with heartbeats, bounded) until Kafka can lose the broker, stops the broker
// over SSM, detaches the slot's volume and ENI so that the replacement can attach them
// at once, releases the lease and completes the action with CONTINUE.
//
// Every step is idempotent: a redelivered event resumes where the last attempt
// stopped (a draining lease skips the safety wait; a released lease leaves only the
// completion).
package terminate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"

	"github.com/slotkeeper/slotkeeper/shared/alert"
	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
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
	// SafetyRecheck and SafetyMaxWait pace and bound the removal-safety wait; after
	// SafetyMaxWait the termination proceeds, loudly.
	SafetyRecheck, SafetyMaxWait time.Duration
	// LeaveTimeout bounds the wait for the stopped broker to leave the cluster metadata.
	LeaveTimeout time.Duration
	// SSMPoll is the first interval between SSM result checks.
	SSMPoll time.Duration
}

// New returns a terminate handler.
func New(cfg config.Config, ec2 awsapi.EC2, asg awsapi.AutoScaling, db awsapi.DynamoDB, ssm awsapi.SSM, log *slog.Logger, metrics io.Writer) *Handler {
	return &Handler{
		cfg: cfg, ec2: ec2, asg: asg, db: db, ssm: ssm, log: log, metrics: metrics,
		Poll:              resources.Poll{Initial: time.Second, Max: 10 * time.Second, Timeout: cfg.AttachTimeout},
		HeartbeatInterval: cfg.HeartbeatInterval,
		SafetyRecheck:     cfg.SafetyRecheck,
		SafetyMaxWait:     cfg.SafetyMaxWait,
		LeaveTimeout:      cfg.SSMTimeout,
		SSMPoll:           time.Second,
	}
}

// describe says why removal was not safe: the blocking partitions, or Kafka's error.
func describe(v kafka.Verdict, err error) string {
	if err != nil {
		return "Kafka could not be asked: " + err.Error()
	}
	return v.String()
}

// Result says what one invocation did.
type Result struct {
	Outcome string `json:"outcome"`
	Slot    int    `json:"slot"`
	Planned bool   `json:"planned"`
	// Forced is true when the broker left although removal was not safe (bound hit).
	Forced bool `json:"forced,omitempty"`
	// SafetyChecks counts the removal-safety checks made (0: none was needed).
	SafetyChecks int    `json:"safety_checks,omitempty"`
	Reason       string `json:"reason,omitempty"`
}

// Invoke is the Lambda entry point (Handler is a lambda.Handler).
func (h *Handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return app.Respond(h.Run(ctx, payload))
}

type invocation struct {
	*Handler
	o       *obs.Obs
	store   *lease.Store
	res     *resources.Manager
	actions *lifecycle.Actions
}

// Run handles one event. A returned error means the event should be delivered again;
// the lifecycle action was then not completed.
func (h *Handler) Run(ctx context.Context, raw []byte) (res Result, err error) {
	o, finish := obs.Begin(h.log, h.metrics, h.cfg.MetricsNamespace, "terminate", h.cfg.Cluster)
	defer func() { finish(ctx, res.Outcome, err) }()
	ev, ok, why, err := lifecycle.Accept(ctx, o.Log, raw, h.cfg.ASGName, lifecycle.DetailTypeTerminate, lifecycle.TransitionTerminate)
	if err != nil {
		return Result{Outcome: OutcomeMalformed, Slot: -1, Reason: why}, err
	}
	if !ok {
		return Result{Outcome: OutcomeIgnored, Slot: -1, Reason: why}, nil
	}
	o = o.With(obs.KeyInstance, ev.Action.EC2InstanceID, obs.KeyEvent, ev.ID)
	inv := &invocation{Handler: h, o: o}
	inv.store = lease.NewStore(h.db, h.cfg.Table, h.cfg.Cluster)
	inv.store.Actor = obs.Actor(ctx, "terminate")
	inv.res = resources.New(h.cfg, h.ec2, h.Poll, o.Log)
	inv.actions = &lifecycle.Actions{API: h.asg, Action: ev.Action, Log: o.Log}

	stop := inv.actions.KeepAlive(ctx, h.HeartbeatInterval)
	res, err = inv.run(ctx)
	stop()
	if err != nil {
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
		if err := inv.complete(ctx); err != nil {
			return Result{}, err
		}
		inv.o.Log.InfoContext(ctx, "instance holds no slot; nothing to hand back", obs.KeyOutcome, OutcomeNoSlot)
		return Result{Outcome: OutcomeNoSlot, Slot: -1}, nil
	}
	inv.o = inv.o.With(obs.KeySlot, l.Slot, obs.KeyLeaseVersion, l.Version)
	broker := int32(inv.cfg.NodeID(l.Slot))
	res := Result{Outcome: OutcomeReleased, Slot: l.Slot}

	// 2. Planned or not.
	var why string
	err = inv.o.Step(ctx, "classify", func(ctx context.Context) error {
		var err error
		res.Planned, why, err = inv.classify(ctx, id)
		return err
	})
	if err != nil {
		return Result{}, err
	}
	res.Reason = why
	inv.o.Log.InfoContext(ctx, "termination classified", "planned", res.Planned, obs.KeyReason, why)

	// 3. Planned and not yet draining: wait until Kafka can lose this broker.
	if res.Planned && l.State != lease.Draining && inv.Kafka != nil {
		err := inv.o.Step(ctx, "safety", func(ctx context.Context) error {
			w := kafka.Wait{First: inv.SafetyRecheck, Max: 2 * time.Minute, Bound: inv.SafetyMaxWait}
			wr, err := w.Until(ctx, func(ctx context.Context) (kafka.Verdict, error) {
				v, err := inv.Kafka.RemovalSafe(ctx, broker)
				if err != nil || !v.Safe {
					inv.o.Log.WarnContext(ctx, "removal not safe yet; waiting", obs.KeyReason, describe(v, err))
				}
				return v, err
			})
			res.SafetyChecks = wr.Checks
			if err != nil {
				return err
			}
			v, waited, forced := wr.Verdict, wr.Waited, wr.Forced
			inv.o.Log.InfoContext(ctx, "removal safety", "safe", v.Safe, "checks", wr.Checks, "forced", forced, obs.KeyReason, v.String())
			inv.o.Metrics.Duration("SafetyWait", waited)
			if forced {
				res.Forced = true
				inv.o.Metrics.Count("UnsafeTerminationsForced", 1)
				msg := fmt.Sprintf("broker %d (slot %d, instance %s) is leaving after %s although removal is not safe: %s",
					broker, l.Slot, id, waited.Round(time.Second), describe(v, wr.Err))
				if err := inv.Alerts.Send(ctx, inv.o.Log, "unsafe termination forced", msg); err != nil {
					inv.o.Log.WarnContext(ctx, "alert not sent", obs.KeyErr, err.Error())
				}
			}
			return nil
		})
		if err != nil {
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

	// 5. Controlled shutdown of a planned leaver, then confirm it left the cluster.
	if res.Planned {
		if err := inv.shutdown(ctx, id, broker); err != nil {
			return Result{}, err
		}
	}

	// 6. Detach the slot's volume and ENI so the replacement can attach them at once.
	err = inv.o.Step(ctx, "detach", func(ctx context.Context) error {
		n, err := inv.res.DetachFrom(ctx, *l, id, resources.PlainThenForce)
		inv.o.Log.InfoContext(ctx, "detached slot resources", "detached", n)
		return err
	})
	if err != nil {
		return Result{}, err
	}

	// 7. Release the lease (fenced) and CONTINUE.
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
	if err := inv.complete(ctx); err != nil {
		return Result{}, err
	}
	inv.o.Log.InfoContext(ctx, "slot handed back", obs.KeyOutcome, OutcomeReleased, "planned", res.Planned, "forced", res.Forced)
	return res, nil
}

// movedOn handles a fenced write: the slot is no longer this instance's (a reconcile
// released it, or an earlier delivery did). Nothing of the slot is ours to touch.
func (inv *invocation) movedOn(ctx context.Context, res Result, err error) (Result, error) {
	inv.o.Log.InfoContext(ctx, "the slot moved on; completing", obs.KeyReason, err.Error())
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

// shutdown stops the broker over SSM and waits, bounded, until it has left the
// cluster metadata. Neither failing is fatal: the instance is leaving either way, and
// the detach that follows escalates to force if the broker still holds the volume.
func (inv *invocation) shutdown(ctx context.Context, id string, broker int32) error {
	_ = inv.o.Step(ctx, "stop-broker", func(ctx context.Context) error {
		r := &remote.Runner{SSM: inv.ssm, Timeout: inv.cfg.SSMTimeout, Poll: inv.SSMPoll}
		_, err := r.Run(ctx, id, fmt.Sprintf("slotkeeper: controlled shutdown of broker %d", broker), []string{inv.cfg.StopCommand})
		return err
	})
	if inv.Kafka == nil {
		return nil
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
	return nil
}

func (inv *invocation) complete(ctx context.Context) error {
	return inv.o.Step(ctx, "complete-CONTINUE", func(ctx context.Context) error {
		_, err := inv.actions.Complete(ctx, lifecycle.Continue)
		return err
	})
}

// classify asks EC2 and the Auto Scaling group why the instance is leaving.
func (inv *invocation) classify(ctx context.Context, id string) (bool, string, error) {
	in, found, err := inv.res.DescribeInstance(ctx, id)
	if err != nil {
		return false, "", err
	}
	state := slot.Gone
	if found {
		state = in.State
	}
	var health, cause string
	out, err := inv.asg.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return false, "", fmt.Errorf("describing %s in its Auto Scaling group: %w", id, err)
	}
	if len(out.AutoScalingInstances) > 0 {
		health = aws.ToString(out.AutoScalingInstances[0].HealthStatus)
	}
	acts, err := inv.asg.DescribeScalingActivities(ctx, &autoscaling.DescribeScalingActivitiesInput{
		AutoScalingGroupName: aws.String(inv.cfg.ASGName), MaxRecords: aws.Int32(50),
	})
	if err != nil {
		return false, "", fmt.Errorf("describing scaling activities of %s: %w", inv.cfg.ASGName, err)
	}
	for _, a := range acts.Activities {
		if strings.Contains(aws.ToString(a.Description), id) {
			cause = aws.ToString(a.Cause)
			break
		}
	}
	planned, why := Planned(state, health, cause)
	return planned, why, nil
}

// Planned decides from the instance's EC2 state, its Auto Scaling health status and
// the cause of the scaling activity that terminates it whether the termination is
// planned (a healthy broker leaving for scale-in, instance refresh, rebalancing, an
// operator's request) or not (an unhealthy or already-failed instance). Only planned
// terminations wait for removal safety and get a controlled shutdown: an unplanned
// one has already left Kafka, or cannot be helped by waiting.
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

func orGone(s string) string {
	if s == slot.Gone {
		return "gone"
	}
	return s
}
