// Package launch turns a newly launched instance into broker N: it claims a slot in the
// instance's AZ, attaches the slot's ENI and data volume, tags the instance with its
// identity, binds the lease and completes the launch lifecycle action.
//
// Every path ends the lifecycle action exactly once, with CONTINUE when the instance is
// now a slot's broker or ABANDON when it cannot become one (the ASG then replaces it).
// The one exception is an error a retry may fix (throttling past the SDK's retries, a
// 5xx, a crash): Handle returns it, Lambda redelivers the event, and the redelivery
// resumes where the last attempt stopped, because every step is idempotent. Should
// every retry fail, the hook's default result (ABANDON) applies when it times out.
package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/alert"
	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/lifecycle"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// Outcomes of one invocation (metric dimension Outcome and log field outcome).
const (
	OutcomeContinue  = "continue"
	OutcomeAbandon   = "abandon"
	OutcomeIgnored   = "ignored"
	OutcomeMalformed = "malformed"
	OutcomeRetry     = "retry"
)

// MetricFollowerFailures counts followers (dimension Follower: dns, alarm) that failed
// after a bind in ENI mode, where the launch continues without them.
const MetricFollowerFailures = "FollowerFailures"

// Handler handles launch lifecycle events. Build it with New; the zero value is not usable.
type Handler struct {
	cfg     config.Config
	ec2     awsapi.EC2
	asg     awsapi.AutoScaling
	db      awsapi.DynamoDB
	log     *slog.Logger
	metrics io.Writer

	// Poll bounds and paces every wait for an instance, volume or ENI.
	Poll resources.Poll
	// HeartbeatInterval is how often a running invocation extends the lifecycle action.
	HeartbeatInterval time.Duration
	// Order ranks claim candidates (slot.Rendezvous).
	Order slot.Order
	// Alerts tells the operator of a slot whose recorded volume or ENI is gone,
	// malformed, tagged for another slot or unusable (nil: the log and the
	// IdentityAlerts metric only).
	Alerts *alert.Notifier
	// HandoverMaxWait bounds the wait for a leaving holder to release a slot of the
	// instance's AZ; HandoverReserve is the time the rest of the launch needs after it
	// (the wait also ends that long before the invocation's deadline).
	HandoverMaxWait, HandoverReserve time.Duration
	// Followers keep things that follow a slot's holder (its disk alarm, its DNS
	// records) in step once the slot is bound, before CONTINUE.
	Followers []Follower

	mu     sync.Mutex
	subnet map[string]string // subnet id -> AZ, learnt once per container
}

// Bound describes a slot that an instance has just become the broker of.
type Bound struct {
	Lease    lease.Lease // bound: Slot, Version, Holder, ENIID, VolumeID, IP
	NodeID   int
	AZ       string
	Instance resources.Instance
	// Moved is true when this invocation's bind moved the slot to this holder: what
	// follows the slot cannot point at the holder yet (a follower may skip reading
	// what it would change). False for a redelivery that found the slot bound.
	Moved bool
}

// A Follower is told when a slot is bound to a new holder, so that what follows the
// slot (its disk alarm, its DNS records) points at the new holder before the instance
// is put in service. SlotBound must be idempotent: a redelivered event calls it again.
// An error is retried by redelivering the event.
type Follower interface {
	Name() string
	SlotBound(ctx context.Context, b Bound) error
}

// New returns a launch handler. metrics receives the embedded-metric-format lines
// (os.Stdout in Lambda).
func New(cfg config.Config, ec2 awsapi.EC2, asg awsapi.AutoScaling, db awsapi.DynamoDB, log *slog.Logger, metrics io.Writer) *Handler {
	return &Handler{
		cfg: cfg, ec2: ec2, asg: asg, db: db, log: log, metrics: metrics,
		Poll:              resources.Poll{Initial: time.Second, Max: 10 * time.Second, Timeout: cfg.AttachTimeout},
		HeartbeatInterval: cfg.HeartbeatInterval,
		Order:             slot.Rendezvous,
		HandoverMaxWait:   cfg.HandoverMaxWait,
		// ENI detach and attach, volume detach and attach, and 3 minutes for the
		// rest (see the template's time budgets).
		HandoverReserve: 4*cfg.AttachTimeout + 3*time.Minute,
	}
}

