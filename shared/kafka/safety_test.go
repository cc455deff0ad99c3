package kafka

import (
	"slices"
	"strings"
	"testing"
)

// part builds a partition of topic "t".
func part(p int32, minISR int, replicas, isr []int32) Partition {
	return Partition{Topic: "t", Partition: p, Leader: replicas[0], Replicas: replicas, ISR: isr, MinISR: minISR}
}

func TestRemovalSafeRule(t *testing.T) {
	r012 := []int32{0, 1, 2}
	tests := []struct {
		name    string
		broker  int32
		parts   []Partition
		safe    bool
		reasons []string // Reason of each blocker, in order
		checked int
		ignored int
	}{
		{
			name: "fully in sync", broker: 0,
			parts: []Partition{part(0, 2, r012, r012)},
			safe:  true, checked: 1,
		},
		{
			name: "RF equal to min ISR is ignored even when the broker is the only ISR member", broker: 0,
			parts: []Partition{part(0, 2, []int32{0, 1}, []int32{0})},
			safe:  true, ignored: 1,
		},
		{
			name: "RF below min ISR is ignored", broker: 0,
			parts: []Partition{part(0, 3, []int32{0, 1}, []int32{0, 1})},
			safe:  true, ignored: 1,
		},
		{
			name: "RF 1 with min ISR 1 is ignored", broker: 0,
			parts: []Partition{part(0, 1, []int32{0}, []int32{0})},
			safe:  true, ignored: 1,
		},
		{
			name: "ISR == min ISR with the broker in the ISR blocks", broker: 0,
			parts:   []Partition{part(0, 2, r012, []int32{0, 1})},
			reasons: []string{ReasonAtMinISR}, checked: 1,
		},
		{
			name: "ISR == min ISR without the broker is safe", broker: 0,
			parts: []Partition{part(0, 2, r012, []int32{1, 2})},
			safe:  true, checked: 1,
		},
		{
			name: "already under min ISR, broker a replica outside the ISR, blocks", broker: 0,
			parts:   []Partition{part(0, 2, r012, []int32{1})},
			reasons: []string{ReasonUnderMinISR}, checked: 1,
		},
		{
			name: "already under min ISR, broker the last ISR member, blocks", broker: 0,
			parts:   []Partition{part(0, 2, r012, []int32{0})},
			reasons: []string{ReasonUnderMinISR}, checked: 1,
		},
		{
			name: "offline partition the broker replicates blocks", broker: 0,
			parts:   []Partition{{Topic: "t", Leader: -1, Replicas: r012, ISR: nil, MinISR: 2}},
			reasons: []string{ReasonUnderMinISR}, checked: 1,
		},
		{
			name: "broker not a replica: unhealthy partitions elsewhere do not matter", broker: 0,
			parts: []Partition{part(0, 2, []int32{1, 2, 3}, []int32{1}), part(1, 2, []int32{1, 2, 3}, []int32{1, 2})},
			safe:  true,
		},
		{
			name: "topic-level min ISR 3 (RF 5) blocks where the broker default 2 would not", broker: 0,
			parts: []Partition{
				{Topic: "strict", Replicas: []int32{0, 1, 2, 3, 4}, ISR: []int32{0, 1, 2}, MinISR: 3, MinISRSource: MinISRTopic},
				{Topic: "plain", Replicas: []int32{0, 1, 2, 3, 4}, ISR: []int32{0, 1, 2}, MinISR: 2, MinISRSource: MinISRBroker},
			},
			reasons: []string{ReasonAtMinISR}, checked: 2,
		},
		{
			name: "topic-level min ISR 1 lets go where the broker default 2 blocks", broker: 0,
			parts: []Partition{
				{Topic: "relaxed", Replicas: r012, ISR: []int32{0, 1}, MinISR: 1, MinISRSource: MinISRTopic},
				{Topic: "plain", Replicas: r012, ISR: []int32{0, 1}, MinISR: 2, MinISRSource: MinISRBroker},
			},
			reasons: []string{ReasonAtMinISR}, checked: 2,
		},
		{
			name: "min ISR 0 (unset) counts as 1", broker: 0,
			parts:   []Partition{part(0, 0, r012, []int32{0})},
			reasons: []string{ReasonAtMinISR}, checked: 1,
		},
		{
			name: "several blockers, sorted, among safe and ignored partitions", broker: 2,
			parts: []Partition{
				part(3, 2, r012, []int32{2}),          // under
				part(1, 2, r012, []int32{1, 2}),       // at, broker in ISR
				part(2, 2, r012, r012),                // fine
				part(0, 2, []int32{2, 0}, []int32{2}), // ignored
				part(4, 2, []int32{0, 1}, []int32{}),  // not a replica
			},
			reasons: []string{ReasonAtMinISR, ReasonUnderMinISR}, checked: 3, ignored: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := RemovalSafe(tc.broker, tc.parts)
			var reasons []string
			for _, b := range v.Blocking {
				reasons = append(reasons, b.Reason)
			}
			if v.Safe != tc.safe || !slices.Equal(reasons, tc.reasons) || v.Checked != tc.checked || v.Ignored != tc.ignored {
				t.Fatalf("got safe=%v reasons=%q checked=%d ignored=%d, want safe=%v reasons=%q checked=%d ignored=%d\n%s",
					v.Safe, reasons, v.Checked, v.Ignored, tc.safe, tc.reasons, tc.checked, tc.ignored, v)
			}
			if v.Broker != tc.broker {
				t.Fatalf("verdict names broker %d, want %d", v.Broker, tc.broker)
			}
			t.Logf("%s", v)
		})
	}
}

func TestRemovalSafeNamesBlockers(t *testing.T) {
	parts := []Partition{
		{Topic: "orders", Partition: 1, Replicas: []int32{0, 1, 2}, ISR: []int32{0, 1}, MinISR: 2},
		{Topic: "audit", Partition: 0, Replicas: []int32{0, 1, 2}, ISR: []int32{2}, MinISR: 2},
	}
	v := RemovalSafe(0, parts)
	want := []Blocker{
		{Topic: "audit", Partition: 0, Replicas: []int32{0, 1, 2}, ISR: []int32{2}, MinISR: 2, Reason: ReasonUnderMinISR},
		{Topic: "orders", Partition: 1, Replicas: []int32{0, 1, 2}, ISR: []int32{0, 1}, MinISR: 2, Reason: ReasonAtMinISR},
	}
	if !slices.EqualFunc(v.Blocking, want, func(a, b Blocker) bool { return a.String() == b.String() }) {
		t.Fatalf("blockers %v, want %v", v.Blocking, want)
	}
	s := v.String()
	for _, frag := range []string{"broker 0 may not leave", "audit/0: isr [2] of replicas [0 1 2], min.insync.replicas 2", "orders/1"} {
		if !strings.Contains(s, frag) {
			t.Fatalf("verdict %q does not mention %q", s, frag)
		}
	}
	// The verdict owns its slices: editing the input afterwards does not change it.
	parts[0].ISR[0] = 9
	if v.Blocking[1].ISR[0] != 0 {
		t.Fatalf("blocker shares the caller's ISR slice")
	}
}
