package asgsim

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/slotkeeper/slotkeeper/test/emulator"
)

// OpKind is what an operation of a plan does.
type OpKind int

// The operations. World operations change the group or the brokers; fault operations
// arm a fault that the next matching call, event or command meets.
const (
	// ScaleOut raises the desired capacity by N (at most to the slot count).
	ScaleOut OpKind = iota
	// ScaleIn lowers the desired capacity by N (at least to 1): the group terminates
	// N instances in service at once (the AZ with the most first).
	ScaleIn
	// HealthReplace marks an instance in service unhealthy: the group terminates it
	// and launches its replacement at the same time.
	HealthReplace
	// Refresh starts an instance refresh, terminate first (MinHealthyPercentage 66,
	// MaxHealthyPercentage 100): one instance at a time is terminated, then replaced,
	// and the next waits until the replacement is in service.
	Refresh
	// Evict runs `slotctl evict <slot> --yes` on a bound slot: the real command,
	// against the proxy (TerminateInstanceInAutoScalingGroup, no decrement).
	Evict
	// BrokerDies kills an instance with no lifecycle hook (a hardware failure): it is
	// terminated at once and its broker crashes; the group notices later, marks it
	// unhealthy and replaces it.
	BrokerDies
	// KafkaGone kills the broker process of a running instance in service: EC2 still
	// says running. With Restart set, systemd starts it again after a while.
	KafkaGone
	// GrowAlarm fires a bound slot's disk alarm (its action invokes grow).
	GrowAlarm
	// LookAlike makes a copy of a slot's volume with the slot's tags (a backup tool
	// that copies tags): slotkeeper must never attach it.
	LookAlike
	// LoseHeartbeats lets a pending lifecycle action expire now, as when its
	// heartbeats were all lost: its default result applies while its invocation may
	// still run.
	LoseHeartbeats
	// AWSFault injects an emulator fault (Throttle, ServerError, Latency, Crash,
	// LostResponse) into the next matching AWS calls.
	AWSFault
	// DeliveryFault arms a delivery fault for the next event of a kind emitted from
	// then on: a duplicate delivered at about the same time, a duplicate delivered
	// late, a late (only) delivery, or a reordered one.
	DeliveryFault
	// StopFault makes the next stop-and-unmount command fail: Kafka does not stop
	// (exit 4), the filesystem is busy (exit 5), or no result comes in time.
	StopFault
	// ExtraReconcile invokes reconcile off its schedule.
	ExtraReconcile
	opKinds
)

var opNames = [...]string{"scale-out", "scale-in", "health-replace", "refresh", "evict", "broker-dies", "kafka-gone",
	"grow-alarm", "look-alike", "lose-heartbeats", "aws-fault", "delivery-fault", "stop-fault", "extra-reconcile"}

func (k OpKind) String() string {
	if k >= 0 && int(k) < len(opNames) {
		return opNames[k]
	}
	return "op(" + strconv.Itoa(int(k)) + ")"
}

// Delivery fault modes.
const (
	DupConcurrent = "duplicate"
	DupLate       = "duplicate-late"
	Late          = "late"
	Reorder       = "reorder"
)

// Stop fault modes.
const (
	StopStillActive = "still-active"
	StopBusy        = "mount-busy"
	StopNoResult    = "no-result"
)

// Event kinds (what a delivery fault applies to).
const (
	EvLaunch    = "launch-lifecycle"
	EvTerminate = "terminate-lifecycle"
	EvState     = "state-change"
	EvSchedule  = "schedule"
	EvAlarm     = "alarm"
)

// Op is one operation of a plan, applied at simulated time At.
type Op struct {
	At   time.Duration
	Kind OpKind
	// N is a count (ScaleOut, ScaleIn); Pick chooses a target among the eligible
	// ones at the time (the one at index floor(Pick × count), in launch order).
	N    int
	Pick float64
	// Restart: KafkaGone restarts.
	Restart bool
	// Fault is the AWS fault (AWSFault).
	Fault emulator.Fault
	// Mode is the delivery fault or stop fault mode; Event the event kind a delivery
	// fault applies to.
	Mode, Event string
}

