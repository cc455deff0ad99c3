package slot

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/slotkeeper/slotkeeper/shared/lease"
)

// ErrNoFreeSlot means no slot of the instance's AZ can be claimed now.
var ErrNoFreeSlot = errors.New("no claimable slot in the availability zone")

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
}

// Claim returns the slot lease instance holds after claiming one of azSlots, or
// ErrNoFreeSlot. It is idempotent: an instance that already holds a slot gets it back
// without a write. Two concurrent claims for one instance (a duplicate delivery) both
// end with the same single slot: the extra claim is released.
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
		if c.Peers != nil && d.Held == nil && len(d.Candidates) > 1 {
			// The peers decide which of several claimable slots to try first; with one
			// (or none) they change nothing, and are not asked for.
			peers, err := c.Peers(ctx, az)
			if err != nil {
				return Claimed{}, fmt.Errorf("listing the group's instances in %s: %w", az, err)
			}
			d = Decide(instance, azSlots, leases, states, peers, order)
		}
		if d.Held != nil {
			return Claimed{Lease: *d.Held, Reused: true, Writes: writes, Reason: "instance already holds the slot"}, nil
		}
		if len(d.Candidates) == 0 {
			return Claimed{Writes: writes, Taken: taken(azSlots, leases, states), States: states}, fmt.Errorf("%w %s (slots %v)", ErrNoFreeSlot, az, azSlots)
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
	return Claimed{Writes: writes, Taken: taken(azSlots, leases, states), States: states},
		fmt.Errorf("%w %s: lost to concurrent claims %d times", ErrNoFreeSlot, az, rounds)
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
