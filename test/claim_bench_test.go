package test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slot"
	"github.com/slotkeeper/slotkeeper/test/emulator"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// BenchmarkClaim30 measures what a claim costs when 30 instances (10 per AZ) claim 30
// slots at the same moment, as after a fleet-wide launch: conditional writes per claim
// with rendezvous ordering, against the naive lowest-free-slot order as the baseline,
// both in the same run against moto. Each iteration runs `rounds` fresh clusters.
//
// matched+rendezvous is the production order: launching peers are matched to free
// slots by rank, rendezvous hashing orders the rest.
func BenchmarkClaim30(b *testing.B) { benchmarkClaim(b, 30, 3) }

// BenchmarkClaim100 is BenchmarkClaim30 with 100 instances claiming 100 slots over 3
// AZs (34, 33, 33), one cluster per iteration (moto's tag filters, which every
// claim's look at its launching peers uses, make each round take minutes there).
func BenchmarkClaim100(b *testing.B) { benchmarkClaim(b, 100, 1) }

// benchmarkClaim runs n concurrent launches claiming n slots in each of rounds fresh
// clusters per iteration, for each claim order,
// with the proxy's latency model on (test/emulator, scale 1, seeded): every instance
// claims, then binds its lease (the bind write; the attaches in between are the
// instance's own and do not contend). It reports conditional writes per claim and the
// time from the first claim until every slot is bound (ms, mean over the rounds).
func benchmarkClaim(b *testing.B, n, rounds int) {
	h := harness.Start(b)
	w := h.NewWorld(b, "bench-leases")
	cfg := h.AWSConfig()
	db, ec := dynamodb.NewFromConfig(cfg), ec2.NewFromConfig(cfg)
	var instances [3][]string // per AZ
	for i := 0; i < n; i++ {
		instances[i%3] = append(instances[i%3], h.RunInstanceTagged(b, w, w.Subnets[i%3].ID, map[string]string{"aws:autoscaling:groupName": "bench-asg"}))
	}
	azSlots := [3][]int{}
	for s := 0; s < n; s++ {
		azSlots[s%3] = append(azSlots[s%3], s)
	}
	res := &resources.Manager{EC2: ec}
	seq := 0
	peers := func(ctx context.Context, az string) ([]string, error) {
		return res.GroupInstances(ctx, "bench-asg", az)
	}
	for _, order := range []struct {
		name  string
		fn    slot.Order
		peers func(context.Context, string) ([]string, error)
	}{
		{"matched+rendezvous", slot.Rendezvous, peers}, // what the launch function does
		{"rendezvous-only", slot.Rendezvous, nil},
		{"lowest-free", slot.LowestFirst, nil}, // the naive baseline
	} {
		b.Run(order.name, func(b *testing.B) {
			var writes, claims atomic.Int64
			var allBound time.Duration
			for b.Loop() {
				for r := 0; r < rounds; r++ {
					seq++
					name := fmt.Sprintf("bench-%s-%d", order.name, seq)
					store, binder := lease.NewStore(db, w.Table, name), lease.NewStore(db, w.Table, name)
					store.Writes = func() { writes.Add(1) } // the claims' writes, not the binds'
					claimer := &slot.Claimer{Store: store, States: res.InstanceStates, Order: order.fn, Peers: order.peers}
					var mu sync.Mutex
					held := map[int]string{}
					var wg sync.WaitGroup
					h.SetLatency(&emulator.LatencyModel{Seed: uint64(seq), Scale: 1})
					began := time.Now()
					for az := 0; az < 3; az++ {
						for _, id := range instances[az] {
							wg.Add(1)
							go func() {
								defer wg.Done()
								c, err := claimer.Claim(context.Background(), id, w.Subnets[az].AZ, azSlots[az], "bench")
								if err != nil {
									b.Error(err)
									return
								}
								claims.Add(1)
								if _, err := binder.Bind(context.Background(), c.Lease, lease.Binding{ENIID: "eni-bench", VolumeID: "vol-bench", IP: "10.0.0.1"}, "bench"); err != nil {
									b.Error(err)
									return
								}
								mu.Lock()
								defer mu.Unlock()
								if other, ok := held[c.Lease.Slot]; ok {
									b.Errorf("slot %d claimed by %s and %s", c.Lease.Slot, other, id)
								}
								held[c.Lease.Slot] = id
							}()
						}
					}
					wg.Wait()
					allBound += time.Since(began)
					h.SetLatency(nil)
					if len(held) != n {
						b.Fatalf("%d of %d slots bound", len(held), n)
					}
				}
			}
			b.ReportMetric(float64(writes.Load())/float64(claims.Load()), "writes/claim")
			b.ReportMetric(float64(claims.Load())/float64(b.N), "claims/op")
			b.ReportMetric(ms(allBound)/float64(b.N*rounds), "ms-to-all-bound")
		})
	}
}