// Result says what one invocation did.
type Result struct {
	Outcome string `json:"outcome"`
	Slot    int    `json:"slot"` // -1 when no slot is involved
	Reason  string `json:"reason,omitempty"`
}

// Invoke is the Lambda entry point (it makes Handler a lambda.Handler): it takes the
// raw event, so that even a payload that is not JSON gets a clear error and log line,
// and answers with the Result as JSON for whoever invoked it by hand.
func (h *Handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return app.Respond(h.Run(ctx, payload))
}

// invocation is the state of one Run.
type invocation struct {
	*Handler
	o       *obs.Obs
	store   *lease.Store
	res     *resources.Manager
	actions *lifecycle.Actions
	inst    resources.Instance
}

// Run handles one event and reports what it did. A returned error means the event should
// be delivered again (transient failure) or was malformed; no lifecycle action was
// completed by an invocation that returns an error.
func (h *Handler) Run(ctx context.Context, raw []byte) (res Result, err error) {
	o, finish := obs.Begin(h.log, h.metrics, h.cfg.MetricsNamespace, "launch", h.cfg.Cluster)
	defer func() { finish(ctx, res.Outcome, err) }()

	ev, ok, why, err := lifecycle.Accept(ctx, o.Log, raw, lifecycle.Filter{
		ASG: h.cfg.ASGName, Hook: h.cfg.LaunchHook, DetailType: lifecycle.DetailTypeLaunch, Transition: lifecycle.TransitionLaunch,
	})
	if err != nil {
		return Result{Outcome: OutcomeMalformed, Slot: -1, Reason: why}, err
	}
	if !ok {
		return Result{Outcome: OutcomeIgnored, Slot: -1, Reason: why}, nil
	}
	o = o.With(obs.KeyInstance, ev.Action.EC2InstanceID, obs.KeyEvent, ev.ID)
	inv := &invocation{Handler: h, o: o}
	inv.store = lease.NewStore(h.db, h.cfg.Table, h.cfg.Cluster)
	inv.store.Actor = obs.Actor(ctx, "launch")
	inv.res = resources.New(h.cfg, h.ec2, h.Poll, o.Log)
	inv.actions = &lifecycle.Actions{API: h.asg, Action: ev.Action, Log: o.Log}
	inv.res.Detach.Leaving = inv.leavingInstance

	// First a heartbeat: an event delivered after its action was completed or expired
	// (Lambda keeps events up to an hour, the hook waits 15 minutes) must not claim or
	// attach anything for an instance whose fate is decided.
	if err := inv.actions.Active(ctx); errors.Is(err, lifecycle.ErrNotActive) {
		why := err.Error() + " (it was completed or has expired: the instance's fate is decided)"
		o.Log.InfoContext(ctx, "ignoring event", obs.KeyOutcome, OutcomeIgnored, obs.KeyReason, why)
		return Result{Outcome: OutcomeIgnored, Slot: -1, Reason: why}, nil
	} else if err != nil {
		o.Log.WarnContext(ctx, "launch failed; the event will be retried", obs.KeyOutcome, OutcomeRetry, obs.KeyErr, err.Error())
		return Result{}, err
	}
	res, err = inv.run(ctx)
	if err != nil {
		o.Log.WarnContext(ctx, "launch failed; the event will be retried", obs.KeyOutcome, OutcomeRetry, obs.KeyErr, err.Error())
	}
	return res, err
}

