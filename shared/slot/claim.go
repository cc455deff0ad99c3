package slot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/slotkeeper/slotkeeper/shared/lease"
)

// ErrNoFreeSlot means no slot of the instance's AZ can be claimed now.
var ErrNoFreeSlot = errors.New("no claimable slot in the availability zone")

// ErrHandover means a slot of the AZ could be claimed, but a slot whose holder is
// leaving is this instance's to wait for (see Await): Claimed.Leaving names them.
var ErrHandover = errors.New("waiting for a leaving holder's slot rather than claiming a free one")

// Membership is an instance's lifecycle state and health status in its Auto Scaling
// group.
type Membership struct{ Lifecycle, Health string }

// Claimer claims a slot for an instance: read the leases, decide, and try the
// candidates with conditional writes until one succeeds.
type Claimer struct {
	Store *lease.Store
	// States returns the EC2 state of each instance id it knows; ids it does not know
	// are absent from the map (Gone).
	States func(ctx context.Context, ids []string) (map[string]string, error)
	// Peers returns the instances of the Auto Scaling group that are pending or
	// running in an AZ; they are matched to free slots (see Decide). Nil: no matching.
	Peers func(ctx context.Context, az string) ([]string, error)
	// Group returns the group membership of the instances it knows (ids absent from
	// the map are in no group). It tells which holders of the AZ are leaving (their
	// group is terminating them, or found them unhealthy) and which peers are being
	// launched. Nil: only the leases and the EC2 states tell who is leaving, and every
	// peer counts as launching.
	Group func(ctx context.Context, ids []string) (map[string]Membership, error)
	// Order ranks candidates after the matched one; Rendezvous when nil.
	Order Order
	// Rounds bounds how often the leases are re-read after a write was lost to a
	// concurrent claimer; one more than the AZ's slot count when zero.
	Rounds int
	// First, when set, is the first round's read, made by the caller just before
	// (the launch reads the leases and describes the holders together with its own
	// instance): the first round does not read again. It is used once.
	First *Read
}

// Read is one round's view: the cluster's leases and the EC2 state of their holders
// (an instance EC2 does not know is absent: Gone).
type Read struct {
	Leases []lease.Lease
	States map[string]string
}

// Holders returns the instances that hold the leases of list, other than instance,
// each once: whose EC2 state a claim needs.
func Holders(list []lease.Lease, instance string) []string {
	var holders []string
	for _, l := range list {
		if l.State != lease.Free && l.Holder != instance && !slices.Contains(holders, l.Holder) {
			holders = append(holders, l.Holder)
		}
	}
	return holders
}

// Claimed is the outcome of a successful Claim.
type Claimed struct {
	Lease lease.Lease
	// Reused is true when the instance already held the slot (a redelivered event).
	Reused bool
	// Writes is the number of conditional writes this claim attempted.
	Writes int
	// Reason says why this slot was claimable.
	Reason string
	// Taken are, when no slot could be claimed (none was claimable, or every write
	// was lost to a concurrent claimer), the AZ's leases that are not claimable, as
	// last read, and States the EC2 states of their holders: the slots a launch may
	// wait for (see Leaving).
	Taken  []lease.Lease
	States map[string]string
	// Leaving are, when no slot was claimed, the slots of Taken whose holder is
	// leaving (see Leaving), and Why says, slot by slot, what each taken slot's holder
	// is doing. With ErrNoFreeSlot and no Leaving, every slot of the AZ is held by a
	// holder in service or claimed by another launch.
	Leaving []int
	Why     string
}

