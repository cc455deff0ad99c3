package lease_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// The slot's resources are recorded by the claimer as soon as they exist, once, and
// never replaced; only an explicit Forget removes them, and everything else keeps them.
func TestRecordAndForget(t *testing.T) {
	h := harness.Start(t)
	w := h.NewWorld(t, "leases")
	s := &suite{h: h, table: w.Table, db: dynamodb.NewFromConfig(h.AWSConfig()), direct: dynamodb.NewFromConfig(h.DirectConfig())}

	t.Run("recorded once, kept across release and claim", func(t *testing.T) {
		st := s.store("rec")
		l := claim(t, st, 0, "i-a")
		v, err := st.Record(t.Context(), l, lease.KindVolume, "vol-0a", "", "created")
		if err != nil {
			t.Fatal(err)
		}
		e, err := st.Record(t.Context(), v, lease.KindENI, "eni-0a", "10.0.1.10", "created")
		if err != nil {
			t.Fatal(err)
		}
		if e.VolumeID != "vol-0a" || e.ENIID != "eni-0a" || e.IP != "10.0.1.10" || e.State != lease.Claimed || e.Version != l.Version ||
			e.VolumeClaim != l.Version || e.ENIClaim != l.Version || e.RecordedBy(lease.KindVolume) != l.Version {
			t.Fatalf("after both records: %+v", e)
		}
		// The same record again (an SDK retry of a write that took effect): the lease as
		// stored, and no second history entry.
		again, err := st.Record(t.Context(), l, lease.KindVolume, "vol-0a", "", "created (retry)")
		if err != nil || again.VolumeID != "vol-0a" {
			t.Fatalf("repeated record: %+v %v", again, err)
		}
		// Another id is never written over the recorded one; the conflict comes with the
		// lease as stored, so that the caller uses the recorded id.
		cur, err := st.Record(t.Context(), l, lease.KindVolume, "vol-0b", "", "a look-alike")
		if !errors.Is(err, lease.ErrRecordConflict) || cur.VolumeID != "vol-0a" || cur.Version != l.Version {
			t.Fatalf("recording another volume: %+v %v, want ErrRecordConflict with the lease recording vol-0a", cur, err)
		}
		got := s.read(t, "rec", 0)
		if got.VolumeID != "vol-0a" {
			t.Fatalf("recorded volume %s, want vol-0a", got.VolumeID)
		}
		records := 0
		for _, tr := range got.History {
			if strings.HasPrefix(tr.Reason, "created") {
				records++
			}
		}
		if records != 2 {
			t.Errorf("%d record entries in the history, want 2 (volume, ENI): %+v", records, got.History)
		}
		// Release and a new claim keep the record: it is the slot's, not the holder's.
		r := release(t, st, bind(t, st, got))
		next := claim(t, st, 0, "i-b")
		if r.VolumeID != "vol-0a" || next.VolumeID != "vol-0a" || next.ENIID != "eni-0a" || next.VolumeClaim != l.Version {
			t.Errorf("record lost: after release %q, after the next claim %q/%q (recorded by claim %d)", r.VolumeID, next.VolumeID, next.ENIID, next.VolumeClaim)
		}
		t.Logf("history of slot 0: %d entries, volume recorded once", len(s.read(t, "rec", 0).History))
	})

	t.Run("only the current claimer records", func(t *testing.T) {
		st := s.store("fence")
		old := claim(t, st, 0, "i-a")
		release(t, st, old)
		claim(t, st, 0, "i-b")
		_, err := st.Record(t.Context(), old, lease.KindVolume, "vol-0a", "", "late")
		fenced(t, "record by a released claim", err)
		if got := s.read(t, "fence", 0); got.VolumeID != "" {
			t.Errorf("a fenced record landed: %+v", got)
		}
		bound := bind(t, st, get(t, st, 0))
		if _, err := st.Record(t.Context(), bound, lease.KindVolume, "vol-0c", "", "after bind"); !errors.Is(err, lease.ErrFenced) {
			t.Errorf("record on a bound lease: %v, want ErrFenced", err)
		}
	})

	t.Run("a crash after the record", func(t *testing.T) {
		t.Cleanup(h.ClearFaults)
		st := s.store("crash")
		l := claim(t, st, 0, "i-a")
		h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.Crash, Times: 1})
		if _, err := st.Record(t.Context(), l, lease.KindVolume, "vol-0a", "", "created"); awsapi.Code(err) != "InjectedCrash" {
			t.Fatalf("record during a crash: %v", err)
		}
		got, err := st.Record(t.Context(), l, lease.KindVolume, "vol-0a", "", "created (redelivered)")
		if err != nil || got.VolumeID != "vol-0a" {
			t.Fatalf("the retried record: %+v %v", got, err)
		}
		if n := len(s.read(t, "crash", 0).History); n != 2 {
			t.Errorf("history has %d entries, want 2 (claim, one record)", n)
		}
	})

	t.Run("forget", func(t *testing.T) {
		st := s.store("forget")
		st.Actor = "slotctl/arn:aws:iam::123456789012:user/ops"
		c := claim(t, st, 0, "i-a")
		c, err := st.Record(t.Context(), c, lease.KindVolume, "vol-0a", "", "created")
		if err != nil {
			t.Fatal(err)
		}
		if c, err = st.Record(t.Context(), c, lease.KindENI, "eni-0a", "10.0.1.10", "created"); err != nil {
			t.Fatal(err)
		}
		l := release(t, st, bind(t, st, c))
		f, err := st.Forget(t.Context(), l, []string{lease.KindVolume}, "volume deleted by mistake")
		if err != nil {
			t.Fatal(err)
		}
		if f.VolumeID != "" || f.VolumeClaim != 0 || f.ENIID != "eni-0a" || f.IP != "10.0.1.10" || f.State != lease.Free || f.Version != l.Version {
			t.Fatalf("after forgetting the volume: %+v", f)
		}
		last := f.History[len(f.History)-1]
		if last.Actor != st.Actor || last.Reason != "volume deleted by mistake" || last.From != lease.Free || last.To != lease.Free {
			t.Errorf("history entry %+v", last)
		}
		// A second forget from the same stale read changes nothing.
		_, err = st.Forget(t.Context(), l, []string{lease.KindVolume}, "again")
		fenced(t, "forget from a stale read", err)
		g, err := st.Forget(t.Context(), f, []string{lease.KindENI}, "eni deleted")
		if err != nil || g.ENIID != "" || g.IP != "" || g.ENIClaim != 0 {
			t.Fatalf("forgetting the ENI: %+v %v", g, err)
		}
	})
}