func (inv *invocation) run(ctx context.Context) (Result, error) {
	id := inv.actions.Action.EC2InstanceID

	// 1. Read the leases, and describe the instance together with the leases' holders
	// (one request: the claim needs their state), waiting for the instance to be
	// running (attachments need it).
	var found bool
	var first *slot.Read
	err := inv.o.Step(ctx, "describe-instance", func(ctx context.Context) error {
		leases, err := inv.store.List(ctx)
		if err != nil {
			return err
		}
		var states map[string]string
		inv.inst, found, states, err = inv.res.DescribeWith(ctx, id, slot.Holders(leases, id))
		if err != nil || !found || inv.inst.State != slot.Pending {
			first = &slot.Read{Leases: leases, States: states}
			return err
		}
		// Still pending: by the time it runs, the leases are read again by the claim.
		stop := inv.actions.KeepAlive(ctx, inv.HeartbeatInterval)
		defer stop()
		return inv.res.WaitInstance(ctx, id, func(i resources.Instance) bool { return i.State != slot.Pending }, &inv.inst)
	})
	if err != nil {
		return Result{}, err
	}
	if !found || inv.inst.State != slot.Running {
		return inv.abandon(ctx, nil, fmt.Sprintf("instance %s is %s, not running", id, orGone(found, inv.inst.State)))
	}

	// 2. Which slots live in the instance's AZ.
	azSlots, err := inv.slotsIn(ctx, inv.inst.AZ)
	if errors.Is(err, resources.ErrPermanent) {
		return inv.abandon(ctx, nil, err.Error())
	}
	if err != nil {
		return Result{}, err
	}
	if len(azSlots) == 0 {
		return inv.abandon(ctx, nil, fmt.Sprintf("no slot lives in %s (check SLOTKEEPER_SUBNETS and the ASG's subnets)", inv.inst.AZ))
	}

	// 3. Claim a slot (or find the one this instance already holds).
	claimer := &slot.Claimer{
		Store: inv.store, States: inv.res.InstanceStates, Order: inv.Order, First: first,
		Peers: func(ctx context.Context, az string) ([]string, error) {
			return inv.res.GroupInstances(ctx, inv.cfg.ASGName, az)
		},
		Group: inv.membership,
	}
	var c slot.Claimed
	err = inv.o.Step(ctx, "claim", func(ctx context.Context) error {
		var err error
		c, err = claimer.Claim(ctx, id, inv.inst.AZ, azSlots, "launch of "+id)
		return err
	})
	inv.o.Metrics.Count("ClaimWrites", float64(c.Writes))
	if errors.Is(err, slot.ErrNoFreeSlot) || errors.Is(err, slot.ErrHandover) {
		// No claimable slot, or a slot whose holder is leaving is this instance's to
		// take: wait for it (a handover).
		c, err = inv.handover(ctx, claimer, azSlots, c, err)
	}
	if errors.Is(err, slot.ErrNoFreeSlot) {
		return inv.abandon(ctx, nil, err.Error())
	}
	if err != nil {
		return Result{}, err
	}
	l := c.Lease
	inv.o = inv.o.With(obs.KeySlot, l.Slot, obs.KeyLeaseVersion, l.Version)
	inv.o.Log.InfoContext(ctx, "holding slot", "reused", c.Reused, obs.KeyReason, c.Reason, "writes", c.Writes)

	// 4–6. Attach, tag, bind. Each step is idempotent; a redelivery resumes here.
	claimed := l
	var moved bool
	if l, moved, err = inv.becomeBroker(ctx, l); err != nil && (errors.Is(err, lease.ErrFenced) || errors.Is(err, lease.ErrRecordConflict)) {
		// A concurrent delivery of the same event may have bound the slot to this
		// instance meanwhile: then only the tags, the followers and the completion are
		// left.
		if cur, gerr := inv.store.Get(ctx, claimed.Slot); gerr == nil && cur.State == lease.Bound &&
			cur.Holder == claimed.Holder && cur.Version == claimed.Version {
			inv.o.Log.InfoContext(ctx, "another delivery of this event bound the slot; carrying on", obs.KeyReason, err.Error())
			l, err = cur, inv.tagInstance(ctx, cur)
		}
	}
	if err != nil {
		if ie := (*resources.IdentityError)(nil); errors.As(err, &ie) {
			inv.identityAlert(ctx, ie)
		}
		if errors.Is(err, resources.ErrPermanent) || errors.Is(err, lease.ErrFenced) || errors.Is(err, lease.ErrRecordConflict) {
			return inv.abandon(ctx, &l, err.Error())
		}
		return Result{}, err
	}

	// 7. Point what follows the slot at its new holder. In ENI mode the slot's name
	// and address do not change with its holder, so a follower that fails (Route 53
	// or CloudWatch throttled by someone else's load) does not keep the broker out of
	// service: it is logged, counted and left to the reconciler, which repairs DNS
	// records and disk alarms on every run. In instance mode the slot's address is
	// the new holder's, and clients would be sent to the old one: it stays fatal.
	for _, f := range inv.Followers {
		err := inv.o.Step(ctx, "follow-"+f.Name(), func(ctx context.Context) error {
			return f.SlotBound(ctx, Bound{Lease: l, NodeID: inv.cfg.NodeID(l.Slot), AZ: inv.inst.AZ, Instance: inv.inst, Moved: moved})
		})
		if err != nil && inv.cfg.ENI {
			inv.o.Metrics.Count(MetricFollowerFailures, 1, "Follower", f.Name())
			inv.o.Log.WarnContext(ctx, "follower failed; continuing, the reconciler repairs it", "follower", f.Name(), obs.KeyErr, err.Error())
			continue
		}
		if err != nil {
			return Result{}, fmt.Errorf("%s after binding slot %d: %w", f.Name(), l.Slot, err)
		}
	}

	// 8. CONTINUE.
	if err := inv.complete(ctx, lifecycle.Continue); err != nil {
		return Result{}, err
	}
	inv.o.Log.InfoContext(ctx, "instance is now the slot's broker", obs.KeyOutcome, OutcomeContinue,
		"node_id", inv.cfg.NodeID(l.Slot), "eni", l.ENIID, "ip", l.IP, "volume", l.VolumeID)
	return Result{Outcome: OutcomeContinue, Slot: l.Slot, Reason: c.Reason}, nil
}

