package test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slot"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// BenchmarkClaim30 measures what a claim costs when 30 instances (10 per AZ) claim 30
// slots at the same moment, as after a fleet-wide launch: conditional writes per claim
// with rendezvous ordering, against the naive lowest-free-slot order as the baseline,
// both in the same run against moto. Each iteration runs `rounds` fresh clusters.
//
// matched+rendezvous is the production order: launching peers are matched to free
// slots by rank, rendezvous hashing orders the rest.
func BenchmarkClaim30(b *testing.B) {
	h := harness.Start(b)
	w := h.NewWorld(b, "bench-leases")
	cfg := h.AWSConfig()
	db, ec := dynamodb.NewFromConfig(cfg), ec2.NewFromConfig(cfg)
	var instances [3][]string // per AZ
	for i := 0; i < 30; i++ {
		instances[i%3] = append(instances[i%3], h.RunInstanceTagged(b, w, w.Subnets[i%3].ID, map[string]string{"aws:autoscaling:groupName": "bench-asg"}))
	}
	azSlots := [3][]int{}
	for s := 0; s < 30; s++ {
		azSlots[s%3] = append(azSlots[s%3], s)
	}
	res := &resources.Manager{EC2: ec}
	const rounds = 3
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
			for b.Loop() {
				for r := 0; r < rounds; r++ {
					seq++
					store := lease.NewStore(db, w.Table, fmt.Sprintf("bench-%s-%d", order.name, seq))
					store.Writes = func() { writes.Add(1) }
					claimer := &slot.Claimer{Store: store, States: res.InstanceStates, Order: order.fn, Peers: order.peers}
					held := make([]int, 30)
					var wg sync.WaitGroup
					for az := 0; az < 3; az++ {
						for i, id := range instances[az] {
							wg.Add(1)
							go func() {
								defer wg.Done()
								c, err := claimer.Claim(context.Background(), id, w.Subnets[az].AZ, azSlots[az], "bench")
								if err != nil {
									b.Error(err)
									return
								}
								held[az*10+i] = c.Lease.Slot
								claims.Add(1)
							}()
						}
					}
					wg.Wait()
					seen := map[int]bool{}
					for _, s := range held {
						if seen[s] {
							b.Fatalf("slot %d claimed twice", s)
						}
						seen[s] = true
					}
				}
			}
			b.ReportMetric(float64(writes.Load())/float64(claims.Load()), "writes/claim")
			b.ReportMetric(float64(claims.Load())/float64(b.N), "claims/op")
		})
	}
}
