// Package slot holds the claim decision: which slot an instance should take, in which
// order to try the candidates, and the claim procedure over the lease store.
//
// The decision is pure (Decide); Claimer adds the reads and conditional writes.
package slot

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/lease"
)

// Instance states as EC2 reports them, plus Gone for an instance EC2 no longer knows.
const (
	Pending      = "pending"
	Running      = "running"
	Stopping     = "stopping"
	Stopped      = "stopped"
	ShuttingDown = "shutting-down"
	Terminated   = "terminated"
	Gone         = ""
)

// Alive reports whether an instance in state may still be (or become) a live broker.
func Alive(state string) bool { return state == Pending || state == Running }

// Dead reports whether an instance in state will never run again.
func Dead(state string) bool { return state == ShuttingDown || state == Terminated || state == Gone }

// Halted reports whether nothing can run on an instance in state right now: it is
// stopped, terminated or gone. Only then may a disk be forced off it. A shutting-down
// or stopping instance is not halted: its operating system may still be stopping
// Kafka and flushing the filesystem.
func Halted(state string) bool { return state == Stopped || state == Terminated || state == Gone }

// Holder is a lease holder as EC2 and its Auto Scaling group see it.
type Holder struct {
	// State is the EC2 state (Gone when EC2 does not know the instance).
	State string
	// Lifecycle and Health are the group's lifecycle state and health status; empty
	// when the instance is in no group.
	Lifecycle, Health string
}

// LeavingGroup reports whether an instance in its group's lifecycle state and with
// its health status is on its way out of the group: terminating, returning to a warm
// pool, or unhealthy (the group replaces it).
func LeavingGroup(lifecycle, health string) bool {
	return strings.HasPrefix(lifecycle, "Terminating") || strings.HasPrefix(lifecycle, "Warmed") ||
		strings.EqualFold(health, "Unhealthy")
}

// Leaving reports whether the holder of l is leaving the slot, so that a launch that
// finds no claimable slot in its AZ should wait for this one to be released (a
// handover) rather than give up; and says why. A holder is leaving when its lease is
// draining (a termination is handing the slot back), when its instance is stopping,
// stopped or shutting down, or when its group is terminating it, returning it to a
// warm pool or has found it unhealthy. A healthy holder in service is not leaving, nor
// is a claim of another launch in progress.
func Leaving(l lease.Lease, h Holder) (bool, string) {
	switch {
	case l.State == lease.Free:
		return false, "slot free"
	case l.State == lease.Draining:
		return true, "lease draining: " + l.Holder + " is handing the slot back"
	case h.State == Stopping || h.State == Stopped || h.State == ShuttingDown:
		return true, "holder " + l.Holder + " is " + h.State
	case LeavingGroup(h.Lifecycle, h.Health):
		return true, fmt.Sprintf("holder %s is %s (%s) in its group", l.Holder, h.Lifecycle, orUnknown(h.Health))
	case l.State == lease.Claimed:
		return false, "another launch (" + l.Holder + ", " + stateName(h.State) + ") is claiming the slot"
	}
	return false, fmt.Sprintf("holder %s is %s and %s (%s) in its group", l.Holder, stateName(h.State), orUnknown(h.Lifecycle), orUnknown(h.Health))
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// Order ranks the candidate slots for an instance; the first is tried first.
type Order func(instance string, slots []int) []int

// Rendezvous orders slots by a hash of (instance, slot), highest first. Instances
// launching together each get a different, effectively random, first choice, so a claim
// costs about one conditional write instead of racing for the lowest free slot.
func Rendezvous(instance string, slots []int) []int {
	type ranked struct {
		slot  int
		score uint64
	}
	r := make([]ranked, len(slots))
	for i, s := range slots {
		h := fnv.New64a()
		h.Write([]byte(instance))
		h.Write([]byte{0})
		h.Write([]byte(strconv.Itoa(s)))
		r[i] = ranked{s, mix(h.Sum64())}
	}
	slices.SortFunc(r, func(a, b ranked) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return cmp.Compare(a.slot, b.slot)
	})
	out := make([]int, len(r))
	for i := range r {
		out[i] = r[i].slot
	}
	return out
}

