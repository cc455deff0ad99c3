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
// back after the slot is released, once its broker was seen stopped. A removal waiting
// for the token waits (with heartbeats) within the same bound as the safety wait; the
// token is taken over when the removal holding it is over (its broker seen stopped and
// its lease released or moved on, or its instance stopped, terminated or gone), and at
// the bound, loudly. A removal whose broker could not be seen stopped keeps the token
// until its instance no longer runs: its broker may still be in every ISR.
//
// A removal the token is taken from at the bound is not over: it may still stop its
// broker. It stays on the token as displaced, and when the removal that took the token
// ends, the token goes back to it (it is not freed), so that no third removal judges
// its safety while that broker may still leave.
//
// The invocation working on a removal stamps the token with a short deadline (about
// two heartbeat intervals) that it renews while it works, so that a delivery that died
// silently (a crash, a timeout) is taken over by the next delivery within that time.

// tokenRounds bounds the re-reads of the token's give back and hand-on loops: each
// round's write frees the token, shortens its displaced list, or lost to another
// writer (who then settles it).
const tokenRounds = 16

// errBusy means another delivery of the same lifecycle event is working on this
// removal right now, and went on doing so until this invocation's gate deadline. This
// invocation leaves it to that one and fails, so that the event is delivered again
// later; by then the other one is done (the action is completed, and the redelivery
// changes nothing) or has stopped (and is taken over).
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
// over once its instance is stopped, terminated or gone (nothing runs there: a broker
// stopped with its instance, a warm-pool return, included), or once its broker was
// seen stopped (tok.Stopped) and that lease no longer has that holder at that version
// (released, or moved on). A released slot whose broker was not seen stopped is not
// over while its instance still runs or shuts down: its broker may still be in every
// ISR.
func removalOver(tok lease.Removal, holderLease lease.Lease, holderState string) (bool, string) {
	released := !holderLease.HeldBy(tok.Holder) || holderLease.Version != tok.LeaseVersion
	switch {
	case slot.Halted(holderState):
		return true, fmt.Sprintf("%s is %s: no broker runs there", tok.Holder, stateName(holderState))
	case released && tok.Stopped:
		return true, fmt.Sprintf("the broker of slot %d was seen stopped, and the slot is no longer held by %s at version %d (it is %s at version %d)",
			tok.HolderSlot, tok.Holder, tok.LeaseVersion, holderLease.State, holderLease.Version)
	case released:
		return false, fmt.Sprintf("slot %d is no longer held by %s at version %d, but its broker was not seen stopped and %s is %s: it may still run Kafka",
			tok.HolderSlot, tok.Holder, tok.LeaseVersion, tok.Holder, stateName(holderState))
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

// remover names this invocation's removal of l, stamped alive for StampTTL from now.
func (inv *invocation) remover(l lease.Lease) lease.Remover {
	return lease.Remover{Slot: l.Slot, Instance: l.Holder, LeaseVersion: l.Version, Invocation: inv.invocationID, Until: inv.now().Add(inv.stampTTL())}
}

// stampTTL is how long a stamp on the token keeps an invocation alive: StampTTL, or
// two heartbeat intervals.
func (inv *invocation) stampTTL() time.Duration {
	if inv.StampTTL > 0 {
		return inv.StampTTL
	}
	return 2 * max(inv.HeartbeatInterval, time.Second)
}

// takeToken gets the removal token for l's removal, waiting (paced by SafetyRecheck,
// backing off to 30 s) while another removal holds it, until deadline; then it takes
// it over, forced. With wait false (the slot is already draining: this removal passed
// its gate in an earlier delivery) it never waits for another removal: a token held
// by another removal is left to it. While another delivery of this event holds it
// for this removal, stamped alive, it waits too (the other one renews its stamp while
// it works), checking that the lifecycle action is still active: once it is not (the
// other delivery completed it), it returns an error wrapping lifecycle.ErrNotActive;
// still busy at deadline, errBusy. Before it takes the token it checks that l is still
// the slot's lease (else lease.ErrFenced: the slot moved on).
func (inv *invocation) takeToken(ctx context.Context, l lease.Lease, deadline time.Time, wait bool) (tokenResult, error) {
	me := inv.remover(l)
	start := inv.now()
	pause := max(inv.SafetyRecheck, 10*time.Millisecond)
	var logged string
	pauseUntil := func(why string) error {
		if why != logged {
			inv.o.Log.InfoContext(ctx, "waiting for the removal token", obs.KeyReason, why, "until", deadline.UTC().Format(time.RFC3339))
			logged = why
		}
		if err := sleep(ctx, min(pause, max(deadline.Sub(inv.now()), 0))); err != nil {
			return fmt.Errorf("waiting for the removal token: %w", err)
		}
		pause = min(pause*2, 30*time.Second)
		return nil
	}
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
			if err := inv.actions.Active(ctx); err != nil {
				return tokenResult{}, err // not active: the other delivery completed it
			}
			if !inv.now().Before(deadline) {
				return tokenResult{}, fmt.Errorf("%w (%s, alive until %s)", errBusy, tok.Invocation, tok.InvocationUntil)
			}
			if err := pauseUntil(fmt.Sprintf("another delivery of this event (%s, alive until %s) is working on this removal", tok.Invocation, tok.InvocationUntil)); err != nil {
				return tokenResult{}, err
			}
			continue
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
			case over && len(tok.Displaced) > 0:
				// A removal the token was taken from by force may still stop its broker:
				// the token goes back to it, and this removal waits for it in turn.
				inv.tokMu.Lock()
				_, err := inv.store.GiveBackRemoval(ctx, tok, "the removal holding it is over: "+why)
				inv.tokMu.Unlock()
				if err != nil && !errors.Is(err, lease.ErrFenced) {
					return tokenResult{}, err
				}
				continue
			case over:
				reason = "taken over: " + why
			case !wait:
				inv.o.Log.WarnContext(ctx, "another removal holds the removal token; this one passed its gate already and goes on", obs.KeyReason, why)
				return tokenResult{Waited: inv.now().Sub(start)}, nil
			case !inv.now().Before(deadline):
				reason, forced = fmt.Sprintf("forced after %s: %s", inv.now().Sub(start).Round(time.Millisecond), why), true
			default:
				if err := pauseUntil(why); err != nil {
					return tokenResult{}, err
				}
				continue
			}
		}
		// Only the slot's current holder takes the token for its removal: a delivery
		// that waited while another one handed the slot back must not.
		if cur, err := inv.store.Get(ctx, l.Slot); err != nil {
			return tokenResult{}, err
		} else if !cur.HeldBy(l.Holder) || cur.Version != l.Version {
			return tokenResult{}, fmt.Errorf("slot %d is now %s at version %d, not held by %s at version %d: %w",
				l.Slot, cur.State, cur.Version, l.Holder, l.Version, lease.ErrFenced)
		}
		me.Until = inv.now().Add(inv.stampTTL())
		take := inv.store.TakeRemoval
		if forced {
			// Taken from a removal that is not over: it stays accounted for (displaced),
			// and gets the token back when this removal ends.
			take = inv.store.TakeOverRemoval
		}
		inv.tokMu.Lock()
		_, err = take(ctx, tok, me, reason)
		inv.tokMu.Unlock()
		if errors.Is(err, lease.ErrFenced) {
			continue // someone else wrote it first: read it again
		} else if err != nil {
			return tokenResult{}, err
		}
		waited := inv.now().Sub(start)
		inv.o.Log.InfoContext(ctx, "holding the removal token", obs.KeyReason, reason, "waited_ms", waited.Milliseconds(), "forced", forced)
		return tokenResult{Held: true, Forced: forced, Why: reason, Waited: waited}, nil
	}
}

