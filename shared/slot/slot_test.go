package slot

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/lease"
)

func TestClaimable(t *testing.T) {
	tests := []struct {
		state  lease.State
		holder string // EC2 state of the holder
		want   bool
	}{
		{lease.Free, Gone, true},
		{lease.Claimed, Pending, false},
		{lease.Claimed, Running, false},
		{lease.Claimed, Stopping, true},
		{lease.Claimed, Stopped, true},
		{lease.Claimed, ShuttingDown, true},
		{lease.Claimed, Terminated, true},
		{lease.Claimed, Gone, true},
		{lease.Bound, Running, false},
		{lease.Bound, Pending, false},
		{lease.Bound, Stopped, false}, // a stopped broker may come back: never dispossess it
		{lease.Bound, Stopping, false},
		{lease.Bound, ShuttingDown, true},
		{lease.Bound, Terminated, true},
		{lease.Bound, Gone, true},
		{lease.Draining, Running, false},
		{lease.Draining, Terminated, true},
		{lease.State("weird"), Gone, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s", tt.state, stateName(tt.holder)), func(t *testing.T) {
			got, why := Claimable(lease.Lease{State: tt.state, Holder: "i-0000000a"}, tt.holder)
			if got != tt.want || why == "" {
				t.Errorf("Claimable = %v (%q), want %v with a reason", got, why, tt.want)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	const me = "i-000000000000000aa"
	azSlots := []int{1, 4, 7}
	bound := func(s int, holder string) lease.Lease {
		return lease.Lease{Slot: s, State: lease.Bound, Holder: holder, Version: 3}
	}
	claimed := func(s int, holder string) lease.Lease {
		return lease.Lease{Slot: s, State: lease.Claimed, Holder: holder, Version: 1}
	}
	tests := []struct {
		name      string
		leases    []lease.Lease
		states    map[string]string
		wantHeld  int   // -1 = none
		wantCands []int // in LowestFirst order
	}{
		{"empty table: every AZ slot", nil, nil, -1, []int{1, 4, 7}},
		{"already holds a bound slot: reuse", []lease.Lease{bound(4, me)}, nil, 4, nil},
		{"already holds a claim in another AZ's slot: reuse, never a second", []lease.Lease{claimed(2, me)}, nil, 2, nil},
		{"holds two (duplicate race): the lowest", []lease.Lease{claimed(7, me), claimed(4, me)}, nil, 4, nil},
		{"released lease is free", []lease.Lease{{Slot: 1, State: lease.Free, Version: 2, LastHolder: "i-0000000b"}}, nil, -1, []int{1, 4, 7}},
		{"running holders keep their slots", []lease.Lease{bound(1, "i-0000000b"), bound(7, "i-0000000c")},
			map[string]string{"i-0000000b": Running, "i-0000000c": Running}, -1, []int{4}},
		{"terminated holder's slot is claimable", []lease.Lease{bound(1, "i-0000000b")},
			map[string]string{"i-0000000b": Terminated}, -1, []int{1, 4, 7}},
		{"holder gone from EC2", []lease.Lease{bound(1, "i-0000000b")}, map[string]string{}, -1, []int{1, 4, 7}},
		{"stale claim of a dead claimer", []lease.Lease{claimed(4, "i-0000000b")},
			map[string]string{"i-0000000b": Terminated}, -1, []int{1, 4, 7}},
		{"claim in progress by a running claimer", []lease.Lease{claimed(4, "i-0000000b")},
			map[string]string{"i-0000000b": Running}, -1, []int{1, 7}},
		{"AZ full", []lease.Lease{bound(1, "i-b"), bound(4, "i-c"), bound(7, "i-d")},
			map[string]string{"i-b": Running, "i-c": Running, "i-d": Pending}, -1, nil},
		{"other AZs' free slots are not candidates", []lease.Lease{bound(1, "i-b"), bound(4, "i-c"), bound(7, "i-d")},
			map[string]string{"i-b": Running, "i-c": Running, "i-d": Running}, -1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[int]lease.Lease{}
			for _, l := range tt.leases {
				m[l.Slot] = l
			}
			d := Decide(me, azSlots, m, tt.states, nil, LowestFirst)
			if tt.wantHeld >= 0 {
				if d.Held == nil || d.Held.Slot != tt.wantHeld || len(d.Candidates) != 0 {
					t.Fatalf("want reuse of slot %d, got %+v", tt.wantHeld, d)
				}
				return
			}
			if d.Held != nil {
				t.Fatalf("unexpected reuse of slot %d", d.Held.Slot)
			}
			var got []int
			for _, c := range d.Candidates {
				got = append(got, c.Slot)
			}
			if !slices.Equal(got, tt.wantCands) {
				t.Fatalf("candidates %v, want %v", got, tt.wantCands)
			}
		})
	}
}

func TestDecideKeepsVersionOfCandidates(t *testing.T) {
	m := map[int]lease.Lease{4: {Slot: 4, State: lease.Free, Version: 9, UpdatedAt: "t"}}
	d := Decide("i-0000000a", []int{4}, m, nil, nil, LowestFirst)
	if len(d.Candidates) != 1 || d.Candidates[0].Version != 9 || d.Candidates[0].UpdatedAt != "t" {
		t.Fatalf("a candidate must carry the version it was read at (the claim is conditioned on it): %+v", d.Candidates)
	}
}

func TestRendezvousIsAPermutationAndStable(t *testing.T) {
	slots := []int{0, 3, 6, 9, 12}
	a := Rendezvous("i-0123456789abcdef0", slots)
	b := Rendezvous("i-0123456789abcdef0", slices.Clone(slots))
	if !slices.Equal(a, b) {
		t.Fatalf("not deterministic: %v vs %v", a, b)
	}
	sorted := slices.Clone(a)
	slices.Sort(sorted)
	if !slices.Equal(sorted, slots) {
		t.Fatalf("not a permutation of %v: %v", slots, a)
	}
}

// Instances launching together should mostly start with different slots: with 10
// slots and 10 instances, count how many distinct first choices there are over many
// simulated launches. Lowest-first always gives 1; a uniform random choice gives
// about 6.5 (10·(1-(9/10)^10)).
func TestRendezvousSpreadsFirstChoices(t *testing.T) {
	slots := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	total := 0
	const rounds = 200
	for r := 0; r < rounds; r++ {
		first := map[int]bool{}
		for i := 0; i < 10; i++ {
			first[Rendezvous(fmt.Sprintf("i-%08x%09x", r, i), slots)[0]] = true
		}
		total += len(first)
	}
	avg := float64(total) / rounds
	if avg < 5.5 {
		t.Fatalf("average distinct first choices %.2f, want ≈6.5 (random); rendezvous is not spreading", avg)
	}
	if got := LowestFirst("i-1", []int{7, 2, 5})[0]; got != 2 {
		t.Fatalf("LowestFirst first = %d", got)
	}
}

func TestDecideMatchesPeersToFreeSlots(t *testing.T) {
	azSlots := []int{0, 3, 6, 9}
	bound := func(s int, holder string) lease.Lease {
		return lease.Lease{Slot: s, State: lease.Bound, Holder: holder}
	}
	tests := []struct {
		name      string
		me        string
		peers     []string
		leases    []lease.Lease
		states    map[string]string
		wantFirst int
	}{
		{"rank 0 takes the lowest free slot", "i-a", []string{"i-c", "i-a", "i-b"}, nil, nil, 0},
		{"rank 2 takes the third", "i-c", []string{"i-c", "i-a", "i-b"}, nil, nil, 6},
		{"peers holding a lease drop out with their slot", "i-c", []string{"i-a", "i-b", "i-c", "i-z"},
			[]lease.Lease{bound(0, "i-a")}, map[string]string{"i-a": Running}, 6},
		{"a running broker outside the peers does not shift ranks", "i-b", []string{"i-b", "i-c"},
			[]lease.Lease{bound(3, "i-x")}, map[string]string{"i-x": Running}, 0},
		{"more peers than slots wrap around", "i-e", []string{"i-a", "i-b", "i-c", "i-d", "i-e"}, nil, nil, 0},
		{"not among the peers: order only", "i-q", []string{"i-a"}, nil, nil, 9},
		{"duplicated peer ids count once", "i-b", []string{"i-a", "i-a", "i-b"}, nil, nil, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[int]lease.Lease{}
			for _, l := range tt.leases {
				m[l.Slot] = l
			}
			reverse := func(_ string, s []int) []int { s = slices.Clone(s); slices.Reverse(s); return s }
			d := Decide(tt.me, azSlots, m, tt.states, tt.peers, reverse)
			if len(d.Candidates) == 0 || d.Candidates[0].Slot != tt.wantFirst {
				t.Fatalf("first candidate %+v, want slot %d", d.Candidates, tt.wantFirst)
			}
			seen := map[int]bool{}
			for _, c := range d.Candidates {
				if seen[c.Slot] {
					t.Fatalf("slot %d listed twice: %+v", c.Slot, d.Candidates)
				}
				seen[c.Slot] = true
			}
		})
	}
}

// Every peer computing the matching from the same view gets a different first slot.
func TestMatchingIsAPerfectAssignment(t *testing.T) {
	peers := []string{"i-07", "i-03", "i-11", "i-05", "i-01"}
	firsts := map[int]bool{}
	for _, p := range peers {
		d := Decide(p, []int{2, 5, 8, 11, 14}, nil, nil, peers, Rendezvous)
		firsts[d.Candidates[0].Slot] = true
	}
	if len(firsts) != len(peers) {
		t.Fatalf("first choices %v: want %d distinct", firsts, len(peers))
	}
}

// Handover: which holders a launch with no claimable slot waits for, and which mean
// ABANDON (a healthy holder in service, another launch's claim).
func TestLeaving(t *testing.T) {
	tests := []struct {
		name   string
		state  lease.State
		holder Holder
		want   bool
		why    string
	}{
		{"healthy broker in service", lease.Bound, Holder{Running, "InService", "Healthy"}, false, "InService"},
		{"broker outside any group", lease.Bound, Holder{State: Running}, false, "unknown"},
		{"in standby (still runs Kafka)", lease.Bound, Holder{Running, "Standby", "Healthy"}, false, "Standby"},
		{"draining lease", lease.Draining, Holder{Running, "Terminating:Wait", "Healthy"}, true, "draining"},
		{"draining lease, group unknown", lease.Draining, Holder{State: Running}, true, "draining"},
		{"terminating (health replacement)", lease.Bound, Holder{Running, "Terminating:Wait", "Unhealthy"}, true, "Terminating:Wait"},
		{"terminating, hook done", lease.Bound, Holder{Running, "Terminating:Proceed", "Healthy"}, true, "Terminating:Proceed"},
		{"unhealthy, not yet terminating", lease.Bound, Holder{Running, "InService", "Unhealthy"}, true, "Unhealthy"},
		{"returning to the warm pool", lease.Bound, Holder{Running, "Warmed:Pending:Wait", "Healthy"}, true, "Warmed"},
		{"shutting down", lease.Bound, Holder{State: ShuttingDown}, true, "shutting-down"},
		{"stopping", lease.Bound, Holder{State: Stopping}, true, "stopping"},
		{"stopped", lease.Bound, Holder{Stopped, "InService", "Healthy"}, true, "stopped"},
		{"another launch's claim", lease.Claimed, Holder{Pending, "Pending:Wait", "Healthy"}, false, "another launch"},
		{"free", lease.Free, Holder{}, false, "free"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := Leaving(lease.Lease{State: tt.state, Holder: "i-0000000a"}, tt.holder)
			if got != tt.want || !strings.Contains(why, tt.why) {
				t.Errorf("Leaving = %v (%q), want %v with a reason mentioning %q", got, why, tt.want, tt.why)
			}
		})
	}
}