func (o Op) String() string {
	at := fmt.Sprintf("%6.1fs ", o.At.Seconds())
	switch o.Kind {
	case ScaleOut, ScaleIn:
		return fmt.Sprintf("%s%s %d", at, o.Kind, o.N)
	case KafkaGone:
		return fmt.Sprintf("%s%s pick=%.2f restart=%v", at, o.Kind, o.Pick, o.Restart)
	case AWSFault:
		f := o.Fault
		s := fmt.Sprintf("%s%s %s %s skip=%d times=%d", at, o.Kind, f.Kind, f.Action, f.Skip, f.Times)
		if f.Kind == emulator.Latency {
			s += " latency=" + f.Latency.String()
		}
		return s
	case DeliveryFault:
		return fmt.Sprintf("%s%s %s %s", at, o.Kind, o.Mode, o.Event)
	case StopFault:
		return fmt.Sprintf("%s%s %s", at, o.Kind, o.Mode)
	case Refresh, ExtraReconcile:
		return at + o.Kind.String()
	}
	return fmt.Sprintf("%s%s pick=%.2f", at, o.Kind, o.Pick)
}

// Warmup is when a plan's first operation may come: the group has launched its
// instances and their brokers run by then (mostly: a slow start overlaps).
const Warmup = 4 * time.Minute

// Plan is what one seed does: the cluster's shape and the operations, in time order.
type Plan struct {
	Seed  uint64
	Slots int
	// Horizon is when the last operation may come; after it the run quiesces.
	Horizon time.Duration
	Ops     []Op
}

// faultActions are the AWS calls the handlers make, for AWSFault.
var faultActions = []string{
	"*", "PutItem", "UpdateItem", "GetItem", "Query", "DescribeInstances", "DescribeVolumes", "DescribeNetworkInterfaces",
	"AttachVolume", "DetachVolume", "AttachNetworkInterface", "DetachNetworkInterface", "CreateVolume", "CreateNetworkInterface",
	"CreateTags", "DeleteTags", "CompleteLifecycleAction", "RecordLifecycleActionHeartbeat", "DescribeAutoScalingInstances",
	"SendCommand", "GetCommandInvocation", "ChangeResourceRecordSets", "ListResourceRecordSets", "PutMetricAlarm",
	"DescribeAlarms", "ModifyVolume", "DescribeVolumesModifications", "DescribeScalingActivities",
}

// rngFor returns the random stream of one part of a seed's run: the plan (stream 0)
// and each entity (an instance, an event) its own, so that removing an operation while
// shrinking changes no other draw.
func rngFor(seed uint64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, stream*0x9e3779b97f4a7c15+1))
}

