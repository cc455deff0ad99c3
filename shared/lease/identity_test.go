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
		if e.VolumeID != "vol-0a" || e.ENIID != "eni-0a" || e.IP != "10.0.1.10" || e.State != lease.Claimed || e.Version != l.Version {
			t.Fatalf("after both records: %+v", e)
		}
		// The same record again (an SDK retry of a write that took effect): the lease as
		// stored, and no second history entry.
		again, err := st.Record(t.Context(), l, lease.KindVolume, "vol-0a", "", "created (retry)")
		if err != nil || again.VolumeID != "vol-0a" {
			t.Fatalf("repeated record: %+v %v", again, err)
		}
		// Another id is never written over the recorded one.
		if _, err := st.Record(t.Context(), l, lease.KindVolume, "vol-0b", "", "a look-alike"); !errors.Is(err, lease.ErrRecordConflict) {
			t.Fatalf("recording another volume: %v, want ErrRecordConflict", err)
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
		if r.VolumeID != "vol-0a" || next.VolumeID != "vol-0a" || next.ENIID != "eni-0a" {
			t.Errorf("record lost: after release %q, after the next claim %q/%q", r.VolumeID, next.VolumeID, next.ENIID)
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
		l := release(t, st, bind(t, st, claim(t, st, 0, "i-a")))
		f, err := st.Forget(t.Context(), l, []string{lease.KindVolume}, "volume deleted by mistake")
		if err != nil {
			t.Fatal(err)
		}
		if f.VolumeID != "" || f.ENIID != "eni-0a" || f.IP != "10.0.1.10" || f.State != lease.Free || f.Version != l.Version {
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
		if err != nil || g.ENIID != "" || g.IP != "" {
			t.Fatalf("forgetting the ENI: %+v %v", g, err)
		}
	})
}
