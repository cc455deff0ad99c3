package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// scaleRow is one line of BenchmarkScale's table: AWS calls and wall time per
// operation at one slot count.
type scaleRow struct {
	slots                       int
	claimCalls, claimMS         float64
	reconcileCalls, reconcileMS float64
	statusCalls, statusMS       float64
}

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
// It prints the table at the end.
func BenchmarkScale(b *testing.B) {
	var rows []scaleRow
	for _, n := range []int{3, 30, 300, 1000} {
		b.Run(fmt.Sprintf("slots=%d", n), func(b *testing.B) {
			h := harness.Start(b)
			s := newScale(b, h, n, n-1) // the last slot is free for the claims
			row := scaleRow{slots: n}
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
				row.claimCalls, row.claimMS = float64(calls)/float64(b.N), ms(elapsed)/float64(b.N)
				b.ReportMetric(row.claimCalls, "aws-calls/op")
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
				row.reconcileCalls, row.reconcileMS = float64(calls)/float64(b.N), ms(elapsed)/float64(b.N)
				b.ReportMetric(row.reconcileCalls, "aws-calls/op")
				b.ReportMetric(row.reconcileCalls/float64(n), "aws-calls/slot")
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
				row.statusCalls, row.statusMS = float64(sum(h.CallCounts()))/float64(b.N), ms(elapsed)/float64(b.N)
				b.ReportMetric(row.statusCalls, "aws-calls/op")
			})
			rows = append(rows, row)
		})
	}
	var t strings.Builder
	fmt.Fprintf(&t, "AWS calls and wall time per operation, against moto:\n")
	fmt.Fprintf(&t, "| slots | claim calls | claim ms | reconcile calls | calls/slot | reconcile ms | status calls | status ms |\n")
	fmt.Fprintf(&t, "|------:|------------:|---------:|----------------:|-----------:|-------------:|-------------:|----------:|\n")
	for _, r := range rows {
		fmt.Fprintf(&t, "| %d | %.1f | %.0f | %.1f | %.3f | %.0f | %.1f | %.0f |\n", r.slots, r.claimCalls, r.claimMS,
			r.reconcileCalls, r.reconcileCalls/float64(r.slots), r.reconcileMS, r.statusCalls, r.statusMS)
	}
	// b.Log of a benchmark that only runs sub-benchmarks is not printed: the table goes
	// to standard output, next to the benchmark lines (make bench keeps it in bench.txt).
	fmt.Print(t.String())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