// Claim returns the slot lease instance holds after claiming one of azSlots, or
// ErrNoFreeSlot, or ErrHandover when a slot of the AZ whose holder is leaving is the
// instance's to wait for, although another could be claimed (Await). It is
// idempotent: an instance that already holds a slot gets it back without a write. Two
// concurrent claims for one instance (a duplicate delivery) both end with the same
// single slot: the extra claim is released.
func (c *Claimer) Claim(ctx context.Context, instance, az string, azSlots []int, reason string) (Claimed, error) {
	order, rounds := c.Order, c.Rounds
	if order == nil {
		order = Rendezvous
	}
	if rounds <= 0 {
		rounds = len(azSlots) + 1
	}
	writes := 0
	for round := 0; round < rounds; round++ {
		leases, states, err := c.read(ctx, instance)
		if err != nil {
			return Claimed{}, err
		}
		d := Decide(instance, azSlots, leases, states, nil, order)
		tk := taken(azSlots, leases, states)
		var peers []string
		if c.Peers != nil && d.Held == nil && (len(d.Candidates) > 1 || (len(d.Candidates) > 0 && len(tk) > 0)) {
			// The peers decide which of several claimable slots to try first, and, while
			// a slot of the AZ is taken (its holder may be leaving), which launches share
			// the leaving slots and the free ones (Await). Otherwise (one claimable slot
			// and none taken, or none claimable) they change nothing, and are not asked for.
			if peers, err = c.Peers(ctx, az); err != nil {
				return Claimed{}, fmt.Errorf("listing the group's instances in %s: %w", az, err)
			}
			d = Decide(instance, azSlots, leases, states, peers, order)
		}
		if d.Held != nil {
			return Claimed{Lease: *d.Held, Reused: true, Writes: writes, Reason: "instance already holds the slot"}, nil
		}
		lv, err := c.leaving(ctx, instance, tk, leases, states, peers, len(d.Candidates) > 0)
		if err != nil {
			return Claimed{Writes: writes}, err
		}
		if c.Group != nil && len(d.Candidates) > 0 {
			// Match only the peers being launched: a leaving holder whose slot was just
			// released still runs and holds no lease, but it is no launch.
			d = Decide(instance, azSlots, leases, states, append(slices.Clone(lv.launching), instance), order)
		}
		d = Await(instance, d, lv.slots, lv.launching)
		if len(d.Candidates) == 0 {
			out := Claimed{Writes: writes, Taken: lv.taken, States: states, Leaving: lv.slots, Why: lv.why}
			if len(d.Wait) > 0 {
				return out, fmt.Errorf("%w: slot(s) %v of %s (%s)", ErrHandover, d.Wait, az, lv.why)
			}
			return out, fmt.Errorf("%w %s (slots %v)", ErrNoFreeSlot, az, azSlots)
		}
		// Try the first candidate. When another claimer was faster, the rest of this
		// read is stale too: read again rather than racing down a stale list.
		cand := d.Candidates[0]
		_, why := Claimable(cand, states[cand.Holder])
		writes++
		l, err := c.Store.Claim(ctx, cand, instance, az, reason+": "+why)
		if errors.Is(err, lease.ErrFenced) {
			continue
		}
		if err != nil {
			return Claimed{Writes: writes}, err
		}
		kept, err := c.dedupe(ctx, instance, l)
		if err != nil {
			return Claimed{Writes: writes}, err
		}
		return Claimed{Lease: kept, Reused: kept.Slot != l.Slot, Writes: writes, Reason: why}, nil
	}
	// Every round lost its write to a concurrent claimer. Say which slots are taken
	// now, as above, so that a launch can still wait for one whose holder is leaving.
	leases, states, err := c.read(ctx, instance)
	if err != nil {
		return Claimed{Writes: writes}, err
	}
	lv, err := c.leaving(ctx, instance, taken(azSlots, leases, states), leases, states, nil, false)
	if err != nil {
		return Claimed{Writes: writes}, err
	}
	return Claimed{Writes: writes, Taken: lv.taken, States: states, Leaving: lv.slots, Why: lv.why},
		fmt.Errorf("%w %s: lost to concurrent claims %d times", ErrNoFreeSlot, az, rounds)
}

// leavingView is what leaving found.
type leavingView struct {
	taken     []lease.Lease
	slots     []int    // the taken slots whose holder is leaving
	why       string   // each taken slot's holder, in words
	launching []string // the lease-less peers being launched into the group
}

