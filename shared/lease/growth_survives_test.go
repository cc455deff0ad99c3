package lease_test

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// A change of holder must not wipe what other paths keep on the slot's item: a
// pending growth that is lost is never retried (the alarm stays in ALARM and does
// not fire again), and the growth history is the operators' record.
func TestGrowthSurvivesAChangeOfHolder(t *testing.T) {
	h := harness.Start(t)
	w := h.NewWorld(t, "survive")
	st := lease.NewStore(dynamodb.NewFromConfig(h.AWSConfig()), w.Table, "c1")
	ctx := t.Context()
	cur, _ := st.Get(ctx, 0)
	l, err := st.Claim(ctx, cur, "i-0000000a", "us-east-1a", "launch")
	if err != nil {
		t.Fatal(err)
	}
	if l, err = st.Bind(ctx, l, lease.Binding{VolumeID: "vol-1"}, "attached"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RecordGrowth(ctx, 0, lease.GrowthRecord{VolumeID: "vol-1", FromGiB: 100, ToGiB: 142, Reason: "85% used"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetPendingGrowth(ctx, 0, lease.PendingGrowth{VolumeID: "vol-1", FromGiB: 142, ToGiB: 202, Reason: "rate limited"}); err != nil {
		t.Fatal(err)
	}
	if l, err = st.Release(ctx, l, "terminated"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Claim(ctx, l, "i-0000000b", "us-east-1a", "replacement"); err != nil {
		t.Fatal(err)
	}
	g, err := st.Growth(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if g.Pending == nil || g.Pending.ToGiB != 202 || len(g.History) != 1 || g.History[0].ToGiB != 142 {
		t.Fatalf("growth after a change of holder: %+v, want the pending growth to 202 and one history record", g)
	}
	if got, _ := st.Get(ctx, 0); got.Holder != "i-0000000b" || got.Version != 3 || got.VolumeID != "vol-1" {
		t.Fatalf("lease %+v", got)
	}
}