// NewPlan draws seed's plan.
func NewPlan(seed uint64) Plan {
	r := rngFor(seed, 0)
	p := Plan{Seed: seed, Slots: 3}
	if r.IntN(10) < 3 {
		p.Slots = 6
	}
	p.Horizon = Warmup + time.Duration(8+r.IntN(13))*time.Minute
	at := func() time.Duration {
		return Warmup + time.Duration(r.Int64N(int64(p.Horizon-Warmup)))
	}
	world := 3 + r.IntN(6)
	for range world {
		op := Op{At: at(), Pick: r.Float64()}
		switch x := r.IntN(100); {
		case x < 14:
			op.Kind, op.N = ScaleIn, 1+r.IntN(2)
		case x < 26:
			op.Kind, op.N = ScaleOut, 1+r.IntN(2)
		case x < 40:
			op.Kind = HealthReplace
		case x < 47:
			op.Kind = Refresh
		case x < 58:
			op.Kind = Evict
		case x < 68:
			op.Kind = BrokerDies
		case x < 78:
			op.Kind, op.Restart = KafkaGone, r.IntN(2) == 0
		case x < 86:
			op.Kind = GrowAlarm
		case x < 90:
			op.Kind = LookAlike
		case x < 95:
			op.Kind = LoseHeartbeats
		default:
			op.Kind = ExtraReconcile
		}
		p.Ops = append(p.Ops, op)
	}
	for range 1 + r.IntN(6) {
		f := emulator.Fault{Action: faultActions[r.IntN(len(faultActions))], Skip: r.IntN(6), Times: 1}
		switch x := r.IntN(100); {
		case x < 25:
			f.Kind, f.Times = emulator.Throttle, 1+r.IntN(3)
		case x < 40:
			f.Kind, f.Times = emulator.ServerError, 1+r.IntN(2)
		case x < 55:
			f.Kind, f.Times = emulator.Latency, 1+r.IntN(3)
			f.Latency = time.Duration(20+r.IntN(300)) * time.Millisecond
		case x < 78:
			f.Kind = emulator.Crash
		default:
			f.Kind = emulator.LostResponse
		}
		if f.Action == "*" && f.Kind != emulator.Latency {
			f.Times = 1 // one call, whichever comes next
		}
		p.Ops = append(p.Ops, Op{At: at(), Kind: AWSFault, Fault: f})
	}
	events := []string{EvLaunch, EvLaunch, EvTerminate, EvTerminate, EvTerminate, EvState, EvSchedule, EvAlarm}
	modes := []string{DupConcurrent, DupConcurrent, DupLate, Late, Reorder}
	for range r.IntN(6) {
		p.Ops = append(p.Ops, Op{At: at(), Kind: DeliveryFault, Mode: modes[r.IntN(len(modes))], Event: events[r.IntN(len(events))]})
	}
	stops := []string{StopStillActive, StopBusy, StopNoResult}
	for range r.IntN(3) {
		if r.IntN(2) == 0 {
			p.Ops = append(p.Ops, Op{At: at(), Kind: StopFault, Mode: stops[r.IntN(len(stops))]})
		}
	}
	slices.SortStableFunc(p.Ops, func(a, b Op) int { return int(a.At - b.At) })
	return p
}

// Subset returns the plan with only the operations at the given indexes (in order).
func (p Plan) Subset(keep []int) Plan {
	q := p
	q.Ops = nil
	for _, i := range keep {
		if i >= 0 && i < len(p.Ops) {
			q.Ops = append(q.Ops, p.Ops[i])
		}
	}
	return q
}

// Case is a run to make: a seed, and (after shrinking) the operations of its plan to
// keep; nil Keep keeps them all.
type Case struct {
	Seed uint64
	Keep []int
}

// Plan is the case's plan.
func (c Case) Plan() Plan {
	p := NewPlan(c.Seed)
	if c.Keep != nil {
		p = p.Subset(c.Keep)
	}
	return p
}

// String renders a case as the regression list writes it: "<seed>" or
// "<seed> ops=<i>,<j>,...".
func (c Case) String() string {
	if c.Keep == nil {
		return strconv.FormatUint(c.Seed, 10)
	}
	parts := make([]string, len(c.Keep))
	for i, k := range c.Keep {
		parts[i] = strconv.Itoa(k)
	}
	return strconv.FormatUint(c.Seed, 10) + " ops=" + strings.Join(parts, ",")
}

// ParseCase reads a case as String writes it.
func ParseCase(s string) (Case, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return Case{}, fmt.Errorf("empty case")
	}
	seed, err := strconv.ParseUint(fields[0], 10, 64)
	if err != nil {
		return Case{}, fmt.Errorf("case %q: seed: %w", s, err)
	}
	c := Case{Seed: seed}
	for _, f := range fields[1:] {
		v, ok := strings.CutPrefix(f, "ops=")
		if !ok {
			return Case{}, fmt.Errorf("case %q: unknown field %q", s, f)
		}
		c.Keep = []int{}
		for _, x := range strings.Split(v, ",") {
			if x == "" {
				continue
			}
			i, err := strconv.Atoi(x)
			if err != nil {
				return Case{}, fmt.Errorf("case %q: op index %q: %w", s, x, err)
			}
			c.Keep = append(c.Keep, i)
		}
	}
	return c, nil
}
