package slot_test

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slot"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// racingDB lets a concurrent claimer win every claim write it sees: just before the
// write goes out, race claims the same slot (for real, in moto), so that the write
// fails its condition as it does when another launch was faster.
type racingDB struct {
	*dynamodb.Client
	race func(ctx context.Context, slot string)
}

func (r racingDB) UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, opts ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	if n, ok := in.Key["slot"].(*types.AttributeValueMemberN); ok {
		r.race(ctx, n.Value)
	}
	return r.Client.UpdateItem(ctx, in, opts...)
}

// A claim whose every write is lost to concurrent claimers still says which slots of
// the AZ are taken, so that a launch can wait for one whose holder is leaving (a
// handover) instead of abandoning.
func TestClaimLostToConcurrentClaimsNamesTheTakenSlots(t *testing.T) {
	h := harness.Start(t)
	w := h.NewWorld(t, "leases")
	db := dynamodb.NewFromConfig(h.AWSConfig())
	ctx := context.Background()
	racer := lease.NewStore(db, w.Table, "claims")

	// Slot 0 is draining: its holder is leaving. Slot 1 is free.
	l0, err := racer.Claim(ctx, lease.Lease{Slot: 0, State: lease.Free}, "i-0000000000000000a", "us-east-1a", "launch")
	if err == nil {
		l0, err = racer.Bind(ctx, l0, lease.Binding{VolumeID: "vol-0a", IP: "10.0.0.10"}, "bound")
	}
	if err == nil {
		_, err = racer.Drain(ctx, l0, "terminating")
	}
	if err != nil {
		t.Fatal(err)
	}
	raced := 0
	rdb := racingDB{Client: db, race: func(ctx context.Context, s string) {
		if s != "1" {
			return
		}
		cur, err := racer.Get(ctx, 1)
		if err == nil && cur.State == lease.Free {
			_, err = racer.Claim(ctx, cur, "i-000000000000000bb", "us-east-1a", "a faster launch")
		}
		if err != nil {
			t.Errorf("the racing claim: %v", err)
		}
		raced++
	}}
	c := &slot.Claimer{
		Store: lease.NewStore(rdb, w.Table, "claims"),
		// Every holder runs: the draining one is leaving, the faster launch binding.
		States: func(_ context.Context, ids []string) (map[string]string, error) {
			m := map[string]string{}
			for _, id := range ids {
				m[id] = slot.Running
			}
			return m, nil
		},
		// Another instance, launching with this one, is matched to the leaving slot
		// 0 (it ranks first): this one claims the free slot 1 rather than wait.
		Peers: func(context.Context, string) ([]string, error) {
			return []string{"i-000000000000000aa", "i-000000000000000cc"}, nil
		},
		Rounds: 1,
	}
	got, err := c.Claim(ctx, "i-000000000000000cc", "us-east-1a", []int{0, 1}, "launch")
	if !errors.Is(err, slot.ErrNoFreeSlot) || raced != 1 {
		t.Fatalf("claim: %+v, %v after %d races; want ErrNoFreeSlot, lost to the racer", got, err, raced)
	}
	if len(got.Taken) != 2 || got.Taken[0].Slot != 0 || got.Taken[0].State != lease.Draining || got.Taken[1].Slot != 1 || got.Taken[1].Holder != "i-000000000000000bb" {
		t.Fatalf("taken %+v, want slot 0 (draining) and slot 1 (claimed by the faster launch)", got.Taken)
	}
	var leaving []int
	for _, l := range got.Taken {
		if ok, _ := slot.Leaving(l, slot.Holder{State: got.States[l.Holder]}); ok {
			leaving = append(leaving, l.Slot)
		}
	}
	if len(leaving) != 1 || leaving[0] != 0 {
		t.Errorf("leaving holders %v, want slot 0's: the launch waits for it", leaving)
	}
	t.Logf("%v; taken: slot 0 %s by %s, slot 1 %s by %s; leaving: %v", err, got.Taken[0].State, got.Taken[0].Holder, got.Taken[1].State, got.Taken[1].Holder, leaving)
}