// mix is a 64-bit finalizer (from SplitMix64) that spreads FNV's low-entropy output.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// LowestFirst is the naive order, lowest slot number first. It is the baseline the
// benchmark compares Rendezvous against.
func LowestFirst(_ string, slots []int) []int {
	out := slices.Clone(slots)
	slices.Sort(out)
	return out
}

// Decision is the outcome of Decide (and of Await).
type Decision struct {
	// Held is set when the instance already holds a slot: reuse it, claim nothing.
	Held *lease.Lease
	// Candidates are the claimable slots' leases, in the order to try them.
	Candidates []lease.Lease
	// Wait, set by Await instead of Candidates, are the slots of the AZ whose holder
	// is leaving: the instance waits for one of them to be handed over rather than
	// claim a candidate.
	Wait []int
}

// Claimable reports whether l may be claimed by another instance, given the EC2 state
// of its holder (Gone when EC2 does not know it), and says why.
//
//   - free: yes.
//   - claimed but never bound: only once the claimer is no longer pending or running.
//   - bound or draining: only once the holder is shutting down, terminated or gone.
//     A running (or merely stopped) holder is never dispossessed.
func Claimable(l lease.Lease, holderState string) (bool, string) {
	switch l.State {
	case lease.Free:
		return true, "slot free"
	case lease.Claimed:
		if Alive(holderState) {
			return false, "claimer " + l.Holder + " is " + holderState
		}
		return true, "claimer " + l.Holder + " is " + stateName(holderState) + " and never bound the slot"
	case lease.Bound, lease.Draining:
		if Dead(holderState) {
			return true, "holder " + l.Holder + " is " + stateName(holderState)
		}
		return false, "holder " + l.Holder + " is " + stateName(holderState)
	}
	return false, "unknown lease state " + string(l.State)
}

func stateName(s string) string {
	if s == Gone {
		return "gone"
	}
	return s
}

// Decide returns what instance should do given the slots of its AZ (azSlots), the
// cluster's current leases by slot (absent = never claimed), the EC2 state of every
// holder in leases (absent = Gone), and the instances of the group launching or running
// in the AZ (peers; may be nil when unknown).
//
// Candidate order: when instance is among the peers that hold no lease, the peers are
// matched to the claimable slots by rank: the r-th such peer (by id) tries the r-th
// claimable slot (in preferred order: a slot whose holder is gone, then free slots
// that have a volume, most recently released first, then slots that never had one,
// by number) first. Every launching instance computes the same
// matching from the same table, and the matching is stable while claims land (a peer
// that claimed leaves the peers together with the slot it took), so concurrent
// launches rarely collide. The remaining candidates follow the preference class, and
// order within it.
func Decide(instance string, azSlots []int, leases map[int]lease.Lease, states map[string]string, peers []string, order Order) Decision {
	// Reuse wins over everything: a redelivered event must not claim a second slot.
	// Look at every slot, not only this AZ's, so a reuse is found whatever the config.
	held := make([]int, 0, 1)
	holders := map[string]bool{}
	for s, l := range leases {
		if l.HeldBy(instance) {
			held = append(held, s)
		}
		if l.State != lease.Free {
			holders[l.Holder] = true
		}
	}
	if len(held) > 0 {
		slices.Sort(held)
		l := leases[held[0]]
		return Decision{Held: &l}
	}
	claimable := map[int]lease.Lease{}
	var free []int
	for _, s := range azSlots {
		l, ok := leases[s]
		if !ok {
			l = lease.Lease{Slot: s, State: lease.Free}
		}
		if ok, _ := Claimable(l, states[l.Holder]); ok {
			claimable[s] = l
			free = append(free, s)
		}
	}
	if len(free) == 0 {
		return Decision{}
	}
	free = preferred(claimable, free)
	var d Decision
	if first, ok := matched(instance, peers, holders, free); ok {
		d.Candidates = append(d.Candidates, claimable[first])
		delete(claimable, first)
	}
	// The rest: by preference class (see preferred), and by order within a class.
	class := func(s int) int { return preference(claimable[s]) }
	rest := order(instance, free)
	slices.SortStableFunc(rest, func(a, b int) int { return cmp.Compare(class(a), class(b)) })
	for _, s := range rest {
		if l, ok := claimable[s]; ok {
			d.Candidates = append(d.Candidates, l)
		}
	}
	return d
}

