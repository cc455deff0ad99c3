package terminate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// One removal at a time: a terminate invocation of a running broker takes the
// cluster's removal token (lease.Removal) before it judges removal safety, and gives it
// back after the slot is released. A removal waiting for the token waits (with
// heartbeats) within the same bound as the safety wait; the token is taken over when
// the removal holding it is over (its lease released or moved on, its instance
// terminated or gone), and at the bound, loudly.

// errBusy means another delivery of the same lifecycle event is working on this
// removal right now. This invocation leaves it to that one and fails, so that the
// event is delivered again later; by then the other one is done (the action is
// completed, and the redelivery changes nothing) or has stopped (and is taken over).
var errBusy = errors.New("another delivery of this event is handing the slot back")

// tokenAction is what to do about the removal token as read.
type tokenAction int

const (
	tokenMine    tokenAction = iota // held for this removal by this invocation
	tokenTake                       // free: take it
	tokenRestamp                    // held for this removal by an invocation that stopped: carry on with it
	tokenBusy                       // held for this removal by another invocation that may be alive
	tokenOther                      // held by another removal: is it over?
)

// tokenDecision says what removal me should do about the token tok at now.
func tokenDecision(tok lease.Removal, me lease.Remover, now time.Time) tokenAction {
	switch {
	case !tok.Held():
		return tokenTake
	case tok.HeldBy(me):
		return tokenMine
	case tok.HeldFor(me) && tok.InvocationAlive(now):
		return tokenBusy
	case tok.HeldFor(me):
		return tokenRestamp
	}
	return tokenOther
}

// removalOver reports whether the removal holding tok is over, given the lease of the
// slot it names (as read now) and the EC2 state of its instance, and says why. It is
// over once that lease no longer has that holder at that version (released, or moved
// on), or once the instance is terminated or gone. A leaving instance that still runs
// or shuts down is not over: its broker may still be leaving the cluster.
func removalOver(tok lease.Removal, holderLease lease.Lease, holderState string) (bool, string) {
	switch {
	case !holderLease.HeldBy(tok.Holder) || holderLease.Version != tok.LeaseVersion:
		return true, fmt.Sprintf("slot %d is no longer held by %s at version %d (it is %s at version %d)",
			tok.HolderSlot, tok.Holder, tok.LeaseVersion, holderLease.State, holderLease.Version)
	case holderState == slot.Terminated || holderState == slot.Gone:
		return true, fmt.Sprintf("%s is %s", tok.Holder, stateName(holderState))
	}
	return false, fmt.Sprintf("slot %d (broker leaving from %s, %s) holds it", tok.HolderSlot, tok.Holder, stateName(holderState))
}

func stateName(s string) string {
	if s == slot.Gone {
		return "gone"
	}
	return s
}

// tokenResult is how the wait for the token ended.
type tokenResult struct {
	// Held is true when this removal holds the token.
	Held bool
	// Forced is true when the bound passed while another removal held it: it was
	// taken over anyway. Why says from whom.
	Forced bool
	Why    string
	// Waited is how long this invocation waited for it.
	Waited time.Duration
}

// newInvocationID names one invocation on the token: the actor (function and request
// id) and a random suffix, so that two deliveries of one event never share it.
func newInvocationID(ctx context.Context) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return obs.Actor(ctx, "terminate") + "#" + hex.EncodeToString(b)
}

// remover names this invocation's removal of l.
func (inv *invocation) remover(ctx context.Context, l lease.Lease) lease.Remover {
	until, ok := ctx.Deadline()
	if !ok {
		until = inv.now().Add(15 * time.Minute) // Lambda's longest invocation
	}
	return lease.Remover{Slot: l.Slot, Instance: l.Holder, LeaseVersion: l.Version, Invocation: inv.invocationID, Until: until}
}