// handover waits for a slot of azSlots whose holder is leaving (slot.Leaving: its
// lease is draining, or its instance is stopping, shutting down or being terminated
// by its group) to be released, and claims it. The claimer decides: it answers
// slot.ErrHandover while this instance is to wait for a leaving holder although a
// free slot exists (a free slot is another broker's identity, or a new empty broker:
// the replacement of a leaving broker takes the leaving broker's slot), and claims a
// free slot once the leaving slots are spoken for by other launches. It sends
// heartbeats while it waits, and waits at most HandoverMaxWait, and never into the
// HandoverReserve before the invocation's deadline. It returns slot.ErrNoFreeSlot at
// once when no holder is leaving and no slot is free: every slot of the AZ is held by
// a healthy broker in service, or being claimed by another launch (the caller
// abandons). When the wait ends without a release, it returns a retryable error, and
// never falls back to a free slot: Lambda delivers the event again and the wait goes
// on while the lifecycle action is alive (when it expires, the hook's default result,
// ABANDON, ends it and the group launches another instance).
func (inv *invocation) handover(ctx context.Context, claimer *slot.Claimer, azSlots []int, c slot.Claimed, err error) (slot.Claimed, error) {
	id := inv.inst.ID
	start := time.Now()
	deadline := start.Add(inv.HandoverMaxWait)
	if d, ok := ctx.Deadline(); ok && d.Add(-inv.HandoverReserve).Before(deadline) {
		deadline = d.Add(-inv.HandoverReserve)
	}
	stop := inv.actions.KeepAlive(ctx, inv.HeartbeatInterval)
	defer stop()
	delay := max(inv.Poll.Initial, 10*time.Millisecond)
	waited := false
	defer func() {
		if waited {
			inv.o.Metrics.Duration("HandoverWait", time.Since(start))
		}
	}()
	var logged string
	for {
		leaving, why := c.Leaving, c.Why
		if len(leaving) == 0 {
			return c, fmt.Errorf("%w; no holder is leaving: %s", err, why)
		}
		if why != logged {
			msg := "no free slot; waiting for a leaving holder to hand its slot over"
			if errors.Is(err, slot.ErrHandover) {
				msg = "a holder of the AZ is leaving; waiting for its slot rather than claiming a free one"
			}
			inv.o.Log.InfoContext(ctx, msg, "slots", leaving, obs.KeyReason, why, "until", deadline.UTC().Format(time.RFC3339))
			logged = why
		}
		waited = true
		if !time.Now().Before(deadline) {
			return c, fmt.Errorf("slot %v of %s: its holder is leaving but has not released it after %s (%s); the event will be retried",
				leaving, inv.inst.AZ, time.Since(start).Round(time.Second), why)
		}
		// Until the next full round (the leases, the holders' EC2 and group state),
		// watch the AZ's leases alone, once every Poll.Initial: a release (or any move
		// of those leases) starts the next round at once.
		if err := inv.watchLeases(ctx, c.Taken, delay, deadline); err != nil {
			return c, err
		}
		delay = min(delay*3/2, max(inv.Poll.Max, 10*time.Millisecond))
		err = inv.o.Step(ctx, "claim", func(ctx context.Context) error {
			var err error
			c, err = claimer.Claim(ctx, id, inv.inst.AZ, azSlots, "handover to "+id)
			return err
		})
		inv.o.Metrics.Count("ClaimWrites", float64(c.Writes))
		if err == nil {
			inv.o.Metrics.Count("Handovers", 1)
			inv.o.Log.InfoContext(ctx, "handover: the leaving holder released the slot", obs.KeySlot, c.Lease.Slot,
				"waited_ms", time.Since(start).Milliseconds())
			return c, nil
		}
		if !errors.Is(err, slot.ErrNoFreeSlot) && !errors.Is(err, slot.ErrHandover) {
			return c, err
		}
	}
}

