package kafka

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest"
)

// hungBroker accepts connections and never answers, as a stopped (SIGSTOP) Kafka
// process does: the kernel completes the handshake, nothing reads or writes.
func hungBroker(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// A call ends when its context does, whatever the connection is doing: against a
// broker that accepts and never answers, every call returns within its deadline.
func TestCallsEndWithTheirContext(t *testing.T) {
	cl := newTestClient(t, config.KafkaConfig{Bootstrap: []string{hungBroker(t)}})
	calls := map[string]func(context.Context) error{
		"Health":      func(ctx context.Context) error { _, err := cl.Health(ctx); return err },
		"Registered":  func(ctx context.Context) error { _, err := cl.Registered(ctx, 0); return err },
		"Partitions":  func(ctx context.Context) error { _, err := cl.Partitions(ctx); return err },
		"RemovalSafe": func(ctx context.Context) error { _, err := cl.RemovalSafe(ctx, 0); return err },
		"Quorum":      func(ctx context.Context) error { _, err := cl.Quorum(ctx); return err },
	}
	const deadline = 500 * time.Millisecond
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range calls {
			if !yield(k) {
				return
			}
		}
	}) {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		began := time.Now()
		err := calls[name](ctx)
		took := time.Since(began)
		cancel()
		t.Logf("%-11s returned after %s: %v", name, took.Round(time.Millisecond), err)
		if err == nil {
			t.Errorf("%s succeeded against a broker that never answers", name)
		}
		if took > deadline+time.Second {
			t.Errorf("%s took %s, past its %s deadline", name, took, deadline)
		}
	}
}

// Questions any broker can answer do not wait on a hung bootstrap broker: it is asked
// alongside another, and once the cluster's brokers are known, after them.
func TestHungSeedCostsNoTime(t *testing.T) {
	c := kafkatest.Start(t)
	c.CreateTopic(t, "orders", 3, 3, nil)
	cl := newTestClient(t, config.KafkaConfig{Bootstrap: append([]string{hungBroker(t)}, c.Addrs...)})
	ctx := context.Background()
	for i := range 5 {
		began := time.Now()
		h, err := cl.Health(ctx)
		took := time.Since(began)
		t.Logf("Health %d: %s, %+v, %v", i, took.Round(time.Millisecond), h, err)
		if err != nil || len(h.Brokers) != 3 {
			t.Fatalf("Health with a hung seed: %+v, %v", h, err)
		}
		if took > RequestTimeout {
			t.Errorf("Health waited %s on the hung seed", took)
		}
	}
	if got := cl.candidates(); slices.Contains(got[:3], cl.seeds[0]) {
		t.Errorf("candidates %v: the hung seed is not asked last", got)
	}
}

func TestMergeViews(t *testing.T) {
	a := []Partition{
		{Topic: "orders", Partition: 0, Leader: 0, Replicas: []int32{0, 1, 2}, ISR: []int32{0, 1, 2}},
		{Topic: "orders", Partition: 1, Leader: 1, Replicas: []int32{1, 2, 0}, ISR: []int32{1, 2, 0}},
	}
	b := []Partition{
		{Topic: "fresh", Partition: 0, Leader: 2, Replicas: []int32{2, 0, 1}, ISR: []int32{2, 0, 1}},
		{Topic: "orders", Partition: 0, Leader: 0, Replicas: []int32{0, 1, 2}, ISR: []int32{0, 1}},     // a fresher view: 2 dropped out
		{Topic: "orders", Partition: 1, Leader: -1, Replicas: []int32{1, 2, 0, 3}, ISR: []int32{2, 0}}, // reassignment, no leader
	}
	deep := func(ps []Partition) []Partition {
		out := slices.Clone(ps)
		for i := range out {
			out[i].Replicas, out[i].ISR = slices.Clone(out[i].Replicas), slices.Clone(out[i].ISR)
		}
		return out
	}
	// Views in topic/partition order (as partitionsOf lists them) merge in one walk;
	// views in any other order through an index: both give the same.
	unsorted := deep(b)
	slices.Reverse(unsorted)
	for name, got := range map[string][]Partition{"sorted": mergeViews(deep(a), deep(b)), "unsorted": mergeViews(deep(a), unsorted)} {
		checkMerged(t, name, got)
	}
}

func checkMerged(t *testing.T, name string, got []Partition) {
	t.Helper()
	want := []Partition{
		{Topic: "fresh", Partition: 0, Leader: 2, Replicas: []int32{2, 0, 1}, ISR: []int32{2, 0, 1}},
		{Topic: "orders", Partition: 0, Leader: 0, Replicas: []int32{0, 1, 2}, ISR: []int32{0, 1}},
		{Topic: "orders", Partition: 1, Leader: -1, Replicas: []int32{1, 2, 0, 3}, ISR: []int32{2, 0}},
	}
	if len(got) != len(want) {
		t.Fatalf("%s: merged %+v", name, got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Topic != w.Topic || g.Partition != w.Partition || g.Leader != w.Leader || !slices.Equal(g.Replicas, w.Replicas) || !slices.Equal(g.ISR, w.ISR) {
			t.Errorf("%s: partition %d: %+v, want %+v", name, i, g, w)
		}
	}
}

// Brokers that did not answer are named in the verdict, and an unknown topic makes
// it not safe even without a blocking partition.
func TestVerdictNamesUnreachableAndUnknown(t *testing.T) {
	v := Verdict{Broker: 0, Safe: true, Checked: 3, Unreachable: []int32{2}}
	if s := v.String(); !strings.Contains(s, "brokers [2] did not answer") {
		t.Errorf("%q", s)
	}
	v = Verdict{Broker: 0, Unknown: []string{"topic fresh: min.insync.replicas unknown"}}
	if s := v.String(); !strings.Contains(s, "may not leave") || !strings.Contains(s, "fresh") {
		t.Errorf("%q", s)
	}
	parts := []Partition{{Topic: "orders", Partition: 0, Replicas: []int32{0, 1, 2}, ISR: []int32{0, 1}, Silent: []int32{2}, MinISR: 2}}
	r := RemovalSafe(0, parts)
	if r.Safe || len(r.Blocking) != 1 || !slices.Equal(r.Blocking[0].Silent, []int32{2}) || !strings.Contains(r.Blocking[0].String(), "not answering: [2]") {
		t.Errorf("verdict %s, blockers %+v", r, r.Blocking)
	}
}

// An ISR member the broker list no longer has (Kafka lists a fenced broker in the
// ISRs for a moment) cannot answer: it counts out of the ISR, with the others asked
// at the same time.
func TestUnregisteredISRMemberCountsOut(t *testing.T) {
	c := kafkatest.Start(t)
	c.CreateTopic(t, "orders", 3, 3, nil)
	cl := newTestClient(t, c.Config())
	c.Unregister(2) // the ISRs still list it
	v, err := cl.RemovalSafe(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", v)
	if v.Safe || !slices.Equal(v.Unreachable, []int32{2}) || len(v.Blocking) != 3 || !slices.Equal(v.Blocking[0].Silent, []int32{2}) {
		t.Fatalf("verdict %s: want orders blocked, broker 2 unreachable and silent", v)
	}
}