// UnboundSince proves from the history alone that a slot was never bound since the
// claim that recorded a resource; without proof (the claim unknown, its entries
// trimmed off the history, a hand-written lease) it says no.
func TestUnboundSince(t *testing.T) {
	tr := func(from, to lease.State, v int64) lease.Transition {
		return lease.Transition{From: from, To: to, Version: v}
	}
	claimed := []lease.Transition{tr(lease.Free, lease.Claimed, 3), tr(lease.Claimed, lease.Claimed, 3)}
	for _, c := range []struct {
		name  string
		l     lease.Lease
		since int64
		want  bool
	}{
		{"recorded by this claim, not bound yet", lease.Lease{State: lease.Claimed, Version: 3, History: claimed}, 3, true},
		{"recorded by an earlier claim released unbound",
			lease.Lease{State: lease.Claimed, Version: 5, History: append(claimed, tr(lease.Claimed, lease.Free, 4), tr(lease.Free, lease.Claimed, 5))}, 3, true},
		{"bound by the claim that recorded it",
			lease.Lease{State: lease.Claimed, Version: 5, History: append(claimed, tr(lease.Claimed, lease.Bound, 3), tr(lease.Bound, lease.Free, 4), tr(lease.Free, lease.Claimed, 5))}, 3, false},
		{"bound by a later claim", lease.Lease{State: lease.Claimed, Version: 7, History: append(claimed,
			tr(lease.Claimed, lease.Free, 4), tr(lease.Free, lease.Claimed, 5), tr(lease.Claimed, lease.Bound, 5), tr(lease.Bound, lease.Free, 6), tr(lease.Free, lease.Claimed, 7))}, 3, false},
		{"the recording claim's entries trimmed off", lease.Lease{State: lease.Claimed, Version: 9, History: []lease.Transition{tr(lease.Free, lease.Claimed, 9)}}, 3, false},
		{"recorded by an unknown claim", lease.Lease{State: lease.Claimed, Version: 3, History: claimed}, 0, false},
		{"bound now", lease.Lease{State: lease.Bound, Version: 3, History: claimed}, 3, false},
		{"a hand-written lease without history", lease.Lease{State: lease.Claimed, Version: 2}, 1, false},
	} {
		if got := c.l.UnboundSince(c.since); got != c.want {
			t.Errorf("%s: UnboundSince(%d) = %v, want %v", c.name, c.since, got, c.want)
		}
	}
}