// preference is the class of a claimable lease in the order slots are matched to
// launching instances: 0 for a slot held by a holder that is gone (its broker went
// missing just now), 1 for a free slot that has a volume (a broker that is away),
// 2 for a slot that never had one (taking it makes a new, empty broker).
func preference(l lease.Lease) int {
	switch {
	case l.VolumeID != "" && l.State != lease.Free:
		return 0
	case l.VolumeID != "":
		return 1
	}
	return 2
}

// preferred returns slots (claimable, keyed by slot) in the order launching instances
// are matched to them: by preference class; within class 1 the most recently
// released first (the broker that has been away the shortest); else by number. Every
// launch computes the same order from the same table.
func preferred(claimable map[int]lease.Lease, slots []int) []int {
	out := slices.Clone(slots)
	released := func(l lease.Lease) time.Time {
		t, _ := time.Parse(time.RFC3339Nano, l.UpdatedAt)
		return t
	}
	slices.SortFunc(out, func(a, b int) int {
		la, lb := claimable[a], claimable[b]
		if c := cmp.Compare(preference(la), preference(lb)); c != 0 {
			return c
		}
		if preference(la) == 1 {
			if c := released(lb).Compare(released(la)); c != 0 {
				return c
			}
		}
		return cmp.Compare(a, b)
	})
	return out
}

// Launching reports whether an instance in this lifecycle state of its group is being
// launched into it (Pending, Pending:Wait, Pending:Proceed).
func Launching(lifecycle string) bool { return strings.HasPrefix(lifecycle, "Pending") }

// Await decides, for an instance with claimable candidates (d, from Decide), between
// claiming one and waiting for a slot of its AZ whose holder is leaving (leaving: those
// slots). A leaving holder is being replaced, most likely by one of the instances
// launching now: the replacement must take its slot (same node id, same volume), not a
// free one, where it would become another broker (a free slot that has a volume is
// another broker's identity; one that never had one makes a new, empty broker).
//
// launching are the instances of the AZ being launched into the group that hold no
// lease (instance counts whether listed or not). They are matched, by id, first to
// the leaving slots and then to the candidates (in preferred order): the instance
// waits when its rank is below the number of leaving slots (Decision.Wait), and
// otherwise claims, its matched candidate first. Every launching instance computes
// the same matching from the same view, so with two launches and one leaving slot
// (a replacement and a scale-out) one waits and the other claims the free slot; once
// the leaving slot is released or claimed it no longer counts, and the wait ends.
func Await(instance string, d Decision, leaving []int, launching []string) Decision {
	if d.Held != nil || len(d.Candidates) == 0 || len(leaving) == 0 {
		return d
	}
	ranked := []string{instance}
	for _, p := range launching {
		if !slices.Contains(ranked, p) {
			ranked = append(ranked, p)
		}
	}
	slices.Sort(ranked)
	r := slices.Index(ranked, instance)
	if r < len(leaving) {
		return Decision{Wait: slices.Sorted(slices.Values(leaving))}
	}
	claimable := map[int]lease.Lease{}
	var slots []int
	for _, l := range d.Candidates {
		claimable[l.Slot] = l
		slots = append(slots, l.Slot)
	}
	first := preferred(claimable, slots)[(r-len(leaving))%len(slots)]
	out := Decision{Candidates: []lease.Lease{claimable[first]}}
	for _, l := range d.Candidates {
		if l.Slot != first {
			out.Candidates = append(out.Candidates, l)
		}
	}
	return out
}

// matched returns the slot of free (in preferred order) that instance's rank among
// the lease-less peers gives it.
func matched(instance string, peers []string, holders map[string]bool, free []int) (int, bool) {
	var waiting []string
	for _, p := range peers {
		if !holders[p] && !slices.Contains(waiting, p) {
			waiting = append(waiting, p)
		}
	}
	slices.Sort(waiting)
	r := slices.Index(waiting, instance)
	if r < 0 {
		return 0, false
	}
	return free[r%len(free)], true
}