// watchLeases waits about wait (jittered), or until deadline, reading the cluster's
// leases every Poll.Initial (one consistent Query) meanwhile, and returns early once a
// lease of taken (the AZ's slots a claim found taken) has moved: another version,
// state or holder. The next claim round then follows at once instead of after a long
// pause: a handover is noticed within about a second of the release, while EC2 and
// Auto Scaling are still asked at most once per wait.
func (inv *invocation) watchLeases(ctx context.Context, taken []lease.Lease, wait time.Duration, deadline time.Time) error {
	until := time.Now().Add(wait/2 + rand.N(wait/2+1))
	if until.After(deadline) {
		until = deadline
	}
	tick := max(inv.Poll.Initial, 10*time.Millisecond)
	for {
		pause := min(tick/2+rand.N(tick/2+1), time.Until(until))
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for a handover: %w", ctx.Err())
		case <-time.After(max(pause, 0)):
		}
		if !time.Now().Before(until) {
			return nil
		}
		leases, err := inv.store.List(ctx)
		if err != nil {
			return err
		}
		for _, was := range taken {
			i := slices.IndexFunc(leases, func(l lease.Lease) bool { return l.Slot == was.Slot })
			if i < 0 || leases[i].Version != was.Version || leases[i].State != was.State || leases[i].Holder != was.Holder {
				return nil
			}
		}
	}
}

// membership describes instances in their Auto Scaling group, for the claim (which
// holders are leaving, which peers are being launched).
func (inv *invocation) membership(ctx context.Context, ids []string) (map[string]slot.Membership, error) {
	group, err := lifecycle.DescribeGroupInstances(ctx, inv.asg, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]slot.Membership, len(group))
	for id, g := range group {
		out[id] = slot.Membership{Lifecycle: g.LifecycleState, Health: g.HealthStatus}
	}
	return out, nil
}