// keepStamp renews this invocation's stamp on the token every half StampTTL while the
// token is held by it, until the returned stop function is called. A renewal that
// finds the token no longer held by this invocation, or its stamp ended, stops
// renewing.
func (inv *invocation) keepStamp(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(inv.stampTTL() / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			inv.tokMu.Lock()
			tok, err := inv.store.GetRemoval(ctx)
			if err == nil && (!tok.Held() || tok.Invocation != inv.invocationID || !tok.InvocationAlive(inv.now())) {
				inv.tokMu.Unlock()
				return
			}
			if err == nil {
				_, err = inv.store.RenewRemoval(ctx, tok, inv.now().Add(inv.stampTTL()))
			}
			inv.tokMu.Unlock()
			if err != nil && ctx.Err() == nil {
				inv.o.Log.WarnContext(ctx, "could not renew this invocation's stamp on the removal token", obs.KeyErr, err.Error())
			}
		}
	}()
	return func() { cancel(); <-done }
}

// markStopped records on the token, when it is held for l's removal or l's removal is
// one of its displaced ones, that its broker was seen stopped and its volume
// unmounted.
func (inv *invocation) markStopped(ctx context.Context, l lease.Lease) error {
	me := lease.Remover{Slot: l.Slot, Instance: l.Holder, LeaseVersion: l.Version}
	inv.tokMu.Lock()
	defer inv.tokMu.Unlock()
	for range 3 {
		tok, err := inv.store.GetRemoval(ctx)
		if err != nil {
			return err
		}
		why := fmt.Sprintf("broker %d stopped and its data volume unmounted", inv.cfg.NodeID(l.Slot))
		switch {
		case tok.HeldFor(me) && !tok.Stopped:
			_, err = inv.store.MarkRemovalStopped(ctx, tok, why)
		case tok.DisplacedBy(me):
			_, err = inv.store.MarkDisplacedStopped(ctx, tok, me, why)
		default:
			return nil
		}
		if !errors.Is(err, lease.ErrFenced) {
			return err
		}
	}
	return fmt.Errorf("marking the removal of slot %d stopped on the removal token: it kept changing", l.Slot)
}

