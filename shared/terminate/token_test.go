package terminate

import (
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

func TestTokenDecision(t *testing.T) {
	now := time.Date(2026, 11, 21, 20, 0, 0, 0, time.UTC)
	me := lease.Remover{Slot: 1, Instance: "i-1", LeaseVersion: 4, Invocation: "terminate/req-2#aa"}
	held := func(slot int, instance string, version int64, invocation string, until time.Time) lease.Removal {
		return lease.Removal{State: lease.RemovalHeld, HolderSlot: slot, Holder: instance, LeaseVersion: version,
			Invocation: invocation, InvocationUntil: until.Format(time.RFC3339Nano), UpdatedAt: "x"}
	}
	later, earlier := now.Add(time.Minute), now.Add(-time.Second)
	tests := []struct {
		name string
		tok  lease.Removal
		want tokenAction
	}{
		{"never written", lease.Removal{State: lease.RemovalFree}, tokenTake},
		{"given back", lease.Removal{State: lease.RemovalFree, LastHolder: "i-0", UpdatedAt: "x"}, tokenTake},
		{"ours, this invocation", held(1, "i-1", 4, me.Invocation, later), tokenMine},
		{"ours, another live delivery", held(1, "i-1", 4, "terminate/req-1#bb", later), tokenBusy},
		{"ours, a delivery past its deadline", held(1, "i-1", 4, "terminate/req-1#bb", earlier), tokenRestamp},
		{"ours, a delivery that ended", held(1, "i-1", 4, "terminate/req-1#bb", time.Time{}), tokenRestamp},
		{"the same instance at an older lease version", held(1, "i-1", 3, me.Invocation, later), tokenOther},
		{"another removal", held(0, "i-0", 7, "terminate/req-9#cc", later), tokenOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tokenDecision(tt.tok, me, now); got != tt.want {
				t.Errorf("tokenDecision = %d, want %d", got, tt.want)
			}
		})
	}
}

// A removal is over once its instance no longer runs, or once its broker was seen
// stopped and its slot released; a released slot whose broker was not seen stopped
// (a failed stop-and-unmount) is not over while the instance runs or shuts down.
func TestRemovalOver(t *testing.T) {
	tok := lease.Removal{State: lease.RemovalHeld, HolderSlot: 0, Holder: "i-0", LeaseVersion: 3}
	stopped := tok
	stopped.Stopped = true
	draining := lease.Lease{Slot: 0, State: lease.Draining, Holder: "i-0", Version: 3}
	released := lease.Lease{Slot: 0, State: lease.Free, LastHolder: "i-0", Version: 4}
	replaced := lease.Lease{Slot: 0, State: lease.Claimed, Holder: "i-9", Version: 5}
	tests := []struct {
		name  string
		tok   lease.Removal
		l     lease.Lease
		state string
		want  bool
		why   string
	}{
		{"still draining, running", tok, draining, slot.Running, false, "holds it"},
		{"still draining, shutting down", tok, draining, slot.ShuttingDown, false, "shutting-down"},
		{"still draining, stopped and unmounted, running", stopped, draining, slot.Running, false, "holds it"},
		{"still bound (before its drain), running", tok, lease.Lease{Slot: 0, State: lease.Bound, Holder: "i-0", Version: 3}, slot.Running, false, "holds it"},
		{"released after a confirmed stop", stopped, released, slot.Running, true, "seen stopped"},
		{"claimed by the replacement after a confirmed stop", stopped, replaced, slot.ShuttingDown, true, "seen stopped"},
		{"released, the stop not confirmed, running", tok, released, slot.Running, false, "not seen stopped"},
		{"released, the stop not confirmed, shutting down", tok, released, slot.ShuttingDown, false, "may still run Kafka"},
		{"claimed by the replacement, the stop not confirmed, stopping", tok, replaced, slot.Stopping, false, "not seen stopped"},
		{"released, the stop not confirmed, terminated", tok, released, slot.Terminated, true, "terminated"},
		{"draining, instance terminated", tok, draining, slot.Terminated, true, "terminated"},
		{"draining, instance gone", tok, draining, slot.Gone, true, "gone"},
		{"bound, instance stopped (returned to a warm pool)", tok, lease.Lease{Slot: 0, State: lease.Bound, Holder: "i-0", Version: 3}, slot.Stopped, true, "stopped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := removalOver(tt.tok, tt.l, tt.state)
			if got != tt.want || !strings.Contains(why, tt.why) {
				t.Errorf("removalOver = %v (%q), want %v mentioning %q", got, why, tt.want, tt.why)
			}
		})
	}
}

// The verdict combines both rules, and says first the one that blocks.
func TestVerdict(t *testing.T) {
	safeParts := kafka.Verdict{Broker: 1, Safe: true, Checked: 3}
	blocked := kafka.RemovalSafe(1, []kafka.Partition{{Topic: "orders", Partition: 0, Leader: 0, Replicas: []int32{0, 1, 2}, ISR: []int32{0, 1}, MinISR: 2}})
	q := func(behind bool) kafka.QuorumVerdict {
		quorum := kafka.Quorum{Leader: 0, Voters: []kafka.Voter{{ID: 0, LastCaughtUp: 10_000}, {ID: 1, LastCaughtUp: 10_000}, {ID: 2, LastCaughtUp: 10_000}}}
		if behind {
			quorum.Voters[2].LastCaughtUp = 0
		}
		return kafka.QuorumSafe(quorum, 1, kafka.DefaultCaughtUpLag)
	}
	tests := []struct {
		name  string
		v     verdict
		safe  bool
		first string
	}{
		{"both allow", verdict{safeParts, q(false), ""}, true, "broker 1 may leave"},
		{"quorum blocks", verdict{safeParts, q(true), ""}, false, "controller 1 may not leave"},
		{"partitions block", verdict{blocked, q(false), ""}, false, "broker 1 may not leave"},
		{"both block", verdict{blocked, q(true), ""}, false, "broker 1 may not leave"},
		{"no quorum to ask, partitions allow", verdict{Partitions: safeParts, NoQuorum: "unsupported"}, true, "broker 1 may leave"},
		{"no quorum to ask, partitions block", verdict{Partitions: blocked, NoQuorum: "unsupported"}, false, "broker 1 may not leave"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := describe(tt.v, nil)
			if tt.v.Safe() != tt.safe || !strings.HasPrefix(got, tt.first) {
				t.Errorf("Safe() = %v, describe = %q; want %v, starting %q", tt.v.Safe(), got, tt.safe, tt.first)
			}
		})
	}
}