// leavingInstance tells the attach of a slot resource whether the running instance
// it is still attached to is on its way out of its group (resources.DetachPolicy).
func (inv *invocation) leavingInstance(ctx context.Context, id string) (bool, string, error) {
	group, err := lifecycle.DescribeGroupInstances(ctx, inv.asg, []string{id})
	if err != nil {
		return false, "", err
	}
	g, ok := group[id]
	if !ok {
		return false, id + " is in no Auto Scaling group", nil
	}
	return slot.LeavingGroup(g.LifecycleState, g.HealthStatus), fmt.Sprintf("%s is %s (%s) in group %s", id, g.LifecycleState, g.HealthStatus, g.Group), nil
}

// becomeBroker attaches the slot's ENI and volume, binds the lease and tags the
// instance. It reports whether it moved the lease to bound itself (moved: nothing that
// follows the slot can point at this holder yet). On a fencing or permanent error it
// returns the lease it holds, for release.
//
// The claim has just read the lease (or written it): that is the check before the
// first create or attach. A create is followed by the record of what it made (a fenced
// write, the check before the attaches); a wait inside an attach (for a previous
// holder to let the resource go, for a new volume to be available) is followed by a
// fresh check (fence) before the attach. The tags follow the bind, itself a fenced
// write.
func (inv *invocation) becomeBroker(ctx context.Context, l lease.Lease) (lease.Lease, bool, error) {
	if l.State == lease.Bound {
		// A redelivery after the bind: only the tags (written after the bind) may be
		// missing, then the followers and the completion.
		return l, false, inv.tagInstance(ctx, l)
	}
	if l.State != lease.Claimed {
		// The check the claim's read is: the lease must still be claimed by this
		// instance. A redelivery whose slot is draining meanwhile (a termination is
		// handing it back) creates and attaches nothing.
		return l, false, fmt.Errorf("slot %d is %s at version %d held by %s, not claimed: %w", l.Slot, l.State, l.Version, l.Holder, lease.ErrFenced)
	}
	id, az, s := inv.inst.ID, inv.inst.AZ, l.Slot
	stop := inv.actions.KeepAlive(ctx, inv.HeartbeatInterval)
	defer stop()

	// The slot's ENI and volume: the recorded ones, described by id; on first use,
	// found by their tags or created, and recorded at once, together.
	var e resources.ENI
	var v resources.Volume
	err := inv.o.Step(ctx, "resources", func(ctx context.Context) error {
		for {
			var ids lease.IDs
			if inv.cfg.ENI {
				found, unrecorded, _, err := inv.res.FindENI(ctx, l, inv.cfg.SubnetOf(s))
				if err != nil {
					return err
				}
				e = found
				if unrecorded {
					ids.ENIID, ids.IP = e.ID, e.IP
				}
			}
			found, unrecorded, _, err := inv.res.FindVolume(ctx, l, az)
			if err != nil {
				return err
			}
			v = found
			if unrecorded {
				ids.VolumeID = v.ID
			}
			if ids == (lease.IDs{}) {
				return nil
			}
			rec, err := inv.store.RecordIDs(ctx, l, ids, recordReason(ids))
			if errors.Is(err, lease.ErrRecordConflict) && rec.Version == l.Version && rec.Holder == l.Holder {
				// Another delivery of this event recorded other ids first: go on with those.
				inv.o.Log.InfoContext(ctx, "another delivery recorded the slot's resources first: using them",
					"recorded_eni", rec.ENIID, "recorded_volume", rec.VolumeID, "found_eni", ids.ENIID, "found_volume", ids.VolumeID)
				l = rec
				continue
			}
			if err != nil {
				return err
			}
			l = rec
			if ids.VolumeID != "" {
				// A volume found by its tags may carry the mark of an earlier claim.
				return inv.res.SettleMark(ctx, l, &v)
			}
			return nil
		}
	})
	if err != nil {
		return l, false, err
	}

	// Attach both, then wait for both attachments together.
	inv.res.Recheck = func(ctx context.Context) error { return inv.fence(ctx, l) }
	var b lease.Binding
	err = inv.o.Step(ctx, "attach", func(ctx context.Context) error {
		if inv.cfg.ENI {
			var err error
			if e, err = inv.res.StartAttachENI(ctx, e, id, az); err != nil {
				return err
			}
			b.ENIID, b.IP = e.ID, e.IP
		} else {
			b.IP = inv.inst.PrivateIP
		}
		var err error
		if v, err = inv.res.StartAttachVolume(ctx, v, id, az, inv.cfg.Volume.Device); err != nil {
			return err
		}
		b.VolumeID = v.ID
		return inv.res.WaitAttached(ctx, id, b.ENIID, b.VolumeID)
	})
	if err != nil {
		return l, false, err
	}
	var bound lease.Lease
	err = inv.o.Step(ctx, "bind", func(ctx context.Context) error {
		var err error
		bound, err = inv.store.Bind(ctx, l, b, fmt.Sprintf("%s attached ENI %s (%s) and volume %s", id, b.ENIID, b.IP, b.VolumeID))
		return err
	})
	if err != nil {
		return l, false, err
	}
	return bound, true, inv.tagInstance(ctx, bound)
}