// giveBackToken gives the removal token back if it is held for a removal of this
// instance (whichever slot, version or invocation: the slot is released or not this
// instance's any more) whose broker was seen stopped, or whose instance no longer
// runs (stopped, terminated or gone). A removal whose broker was not seen stopped
// keeps the token while its instance runs or shuts down (it is taken over once the
// instance is halted); this invocation's stamp on it is then ended. A token held by
// another removal is left alone.
func (inv *invocation) giveBackToken(ctx context.Context, id, why string) error {
	inv.tokMu.Lock()
	defer inv.tokMu.Unlock()
	dropped := false
	for range tokenRounds {
		tok, err := inv.store.GetRemoval(ctx)
		if err != nil {
			return err
		}
		if !tok.Held() {
			return nil
		}
		if tok.Holder != id {
			// The token was taken from this removal by force: once it is over, it leaves
			// the displaced ones, or the token would come back to it with nobody to give
			// it back.
			d, kept, err := inv.overDisplaced(ctx, tok, id)
			switch {
			case err != nil:
				return err
			case d == nil && kept != "":
				inv.o.Log.WarnContext(ctx, "removal token kept", obs.KeyReason, fmt.Sprintf("%s; %s", why, kept), "holder_slot", tok.HolderSlot)
				return nil
			case d == nil && dropped:
				// The holder may be over meanwhile, with nobody left to give it back.
				return inv.settle(ctx)
			case d == nil:
				return nil
			}
			if _, err := inv.store.DropDisplaced(ctx, tok, *d, why); errors.Is(err, lease.ErrFenced) {
				continue
			} else if err != nil {
				return err
			}
			dropped = true
			inv.o.Log.InfoContext(ctx, "removal token given back", obs.KeyReason,
				fmt.Sprintf("%s (this removal was displaced; the token stays with slot %d's)", why, tok.HolderSlot), "holder_slot", d.HolderSlot)
			continue // another entry of this instance, then the holder
		}
		if !tok.Stopped {
			states, err := inv.res.InstanceStates(ctx, []string{id})
			if err != nil {
				return err
			}
			if st := states[id]; !slot.Halted(st) {
				kept := fmt.Sprintf("%s; the broker on %s was not seen stopped and the instance is %s: the token stays held until it is stopped, terminated or gone", why, id, stateName(st))
				inv.o.Log.WarnContext(ctx, "removal token kept", obs.KeyReason, kept, "holder_slot", tok.HolderSlot)
				if tok.Invocation == inv.invocationID && tok.InvocationAlive(inv.now()) {
					if _, err := inv.store.EndRemovalInvocation(ctx, tok, kept); errors.Is(err, lease.ErrFenced) {
						continue
					} else if err != nil {
						return err
					}
				}
				return nil
			}
		}
		next, err := inv.store.GiveBackRemoval(ctx, tok, why)
		if errors.Is(err, lease.ErrFenced) {
			continue // written meanwhile (another delivery re-stamped it): read again
		}
		if err != nil {
			return err
		}
		if !next.Held() {
			inv.o.Log.InfoContext(ctx, "removal token given back", obs.KeyReason, why, "holder_slot", tok.HolderSlot)
			return nil
		}
		inv.o.Log.InfoContext(ctx, "removal token given back", obs.KeyReason, fmt.Sprintf("%s; handed back to the removal of slot %d (%s), whose token was taken by force",
			why, next.HolderSlot, next.Holder), "holder_slot", tok.HolderSlot)
		return inv.settle(ctx)
	}
	return fmt.Errorf("giving back the removal token of %s: it kept changing", id)
}

