package lease_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// TestRemovalToken runs the removal token's store operations against moto, over the
// real wire: taking, racing, giving back, the lost responses of both, and that the
// token item is never listed as a slot lease.
func TestRemovalToken(t *testing.T) {
	h := harness.Start(t)
	w := h.NewWorld(t, "leases")
	s := &suite{h: h, table: w.Table}
	s.db, s.direct = dynamoClients(h)

	remover := func(slot int, instance, invocation string) lease.Remover {
		return lease.Remover{Slot: slot, Instance: instance, LeaseVersion: 1, Invocation: invocation, Until: time.Now().Add(time.Minute)}
	}
	getRemoval := func(t *testing.T, st *lease.Store) lease.Removal {
		t.Helper()
		r, err := st.GetRemoval(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	t.Run("never written is free", func(t *testing.T) {
		r := getRemoval(t, s.store("token-new"))
		if r.Held() || r.Exists() || r.Version != 0 || r.Slot != lease.RemovalSlot {
			t.Fatalf("token of a new cluster: %+v, want free at version 0", r)
		}
	})

	t.Run("take and give back", func(t *testing.T) {
		st := s.store("token-cycle")
		a := remover(1, "i-a", "terminate/req-1")
		taken, err := st.TakeRemoval(t.Context(), getRemoval(t, st), a, "planned termination")
		if err != nil {
			t.Fatal(err)
		}
		stored := getRemoval(t, st)
		if !stored.HeldBy(a) || stored.Version != 1 || stored.Kind != lease.RemovalKind || stored.TakenAt == "" || !stored.InvocationAlive(time.Now()) {
			t.Fatalf("stored token %+v, want held by %+v at version 1", stored, a)
		}
		if taken.Version != stored.Version || taken.UpdatedAt != stored.UpdatedAt {
			t.Errorf("TakeRemoval returned %+v, stored %+v", taken, stored)
		}
		// A second delivery of the same removal re-stamps its invocation; the removal
		// keeps the token from when it was first taken.
		a2 := a
		a2.Invocation = "terminate/req-2"
		again, err := st.TakeRemoval(t.Context(), stored, a2, "redelivered")
		if err != nil || !again.HeldBy(a2) || again.TakenAt != stored.TakenAt || again.Version != 2 {
			t.Fatalf("re-stamp: %+v, %v", again, err)
		}
		freed, err := st.GiveBackRemoval(t.Context(), again, "slot released")
		if err != nil {
			t.Fatal(err)
		}
		stored = getRemoval(t, st)
		if stored.Held() || stored.LastHolder != "i-a" || stored.Holder != "" || stored.Invocation != "" || stored.Version != 3 || freed.Version != 3 {
			t.Fatalf("after give back: stored %+v, returned %+v", stored, freed)
		}
		if n := len(stored.History); n != 3 || stored.History[2].Event != "given back" {
			t.Errorf("history %+v, want taken, taken, given back", stored.History)
		}
		// Giving back again from the held view recognises the give back that landed.
		if r, err := st.GiveBackRemoval(t.Context(), again, "again"); err != nil || r.Version != 3 {
			t.Errorf("repeated give back: %+v, %v", r, err)
		}
	})

	t.Run("of two takers exactly one wins", func(t *testing.T) {
		st := s.store("token-race")
		cur := getRemoval(t, st)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = st.TakeRemoval(t.Context(), cur, remover(i, "i-"+string(rune('a'+i)), "inv"), "race")
			}()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, lease.ErrFenced):
				t.Errorf("a loser got %v, want ErrFenced", err)
			}
		}
		if won != 1 {
			t.Fatalf("%d takers won, want exactly 1", won)
		}
	})

	t.Run("a taken token is fenced for a stale view", func(t *testing.T) {
		st := s.store("token-stale")
		free := getRemoval(t, st)
		if _, err := st.TakeRemoval(t.Context(), free, remover(0, "i-a", "inv-a"), "first"); err != nil {
			t.Fatal(err)
		}
		_, err := st.TakeRemoval(t.Context(), free, remover(2, "i-b", "inv-b"), "stale view")
		fenced(t, "take from a stale view", err)
		_, err = st.GiveBackRemoval(t.Context(), lease.Removal{State: lease.RemovalHeld, Holder: "i-b", HolderSlot: 2, Version: 7, UpdatedAt: "x"}, "not ours")
		fenced(t, "give back of another holder's token", err)
		if r := getRemoval(t, st); r.Holder != "i-a" {
			t.Errorf("token %+v, want still held for i-a", r)
		}
	})

	t.Run("lost responses are recognised", func(t *testing.T) {
		st := s.store("token-lost")
		a := remover(0, "i-a", "inv-a")
		t.Cleanup(h.ClearFaults)
		h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.LostResponse, Times: 1})
		taken, err := st.TakeRemoval(t.Context(), getRemoval(t, st), a, "lost")
		if err != nil || !taken.HeldBy(a) {
			t.Fatalf("take with a lost response: %+v, %v", taken, err)
		}
		h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.LostResponse, Times: 1})
		freed, err := st.GiveBackRemoval(t.Context(), getRemoval(t, st), "lost")
		if err != nil || freed.Held() {
			t.Fatalf("give back with a lost response: %+v, %v", freed, err)
		}
		if r := getRemoval(t, st); r.Version != 2 || len(r.History) != 2 {
			t.Errorf("token %+v: want one take and one give back", r)
		}
	})

	t.Run("ending an invocation keeps the removal", func(t *testing.T) {
		st := s.store("token-end")
		a := remover(0, "i-a", "inv-a")
		taken, err := st.TakeRemoval(t.Context(), getRemoval(t, st), a, "x")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.EndRemovalInvocation(t.Context(), taken, "failed; redelivered"); err != nil {
			t.Fatal(err)
		}
		r := getRemoval(t, st)
		if !r.HeldFor(a) || r.InvocationAlive(time.Now().Add(time.Millisecond)) {
			t.Errorf("token %+v: want held for the removal with no live invocation", r)
		}
	})

	t.Run("stopped: recorded once, kept by a re-stamp, cleared for the next removal", func(t *testing.T) {
		st := s.store("token-stopped")
		a := remover(1, "i-a", "inv-a")
		taken, err := st.TakeRemoval(t.Context(), getRemoval(t, st), a, "x")
		if err != nil {
			t.Fatal(err)
		}
		h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.LostResponse, Times: 1})
		marked, err := st.MarkRemovalStopped(t.Context(), taken, "broker stopped")
		h.ClearFaults()
		if err != nil || !marked.Stopped {
			t.Fatalf("mark with a lost response: %+v, %v", marked, err)
		}
		if r := getRemoval(t, st); !r.Stopped || !r.HeldBy(a) || r.History[len(r.History)-1].Event != "stopped" {
			t.Fatalf("token %+v: want held and stopped, with the event in its history", r)
		}
		a2 := a
		a2.Invocation = "inv-a2"
		if again, err := st.TakeRemoval(t.Context(), getRemoval(t, st), a2, "redelivered"); err != nil || !again.Stopped {
			t.Fatalf("a re-stamp of the same removal lost its stopped mark: %+v, %v", again, err)
		}
		b := remover(2, "i-b", "inv-b")
		if next, err := st.TakeRemoval(t.Context(), getRemoval(t, st), b, "taken over"); err != nil || next.Stopped {
			t.Fatalf("the next removal took the token stopped: %+v, %v", next, err)
		}
		if r := getRemoval(t, st); r.Stopped || !r.HeldBy(b) {
			t.Fatalf("stored %+v: want held by the next removal, not stopped", r)
		}
		_, err = st.MarkRemovalStopped(t.Context(), taken, "stale")
		fenced(t, "marking from a stale view", err)
	})

	t.Run("a token taken by force goes back to the removal it was taken from", func(t *testing.T) {
		// Seed 290 of the campaign: A holds the token and is not over; B takes it at its
		// bound; B ends and gives it back. C must then find it held for A (A may still
		// stop its broker), not free.
		st := s.store("token-displaced")
		a, b, c := remover(3, "i-a", "inv-a"), remover(2, "i-b", "inv-b"), remover(5, "i-c", "inv-c")
		if _, err := st.TakeRemoval(t.Context(), getRemoval(t, st), a, "first"); err != nil {
			t.Fatal(err)
		}
		taken, err := st.TakeOverRemoval(t.Context(), getRemoval(t, st), b, "forced after the bound")
		if err != nil {
			t.Fatal(err)
		}
		if !taken.HeldBy(b) || !taken.DisplacedBy(a) || len(taken.Displaced) != 1 {
			t.Fatalf("after the takeover: %+v, want held by b with a displaced", taken)
		}
		if r := getRemoval(t, st); !r.HeldBy(b) || !r.DisplacedBy(a) {
			t.Fatalf("stored after the takeover: %+v", r)
		}
		// A sees its broker stopped while displaced: the mark lands on its entry.
		if _, err := st.MarkDisplacedStopped(t.Context(), getRemoval(t, st), a, "broker 3 stopped"); err != nil {
			t.Fatal(err)
		}
		if r := getRemoval(t, st); r.Stopped || len(r.Displaced) != 1 || !r.Displaced[0].Stopped {
			t.Fatalf("after a's mark: %+v, want a's displaced entry stopped and b's removal not", r)
		}
		h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.LostResponse, Times: 1})
		back, err := st.GiveBackRemoval(t.Context(), getRemoval(t, st), "slot 2 released")
		h.ClearFaults()
		if err != nil {
			t.Fatalf("give back with a lost response: %v", err)
		}
		r := getRemoval(t, st)
		if !r.Held() || !r.HeldFor(a) || r.HeldBy(a) || r.Invocation != "" || !r.Stopped || len(r.Displaced) != 0 || r.LastHolder != "i-b" {
			t.Fatalf("after b gave it back: stored %+v (returned %+v), want held for a's removal, no invocation, stopped, nothing displaced", r, back)
		}
		if _, err := st.TakeRemoval(t.Context(), getRemoval(t, st), c, "stale: free?"); err != nil {
			t.Fatal(err) // the store does what it is told; the decision is the caller's
		}
		if r := getRemoval(t, st); !r.HeldBy(c) || len(r.Displaced) != 0 {
			t.Fatalf("c's take: %+v", r)
		}
		// A chain: d forced from c, e forced from d; e's give back hands it to d, d's
		// to c, c's frees it.
		d, e := remover(0, "i-d", "inv-d"), remover(1, "i-e", "inv-e")
		for _, m := range []lease.Remover{d, e} {
			if _, err := st.TakeOverRemoval(t.Context(), getRemoval(t, st), m, "forced"); err != nil {
				t.Fatal(err)
			}
		}
		for _, want := range []lease.Remover{d, c} {
			if _, err := st.GiveBackRemoval(t.Context(), getRemoval(t, st), "over"); err != nil {
				t.Fatal(err)
			}
			if r := getRemoval(t, st); !r.HeldFor(want) {
				t.Fatalf("after a give back: held for %s (displaced %+v), want %s", r.Holder, r.Displaced, want.Instance)
			}
		}
		if _, err := st.GiveBackRemoval(t.Context(), getRemoval(t, st), "over"); err != nil {
			t.Fatal(err)
		}
		if r := getRemoval(t, st); r.Held() || len(r.Displaced) != 0 {
			t.Fatalf("after the last give back: %+v, want free", r)
		}
		// A displaced removal that takes the token back leaves the list.
		if _, err := st.TakeRemoval(t.Context(), getRemoval(t, st), a, "again"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.TakeOverRemoval(t.Context(), getRemoval(t, st), b, "forced"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.TakeOverRemoval(t.Context(), getRemoval(t, st), a, "forced back"); err != nil {
			t.Fatal(err)
		}
		if r := getRemoval(t, st); !r.HeldBy(a) || r.DisplacedBy(a) || !r.DisplacedBy(b) || len(r.Displaced) != 1 {
			t.Fatalf("a forced back: %+v, want held by a with only b displaced", r)
		}
	})

	t.Run("a renewal moves the stamp on", func(t *testing.T) {
		st := s.store("token-renew")
		a := remover(1, "i-a", "inv-a")
		a.Until = time.Now().Add(time.Second)
		taken, err := st.TakeRemoval(t.Context(), getRemoval(t, st), a, "x")
		if err != nil {
			t.Fatal(err)
		}
		h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.LostResponse, Times: 1})
		renewed, err := st.RenewRemoval(t.Context(), taken, time.Now().Add(time.Hour))
		h.ClearFaults()
		if err != nil {
			t.Fatalf("renew with a lost response: %v", err)
		}
		r := getRemoval(t, st)
		if !r.HeldBy(a) || !r.InvocationAlive(time.Now().Add(time.Minute)) || r.Version != renewed.Version || len(r.History) != 1 {
			t.Fatalf("token %+v: want the stamp moved on by an hour, no history entry", r)
		}
		_, err = st.RenewRemoval(t.Context(), taken, time.Now().Add(time.Hour))
		fenced(t, "renewing from a stale view", err)
	})

	t.Run("a removal's start is recorded once per claim", func(t *testing.T) {
		st := s.store("removal-start")
		l := bind(t, st, claim(t, st, 1, "i-a"))
		clock := time.Date(2026, 11, 21, 20, 0, 0, 0, time.UTC)
		st.Now = func() time.Time { return clock }
		h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.LostResponse, Times: 1})
		first, err := st.RemovalStarted(t.Context(), l)
		h.ClearFaults()
		if err != nil || !first.Equal(clock) {
			t.Fatalf("first start (response lost): %s, %v; want %s", first, err, clock)
		}
		clock = clock.Add(3 * time.Minute)
		again, err := st.RemovalStarted(t.Context(), l)
		if err != nil || !again.Equal(first) {
			t.Fatalf("a redelivery's start: %s, %v; want the first one's, %s", again, err, first)
		}
		// The slot moves on: the next holder's removal starts afresh.
		if _, err := st.Release(t.Context(), l, "released"); err != nil {
			t.Fatal(err)
		}
		next := bind(t, st, claim(t, st, 1, "i-b"))
		if moved, err := st.RemovalStarted(t.Context(), l); err != nil || !moved.Equal(clock) {
			t.Errorf("the start of a removal whose lease moved on: %s, %v; want now (%s), nothing recorded", moved, err, clock)
		}
		clock = clock.Add(time.Minute)
		if fresh, err := st.RemovalStarted(t.Context(), next); err != nil || !fresh.Equal(clock) {
			t.Errorf("the next holder's removal started at %s, %v; want %s", fresh, err, clock)
		}
	})

	t.Run("the token is not a slot lease", func(t *testing.T) {
		st := s.store("token-list")
		claim(t, st, 0, "i-a")
		claim(t, st, 2, "i-b")
		if _, err := st.TakeRemoval(t.Context(), getRemoval(t, st), remover(0, "i-a", "inv"), "x"); err != nil {
			t.Fatal(err)
		}
		leases, err := st.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(leases) != 2 || leases[0].Slot != 0 || leases[1].Slot != 2 {
			t.Fatalf("List = %+v, want slots 0 and 2 only", leases)
		}
	})
}