// recordReason is the history entry of a record of ids.
func recordReason(ids lease.IDs) string {
	switch {
	case ids.ENIID != "" && ids.VolumeID != "":
		return fmt.Sprintf("recorded ENI %s (%s) and volume %s as the slot's", ids.ENIID, ids.IP, ids.VolumeID)
	case ids.ENIID != "":
		return fmt.Sprintf("recorded ENI %s (%s) as the slot's", ids.ENIID, ids.IP)
	}
	return fmt.Sprintf("recorded volume %s as the slot's", ids.VolumeID)
}

// tagInstance gives the instance its slot identity, the bound lease l's, unless its
// description already shows exactly those tags (a redelivery).
func (inv *invocation) tagInstance(ctx context.Context, l lease.Lease) error {
	want := resources.IdentityTags(inv.cfg.Cluster, l.Slot, inv.cfg.NodeID(l.Slot), l.Version)
	if resources.HasTags(inv.inst.Tags, want) {
		return nil
	}
	return inv.o.Step(ctx, "tag-instance", func(ctx context.Context) error {
		if err := inv.res.TagInstance(ctx, inv.inst.ID, l.Slot, inv.cfg.NodeID(l.Slot), l.Version); err != nil {
			return err
		}
		if inv.inst.Tags == nil {
			inv.inst.Tags = map[string]string{}
		}
		for k, v := range want {
			inv.inst.Tags[k] = v
		}
		return nil
	})
}

// identityAlert tells the operator that the slot's recorded volume or ENI is gone,
// malformed, tagged for another slot or unusable (another AZ or subnet): the launch
// abandons rather than give the slot a new, blank identity, and every replacement does
// the same until an operator acts.
func (inv *invocation) identityAlert(ctx context.Context, ie *resources.IdentityError) {
	inv.o.Metrics.Count("IdentityAlerts", 1, "Kind", ie.Kind, "Problem", ie.Problem)
	msg := fmt.Sprintf("slot %d (broker %d): the launch of %s is abandoned, and so will be every replacement until an operator acts: %s",
		ie.Slot, inv.cfg.NodeID(ie.Slot), inv.inst.ID, ie.Msg)
	if aerr := inv.Alerts.Send(ctx, inv.o.Log, fmt.Sprintf("slot %d %s %s %s", ie.Slot, ie.Kind, ie.ID, ie.Problem), msg); aerr != nil {
		inv.o.Log.WarnContext(ctx, "alert not sent", obs.KeyErr, aerr.Error())
	}
}