// takeToken gets the removal token for l's removal, waiting (paced by SafetyRecheck,
// backing off to 30 s) while another removal holds it, until deadline; then it takes
// it over, forced. With wait false (the slot is already draining: this removal passed
// its gate in an earlier delivery) it never waits: a token held by another removal is
// left to it. It returns errBusy when another live delivery of this event holds it.
func (inv *invocation) takeToken(ctx context.Context, l lease.Lease, deadline time.Time, wait bool) (tokenResult, error) {
	me := inv.remover(ctx, l)
	start := inv.now()
	pause := max(inv.SafetyRecheck, 10*time.Millisecond)
	var logged string
	for {
		tok, err := inv.store.GetRemoval(ctx)
		if err != nil {
			return tokenResult{}, err
		}
		var reason string
		forced := false
		switch tokenDecision(tok, me, inv.now()) {
		case tokenMine:
			return tokenResult{Held: true, Waited: inv.now().Sub(start)}, nil
		case tokenBusy:
			return tokenResult{}, fmt.Errorf("%w (%s, alive until %s)", errBusy, tok.Invocation, tok.InvocationUntil)
		case tokenTake:
			reason = "free"
		case tokenRestamp:
			reason = "carrying on the removal of an earlier delivery (" + tok.Invocation + ")"
		case tokenOther:
			hl, err := inv.store.Get(ctx, tok.HolderSlot)
			if err != nil {
				return tokenResult{}, err
			}
			states, err := inv.res.InstanceStates(ctx, []string{tok.Holder})
			if err != nil {
				return tokenResult{}, err
			}
			over, why := removalOver(tok, hl, states[tok.Holder])
			switch {
			case over:
				reason = "taken over: " + why
			case !wait:
				inv.o.Log.WarnContext(ctx, "another removal holds the removal token; this one passed its gate already and goes on", obs.KeyReason, why)
				return tokenResult{Waited: inv.now().Sub(start)}, nil
			case !inv.now().Before(deadline):
				reason, forced = fmt.Sprintf("forced after %s: %s", inv.now().Sub(start).Round(time.Millisecond), why), true
			default:
				if why != logged {
					inv.o.Log.InfoContext(ctx, "waiting for the removal token", obs.KeyReason, why,
						"holder_slot", tok.HolderSlot, "holder", tok.Holder, "until", deadline.UTC().Format(time.RFC3339))
					logged = why
				}
				if err := sleep(ctx, min(pause, max(deadline.Sub(inv.now()), 0))); err != nil {
					return tokenResult{}, fmt.Errorf("waiting for the removal token: %w", err)
				}
				pause = min(pause*2, 30*time.Second)
				continue
			}
		}
		if _, err := inv.store.TakeRemoval(ctx, tok, me, reason); errors.Is(err, lease.ErrFenced) {
			continue // someone else wrote it first: read it again
		} else if err != nil {
			return tokenResult{}, err
		}
		waited := inv.now().Sub(start)
		inv.o.Log.InfoContext(ctx, "holding the removal token", obs.KeyReason, reason, "waited_ms", waited.Milliseconds(), "forced", forced)
		return tokenResult{Held: true, Forced: forced, Why: reason, Waited: waited}, nil
	}
}

// giveBackToken gives the removal token back if it is held for a removal of this
// instance (whichever slot, version or invocation: the slot is released or not this
// instance's any more). A token held by another removal is left alone.
func (inv *invocation) giveBackToken(ctx context.Context, id, why string) error {
	for range 3 {
		tok, err := inv.store.GetRemoval(ctx)
		if err != nil {
			return err
		}
		if !tok.Held() || tok.Holder != id {
			return nil
		}
		_, err = inv.store.GiveBackRemoval(ctx, tok, why)
		if errors.Is(err, lease.ErrFenced) {
			continue // written meanwhile (another delivery re-stamped it): read again
		}
		if err == nil {
			inv.o.Log.InfoContext(ctx, "removal token given back", obs.KeyReason, why, "holder_slot", tok.HolderSlot)
		}
		return err
	}
	return fmt.Errorf("giving back the removal token of %s: it kept changing", id)
}

// endInvocation marks this invocation's stamp on the token as ended, after a failure,
// so that the redelivery carries the removal on at once. Best effort.
func (inv *invocation) endInvocation(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	tok, err := inv.store.GetRemoval(ctx)
	if err != nil || !tok.Held() || tok.Invocation != inv.invocationID {
		return
	}
	if _, err := inv.store.EndRemovalInvocation(ctx, tok, "the invocation failed; the event will be delivered again"); err != nil {
		inv.o.Log.WarnContext(ctx, "could not mark the removal token's invocation as ended; a redelivery waits for its deadline", obs.KeyErr, err.Error())
	}
}

// sleep pauses for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