// overDisplaced returns the first displaced entry of instance id on tok whose removal
// is over (its broker seen stopped, or the instance halted), or nil; when it has one
// that is not over, kept says why it stays.
func (inv *invocation) overDisplaced(ctx context.Context, tok lease.Removal, id string) (*lease.Displaced, string, error) {
	var kept string
	for _, d := range tok.Displaced {
		if d.Holder != id {
			continue
		}
		if d.Stopped {
			return &d, "", nil
		}
		states, err := inv.res.InstanceStates(ctx, []string{id})
		if err != nil {
			return nil, "", err
		}
		if st := states[id]; slot.Halted(st) {
			return &d, "", nil
		} else {
			kept = fmt.Sprintf("the broker on %s was not seen stopped and the instance is %s: this removal stays displaced on the token (held by slot %d's) until it is stopped, terminated or gone",
				id, stateName(st), tok.HolderSlot)
		}
	}
	return nil, kept, nil
}

// settle ends with the token free or held by a removal that may still be under way:
// while it is held, with no live invocation, for a removal that is over (its broker
// seen stopped and its slot released, or its instance halted: a displaced removal it
// was handed back to, which has nobody left to give it back), it is handed on.
// Whoever writes the token last (a give back, a displaced removal leaving the list)
// settles it, so a concurrent writer cannot leave it held for a removal that is over.
// inv.tokMu must be held.
func (inv *invocation) settle(ctx context.Context) error {
	for range tokenRounds {
		tok, err := inv.store.GetRemoval(ctx)
		if err != nil || !tok.Held() || tok.InvocationAlive(inv.now()) {
			return err
		}
		hl, err := inv.store.Get(ctx, tok.HolderSlot)
		if err != nil {
			return err
		}
		states, err := inv.res.InstanceStates(ctx, []string{tok.Holder})
		if err != nil {
			return err
		}
		over, why := removalOver(tok, hl, states[tok.Holder])
		if !over {
			return nil
		}
		if _, err := inv.store.GiveBackRemoval(ctx, tok, "the removal holding it is over: "+why); err != nil && !errors.Is(err, lease.ErrFenced) {
			return err
		} else if err == nil {
			inv.o.Log.InfoContext(ctx, "removal token given back", obs.KeyReason, "the removal holding it is over: "+why, "holder_slot", tok.HolderSlot)
		}
	}
	return nil
}

// endInvocation marks this invocation's stamp on the token as ended, after a failure,
// so that the redelivery carries the removal on at once. Best effort.
func (inv *invocation) endInvocation(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	inv.tokMu.Lock()
	defer inv.tokMu.Unlock()
	tok, err := inv.store.GetRemoval(ctx)
	if err != nil || !tok.Held() || tok.Invocation != inv.invocationID || !tok.InvocationAlive(inv.now()) {
		return
	}
	if _, err := inv.store.EndRemovalInvocation(ctx, tok, "the invocation failed; the event will be delivered again"); err != nil {
		inv.o.Log.WarnContext(ctx, "could not mark the removal token's invocation as ended; a redelivery waits for its stamp to expire", obs.KeyErr, err.Error())
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