func TestHalted(t *testing.T) {
	for state, want := range map[string]bool{
		Pending: false, Running: false, Stopping: false, ShuttingDown: false,
		Stopped: true, Terminated: true, Gone: true,
	} {
		if got := Halted(state); got != want {
			t.Errorf("Halted(%q) = %v, want %v", state, got, want)
		}
	}
}

// Await: a launching instance whose AZ has a leaving holder waits for that slot rather
// than take a free one, unless another launching instance ranks before it for the
// leaving slots (a scale-out beside a replacement: one waits, the other claims).
func TestAwait(t *testing.T) {
	spare := lease.Lease{Slot: 4, State: lease.Free}
	away := lease.Lease{Slot: 7, State: lease.Free, VolumeID: "vol-7", UpdatedAt: "2026-01-01T00:00:00Z"}
	held := lease.Lease{Slot: 1, State: lease.Bound, Holder: "i-b"}
	tests := []struct {
		name      string
		instance  string
		d         Decision
		leaving   []int
		launching []string
		wait      []int
		first     int // first candidate when not waiting; -1: none
	}{
		{"a leaving holder, no other launch: wait", "i-b", Decision{Candidates: []lease.Lease{spare}}, []int{1}, nil, []int{1}, -1},
		{"no leaving holder: claim", "i-b", Decision{Candidates: []lease.Lease{spare}}, nil, nil, nil, 4},
		{"already holds a slot: reuse", "i-b", Decision{Held: &held}, []int{1}, nil, nil, -1},
		{"ranks first of two launches: wait", "i-a", Decision{Candidates: []lease.Lease{spare}}, []int{1}, []string{"i-c"}, []int{1}, -1},
		{"ranks second of two launches: claim", "i-c", Decision{Candidates: []lease.Lease{spare}}, []int{1}, []string{"i-a"}, nil, 4},
		{"two leaving, two launches: both wait", "i-c", Decision{Candidates: []lease.Lease{spare}}, []int{2, 1}, []string{"i-a"}, []int{1, 2}, -1},
		{"claims the slot with a volume before a never-used one", "i-c", Decision{Candidates: []lease.Lease{spare, away}}, []int{1}, []string{"i-a"}, nil, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Await(tt.instance, tt.d, tt.leaving, tt.launching)
			first := -1
			if len(got.Candidates) > 0 {
				first = got.Candidates[0].Slot
			}
			if !slices.Equal(got.Wait, tt.wait) || first != tt.first || (tt.d.Held != nil) != (got.Held != nil) {
				t.Errorf("Await = wait %v, first candidate %d, held %v; want wait %v, first %d", got.Wait, first, got.Held, tt.wait, tt.first)
			}
			if len(got.Wait) > 0 && len(got.Candidates) > 0 {
				t.Errorf("both waits and claims: %+v", got)
			}
		})
	}
}
