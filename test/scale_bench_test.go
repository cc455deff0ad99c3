package test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// BenchmarkScale measures a claim, a reconcile pass and `slotctl status` at 3, 30, 300
// and 1,000 slots against moto, each size in a moto of its own: AWS calls per operation
// (what AWS bills and throttles, the same against AWS) and wall time (moto's; its tag
// filters scan every tag of the region for each resource, so the describes that find a
// slot's volume or ENI by its tags cost seconds at a thousand slots there, not in EC2).
//
//   - claim: one instance launches and takes the one free slot (the launch function:
//     claim, attach the ENI and volume, tag, bind, point the disk alarm, CONTINUE);
//   - reconcile: a scheduled pass of a healthy cluster (leases, holders' states, orphans,
//     pending and still-full growths, disk alarms; DNS not managed, no Kafka);
//   - status: `slotctl status --json`.
//
// make bench prints the figures in its table (test/benchreport) and keeps them in
// docs/benchmarks.md.
func BenchmarkScale(b *testing.B) {
	for _, n := range []int{3, 30, 300, 1000} {
		b.Run(fmt.Sprintf("slots=%d", n), func(b *testing.B) {
			h := harness.Start(b)
			s := newScale(b, h, n, n-1) // the last slot is free for the claims
			free := n - 1
			b.Run("claim", func(b *testing.B) {
				calls, elapsed := 0, time.Duration(0)
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					if l := s.lease(free); l.State != lease.Free {
						if _, err := s.store.Release(context.Background(), l, "benchmark: free the slot for the next claim"); err != nil {
							b.Fatal(err)
						}
						h.TerminateInstance(b, l.Holder)
					}
					id := s.run(free % 3)
					h.ResetCounts()
					b.StartTimer()
					began := time.Now()
					if err := s.invoke(s.launchEvent(id)); err != nil {
						b.Fatal(err)
					}
					elapsed += time.Since(began)
					b.StopTimer()
					calls += sum(h.CallCounts())
					if l := s.lease(free); l.State != lease.Bound || l.Holder != id {
						b.Fatalf("slot %d after the claim: %+v", free, l)
					}
				}
				b.ReportMetric(float64(calls)/float64(b.N), "aws-calls/op")
				b.ReportMetric(ms(elapsed)/float64(b.N), "ms/claim")
			})
			b.Run("reconcile", func(b *testing.B) {
				calls := 0
				h.ResetCounts()
				began := time.Now()
				for i := 0; i < b.N; i++ {
					rep, err := s.reconcile.Run(context.Background(), s.scheduleEvent())
					if err != nil || rep.Outcome != reconcile.OutcomeReconciled || rep.SlotsByState["bound"] != n {
						b.Fatalf("reconcile: %+v, %v", rep, err)
					}
				}
				elapsed := time.Since(began)
				calls = sum(h.CallCounts())
				b.ReportMetric(float64(calls)/float64(b.N), "aws-calls/op")
				b.ReportMetric(float64(calls)/float64(b.N)/float64(n), "aws-calls/slot")
				b.ReportMetric(ms(elapsed)/float64(b.N), "ms/pass")
			})
			b.Run("status", func(b *testing.B) {
				h.ResetCounts()
				began := time.Now()
				for i := 0; i < b.N; i++ {
					if code, sv, stderr := s.status(); code != 0 || len(sv.Slots) != n {
						b.Fatalf("slotctl status: exit %d, %d slots\n%s", code, len(sv.Slots), stderr)
					}
				}
				elapsed := time.Since(began)
				b.ReportMetric(float64(sum(h.CallCounts()))/float64(b.N), "aws-calls/op")
				b.ReportMetric(ms(elapsed)/float64(b.N), "ms/status")
			})
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