// leaving finds which of the taken slots' holders are leaving, and, when claim is
// set (a slot could be claimed), which lease-less peers are being launched (the
// instances that share the leaving slots and the free ones: see Await). One Group
// lookup serves both; holders whose lease or EC2 state already says they are
// leaving are not looked up.
func (c *Claimer) leaving(ctx context.Context, instance string, tk []lease.Lease, leases map[int]lease.Lease,
	states map[string]string, peers []string, claim bool) (leavingView, error) {
	v := leavingView{taken: tk}
	if len(tk) == 0 {
		return v, nil
	}
	held := map[string]bool{}
	for _, l := range leases {
		if l.State != lease.Free {
			held[l.Holder] = true
		}
	}
	var ids, others []string
	for _, l := range tk {
		if ok, _ := Leaving(l, Holder{State: states[l.Holder]}); !ok && !slices.Contains(ids, l.Holder) {
			ids = append(ids, l.Holder)
		}
	}
	if claim {
		for _, p := range peers {
			if p != instance && !held[p] && !slices.Contains(others, p) {
				others = append(others, p)
			}
		}
	}
	members := map[string]Membership{}
	if c.Group != nil && len(ids)+len(others) > 0 {
		var err error
		if members, err = c.Group(ctx, append(ids, others...)); err != nil {
			return v, fmt.Errorf("describing the AZ's holders and launches in their group: %w", err)
		}
	}
	var whys []string
	for _, l := range tk {
		m := members[l.Holder]
		ok, why := Leaving(l, Holder{State: states[l.Holder], Lifecycle: m.Lifecycle, Health: m.Health})
		whys = append(whys, fmt.Sprintf("slot %d: %s", l.Slot, why))
		if ok {
			v.slots = append(v.slots, l.Slot)
		}
	}
	v.why = strings.Join(whys, "; ")
	for _, p := range others {
		if m, ok := members[p]; c.Group == nil || (ok && Launching(m.Lifecycle)) {
			v.launching = append(v.launching, p)
		}
	}
	return v, nil
}

// taken returns the leases of azSlots that another instance may not claim now (given
// the EC2 states of their holders), in slot order.
func taken(azSlots []int, leases map[int]lease.Lease, states map[string]string) []lease.Lease {
	var out []lease.Lease
	for _, s := range azSlots {
		if l, ok := leases[s]; ok {
			if claimable, _ := Claimable(l, states[l.Holder]); !claimable {
				out = append(out, l)
			}
		}
	}
	return out
}

// read returns the cluster's leases by slot and the EC2 state of their holders: First
// the first time, if set.
func (c *Claimer) read(ctx context.Context, instance string) (map[int]lease.Lease, map[string]string, error) {
	if r := c.First; r != nil {
		c.First = nil
		leases := make(map[int]lease.Lease, len(r.Leases))
		for _, l := range r.Leases {
			leases[l.Slot] = l
		}
		return leases, r.States, nil
	}
	list, err := c.Store.List(ctx)
	if err != nil {
		return nil, nil, err
	}
	leases := make(map[int]lease.Lease, len(list))
	for _, l := range list {
		leases[l.Slot] = l
	}
	states := map[string]string{}
	if holders := Holders(list, instance); len(holders) > 0 {
		if states, err = c.States(ctx, holders); err != nil {
			return nil, nil, fmt.Errorf("describing lease holders: %w", err)
		}
	}
	return leases, states, nil
}

// dedupe reads the leases right after instance claimed mine, and returns the lease
// instance holds as read (ErrFenced when it holds none any more). It handles a
// duplicate delivery racing with itself: if instance now holds more than one slot, it
// keeps the bound one (else the lowest) and releases the other claims. Both racers
// compute the same answer, so they converge.
func (c *Claimer) dedupe(ctx context.Context, instance string, mine lease.Lease) (lease.Lease, error) {
	list, err := c.Store.List(ctx)
	if err != nil {
		return lease.Lease{}, err
	}
	var held []lease.Lease
	for _, l := range list {
		if l.HeldBy(instance) {
			held = append(held, l)
		}
	}
	switch len(held) {
	case 0:
		// The claim just written is no longer this instance's: nothing may be created
		// or attached for it.
		return lease.Lease{}, fmt.Errorf("slot %d, claimed by %s at version %d, is no longer held by it: %w", mine.Slot, instance, mine.Version, lease.ErrFenced)
	case 1:
		// The lease as this consistent read found it: the caller's check that it is
		// still this instance's claim, right before its first create or attach.
		return held[0], nil
	}
	keep := held[0]
	for _, l := range held {
		if l.State == lease.Bound || (keep.State != lease.Bound && l.Slot < keep.Slot) {
			keep = l
		}
	}
	for _, l := range held {
		if l.Slot == keep.Slot || l.State != lease.Claimed {
			continue
		}
		if _, err := c.Store.Release(ctx, l, fmt.Sprintf("duplicate claim: %s keeps slot %d", instance, keep.Slot)); err != nil && !errors.Is(err, lease.ErrFenced) {
			return lease.Lease{}, err
		}
	}
	return keep, nil
}