// fence checks that l is still the slot's current lease, claimed by this instance,
// before a create or attach made on its behalf, so that a late retry of an old
// invocation never acts on a slot that moved on, nor on one that is being handed back
// (draining).
func (inv *invocation) fence(ctx context.Context, l lease.Lease) error {
	cur, err := inv.store.Get(ctx, l.Slot)
	if err != nil {
		return err
	}
	if cur.Version != l.Version || cur.Holder != l.Holder || cur.State != lease.Claimed {
		return fmt.Errorf("slot %d is now at version %d held by %q (%s), not version %d held by %s: %w",
			l.Slot, cur.Version, cur.Holder, cur.State, l.Version, l.Holder, lease.ErrFenced)
	}
	return nil
}

// abandon gives up on the instance: it completes the action with ABANDON, so the ASG
// replaces the instance, and then gives back what this instance got of the slot
// (detach, release the lease, fenced).
//
// The completion comes first. If it finds no pending action, another delivery of the
// same event has completed it already, perhaps with CONTINUE after succeeding where
// this one failed, and the slot is then not ours to give back. If this invocation dies
// between the completion and the give-back, the claim is left to an instance that is
// going away; it becomes claimable as soon as that instance stops running.
func (inv *invocation) abandon(ctx context.Context, l *lease.Lease, reason string) (Result, error) {
	res := Result{Outcome: OutcomeAbandon, Slot: -1, Reason: reason}
	var done bool
	err := inv.o.Step(ctx, "complete-"+lifecycle.Abandon, func(ctx context.Context) error {
		var err error
		done, err = inv.actions.Complete(ctx, lifecycle.Abandon)
		return err
	})
	if err != nil {
		return Result{}, err
	}
	inv.o.Log.WarnContext(ctx, "abandoned launch: the Auto Scaling group will replace the instance",
		obs.KeyOutcome, OutcomeAbandon, obs.KeyReason, reason, "completed", done)
	inv.o.Metrics.Count("Abandons", 1)
	id := inv.actions.Action.EC2InstanceID
	if !done || l == nil || !l.HeldBy(id) {
		return res, nil
	}
	res.Slot = l.Slot
	err = inv.o.Step(ctx, "give-back", func(ctx context.Context) error {
		if _, err := inv.res.DetachFrom(ctx, *l, id, resources.Plain); err != nil {
			inv.o.Log.WarnContext(ctx, "could not detach the slot's resources; the next holder will once this instance is gone", obs.KeyErr, err.Error())
		}
		_, err := inv.store.Release(ctx, *l, "abandoned launch: "+reason)
		if errors.Is(err, lease.ErrFenced) {
			return nil // the slot has already moved on: nothing of ours to release
		}
		return err
	})
	if err != nil {
		// The action is completed: retrying the event would find nothing to do. The
		// claim is left to an instance that is going away (see above).
		inv.o.Log.WarnContext(ctx, "could not release the claim of an abandoned instance", obs.KeyErr, err.Error())
	}
	return res, nil
}

func (inv *invocation) complete(ctx context.Context, result string) error {
	return inv.o.Step(ctx, "complete-"+result, func(ctx context.Context) error {
		_, err := inv.actions.Complete(ctx, result)
		return err
	})
}

// slotsIn returns the slots whose subnet is in az. Subnet AZs never change, so they
// are looked up once per container.
func (inv *invocation) slotsIn(ctx context.Context, az string) ([]int, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.subnet == nil {
		azs, err := inv.res.SubnetAZs(ctx, inv.cfg.Subnets)
		if err != nil {
			return nil, err
		}
		inv.subnet = azs
	}
	var slots []int
	for s := 0; s < inv.cfg.SlotCount; s++ {
		if inv.subnet[inv.cfg.SubnetOf(s)] == az {
			slots = append(slots, s)
		}
	}
	return slots, nil
}

func orGone(found bool, state string) string {
	if !found {
		return "gone"
	}
	return state
}
