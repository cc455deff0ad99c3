package lease_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// suite is the moto server and lease table that every test of the store shares.
// Cases are isolated from each other by cluster name.
type suite struct {
	h     *harness.Harness
	table string
	// db goes through the harness proxy: its calls are counted and can be faulted.
	db *dynamodb.Client
	// direct goes straight to moto, for setup reads and assertions.
	direct *dynamodb.Client
}

// TestStore runs every store test against one moto server, over the real wire.
// The subtests run one after the other: call counts and injected faults are global
// to the harness, and several subtests assert on them.
func TestStore(t *testing.T) {
	h := harness.Start(t)
	w := h.NewWorld(t, "leases")
	s := &suite{h: h, table: w.Table}
	s.db, s.direct = dynamoClients(h)
	t.Run("GetNeverClaimed", s.testGetNeverClaimed)
	t.Run("List", s.testList)
	t.Run("ClaimCreates", s.testClaimCreates)
	t.Run("ConcurrentClaims", s.testConcurrentClaims)
	t.Run("StaleClaimFenced", s.testStaleClaimFenced)
	t.Run("Bind", s.testBind)
	t.Run("BindStaleFenced", s.testBindStaleFenced)
	t.Run("DrainRelease", s.testDrainRelease)
	t.Run("ReleaseFenced", s.testReleaseFenced)
	t.Run("DrainReleaseRepeated", s.testDrainReleaseRepeated)
	t.Run("LostResponse", s.testLostResponse)
	t.Run("Reclaim", s.testReclaim)
	t.Run("HistoryOrder", s.testHistoryOrder)
	t.Run("HistoryCap", s.testHistoryCap)
	t.Run("WritesHook", s.testWritesHook)
	t.Run("Throttled", s.testThrottled)
	t.Run("Crash", s.testCrash)
}

// dynamoClients returns a DynamoDB client through the proxy and one straight to moto.
func dynamoClients(h *harness.Harness) (proxied, direct *dynamodb.Client) {
	return dynamodb.NewFromConfig(h.AWSConfig()), dynamodb.NewFromConfig(h.DirectConfig())
}

// store returns a store of cluster that talks through the proxy.
func (s *suite) store(cluster string) *lease.Store {
	st := lease.NewStore(s.db, s.table, cluster)
	st.Actor = "test/" + cluster
	return st
}

// read returns slot's lease as stored, read straight from moto.
func (s *suite) read(t *testing.T, cluster string, slot int) lease.Lease {
	t.Helper()
	l, err := lease.NewStore(s.direct, s.table, cluster).Get(t.Context(), slot)
	if err != nil {
		t.Fatalf("reading back slot %d of %s: %v", slot, cluster, err)
	}
	return l
}

// writeCalls is how many conditional writes the proxy has seen, retries included.
func (s *suite) writeCalls() int { return s.h.Calls("PutItem") + s.h.Calls("UpdateItem") }

// get reads slot through st or fails the test.
func get(t *testing.T, st *lease.Store, slot int) lease.Lease {
	t.Helper()
	l, err := st.Get(t.Context(), slot)
	if err != nil {
		t.Fatalf("getting slot %d: %v", slot, err)
	}
	return l
}

// claim reads slot and claims it for instance, or fails the test.
func claim(t *testing.T, st *lease.Store, slot int, instance string) lease.Lease {
	t.Helper()
	l, err := st.Claim(t.Context(), get(t, st, slot), instance, "us-east-1a", "launch")
	if err != nil {
		t.Fatalf("claiming slot %d for %s: %v", slot, instance, err)
	}
	return l
}

// bind binds l to a fixed set of resources, or fails the test.
func bind(t *testing.T, st *lease.Store, l lease.Lease) lease.Lease {
	t.Helper()
	b, err := st.Bind(t.Context(), l, lease.Binding{ENIID: "eni-0a", VolumeID: "vol-0a", IP: "10.0.1.10"}, "attached")
	if err != nil {
		t.Fatalf("binding slot %d: %v", l.Slot, err)
	}
	return b
}

// release releases l, or fails the test.
func release(t *testing.T, st *lease.Store, l lease.Lease) lease.Lease {
	t.Helper()
	r, err := st.Release(t.Context(), l, "terminated")
	if err != nil {
		t.Fatalf("releasing slot %d: %v", l.Slot, err)
	}
	return r
}

// sameLease fails the test unless got equals want, field by field.
func sameLease(t *testing.T, what string, got, want lease.Lease) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

// fenced fails the test unless err is ErrFenced.
func fenced(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, lease.ErrFenced) {
		t.Errorf("%s: error %v, want ErrFenced", what, err)
	}
}

// ticker returns a clock that starts at start and moves one second per reading,
// so that every write of a store gets a distinct, predictable timestamp.
func ticker(start time.Time) func() time.Time {
	var n atomic.Int64
	return func() time.Time { return start.Add(time.Duration(n.Add(1)-1) * time.Second) }
}

func (s *suite) testGetNeverClaimed(t *testing.T) {
	const cluster = "get-never-claimed"
	// The same slot of another cluster exists: it must not leak in.
	claim(t, s.store(cluster+"-other"), 3, "i-other")

	got := get(t, s.store(cluster), 3)
	sameLease(t, "never-claimed slot", got, lease.Lease{Cluster: cluster, Slot: 3, State: lease.Free})
	if got.Exists() {
		t.Error("Exists() = true for a never-claimed slot")
	}
	if got.HeldBy("i-other") {
		t.Error("never-claimed slot is held by another cluster's holder")
	}
}

func (s *suite) testList(t *testing.T) {
	const cluster = "list"
	st := s.store(cluster)
	claim(t, s.store(cluster+"-other"), 0, "i-other") // another cluster, not listed

	if got, err := st.List(t.Context()); err != nil || len(got) != 0 {
		t.Fatalf("List of an empty cluster = %v, %v; want nothing", got, err)
	}

	// 30 of slots 0..39 are claimed, in random order; every fourth slot is never claimed.
	// Each item carries a 120 KB reason, ~3.6 MB in all: DynamoDB (and moto) return at
	// most 1 MB per Query page, so List has to follow LastEvaluatedKey.
	var want []int
	for slot := range 40 {
		if slot%4 != 3 {
			want = append(want, slot)
		}
	}
	order := append([]int(nil), want...)
	rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	reason := strings.Repeat("r", 120<<10)
	for _, slot := range order {
		if _, err := st.Claim(t.Context(), get(t, st, slot), fmt.Sprintf("i-%02d", slot), "us-east-1a", reason); err != nil {
			t.Fatalf("claiming slot %d: %v", slot, err)
		}
	}

	queries := s.h.Calls("Query")
	got, err := st.List(t.Context())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if pages := s.h.Calls("Query") - queries; pages < 3 {
		t.Errorf("List read %d Query pages, want at least 3 for ~3.6 MB of items", pages)
	}
	if len(got) != len(want) {
		t.Fatalf("List returned %d leases, want %d", len(got), len(want))
	}
	for i, l := range got {
		if l.Cluster != cluster || l.Slot != want[i] || l.State != lease.Claimed || l.Version != 1 ||
			l.Holder != fmt.Sprintf("i-%02d", want[i]) || len(l.History) != 1 || l.History[0].Reason != reason {
			t.Errorf("List()[%d] = slot %d of %s, %s v%d by %s; want slot %d of %s, claimed v1 by i-%02d with its history",
				i, l.Slot, l.Cluster, l.State, l.Version, l.Holder, want[i], cluster, want[i])
		}
	}
}

func (s *suite) testClaimCreates(t *testing.T) {
	const cluster = "claim-creates"
	st := s.store(cluster)
	st.Actor = "launch/req-1"
	now := time.Date(2025, 3, 1, 13, 0, 0, 123456789, time.FixedZone("CET", 3600))
	st.Now = func() time.Time { return now }
	stamp := "2025-03-01T12:00:00.123456789Z" // stored in UTC

	got, err := st.Claim(t.Context(), get(t, st, 5), "i-aaa", "us-east-1b", "launch lifecycle action")
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	want := lease.Lease{
		Cluster: cluster, Slot: 5, State: lease.Claimed, Version: 1,
		Holder: "i-aaa", HolderAZ: "us-east-1b", ClaimedAt: stamp, UpdatedAt: stamp,
		History: []lease.Transition{{
			At: stamp, From: lease.Free, To: lease.Claimed, Version: 1,
			Instance: "i-aaa", Actor: "launch/req-1", Reason: "launch lifecycle action",
		}},
	}
	sameLease(t, "Claim result", got, want)
	sameLease(t, "stored lease", s.read(t, cluster, 5), want)
	if !got.Exists() || !got.HeldBy("i-aaa") || got.HeldBy("i-bbb") {
		t.Errorf("claimed lease: Exists %v, HeldBy(i-aaa) %v, HeldBy(i-bbb) %v; want true, true, false",
			got.Exists(), got.HeldBy("i-aaa"), got.HeldBy("i-bbb"))
	}

	// The attribute names are a public contract (operators and other tools read them).
	out, err := s.direct.GetItem(t.Context(), &dynamodb.GetItemInput{
		TableName: &s.table,
		Key: map[string]types.AttributeValue{
			"cluster": &types.AttributeValueMemberS{Value: cluster},
			"slot":    &types.AttributeValueMemberN{Value: "5"},
		},
	})
	if err != nil {
		t.Fatalf("reading the raw item: %v", err)
	}
	for _, name := range []string{"cluster", "slot", "state", "version", "holder", "holder_az", "claimed_at", "updated_at", "history"} {
		if _, ok := out.Item[name]; !ok {
			t.Errorf("raw item has no attribute %q: %v", name, out.Item)
		}
	}
	for _, name := range []string{"last_holder", "eni_id", "volume_id", "ip"} {
		if _, ok := out.Item[name]; ok {
			t.Errorf("raw item of a first claim has attribute %q", name)
		}
	}
	if v, ok := out.Item["version"].(*types.AttributeValueMemberN); !ok || v.Value != "1" {
		t.Errorf("raw version = %#v, want N 1", out.Item["version"])
	}
}

func (s *suite) testConcurrentClaims(t *testing.T) {
	const rounds = 20
	cases := []struct {
		name string
		// read returns the lease both contenders read before racing for it.
		read func(t *testing.T, st *lease.Store, slot int) lease.Lease
	}{
		{"never claimed", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			return get(t, st, slot)
		}},
		{"released", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			release(t, st, claim(t, st, slot, "i-old"))
			return get(t, st, slot)
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cluster := fmt.Sprintf("race-%d", i)
			st := s.store(cluster)
			for slot := range rounds {
				cur := tc.read(t, st, slot)
				contenders := []string{"i-a", "i-b"}
				type result struct {
					l   lease.Lease
					err error
				}
				results := make([]result, len(contenders))
				start := make(chan struct{})
				var wg sync.WaitGroup
				for j, instance := range contenders {
					wg.Go(func() {
						<-start
						l, err := st.Claim(t.Context(), cur, instance, "us-east-1a", "race")
						results[j] = result{l, err}
					})
				}
				close(start)
				wg.Wait()

				var winners []lease.Lease
				for j, r := range results {
					switch {
					case r.err == nil:
						winners = append(winners, r.l)
					case !errors.Is(r.err, lease.ErrFenced):
						t.Fatalf("round %d: claim by %s failed with %v, want success or ErrFenced", slot, contenders[j], r.err)
					}
				}
				if len(winners) != 1 {
					t.Fatalf("round %d: %d claims succeeded, want exactly 1 (results %+v)", slot, len(winners), results)
				}
				if winners[0].Version != cur.Version+1 {
					t.Errorf("round %d: winner got version %d, want %d", slot, winners[0].Version, cur.Version+1)
				}
				sameLease(t, fmt.Sprintf("round %d: stored lease", slot), s.read(t, cluster, slot), winners[0])
			}
		})
	}
}

func (s *suite) testStaleClaimFenced(t *testing.T) {
	cases := []struct {
		name string
		// stale returns a lease read from slot, after the slot has moved on from it.
		stale func(t *testing.T, st *lease.Store, slot int) lease.Lease
		// sameVersion: the slot moved on without a version change, so only the
		// updated_at half of the condition can fence the claim.
		sameVersion bool
	}{
		{name: "created since read", stale: func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			cur := get(t, st, slot)
			claim(t, st, slot, "i-first")
			return cur
		}},
		{name: "bound since read", sameVersion: true, stale: func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			cur := claim(t, st, slot, "i-first")
			bind(t, st, cur)
			return cur
		}},
		{name: "released since read", stale: func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			cur := claim(t, st, slot, "i-first")
			release(t, st, cur)
			return cur
		}},
		{name: "reclaimed since read", stale: func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			release(t, st, claim(t, st, slot, "i-first"))
			cur := get(t, st, slot)
			claim(t, st, slot, "i-second")
			return cur
		}},
	}
	const cluster = "stale-claim"
	st := s.store(cluster)
	for slot, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stale := tc.stale(t, st, slot)
			before := s.read(t, cluster, slot)
			if tc.sameVersion && before.Version != stale.Version {
				t.Fatalf("setup: version moved from %d to %d, want it unchanged", stale.Version, before.Version)
			}
			_, err := st.Claim(t.Context(), stale, "i-late", "us-east-1a", "late claim")
			fenced(t, "claim with a stale read", err)
			sameLease(t, "lease after the fenced claim", s.read(t, cluster, slot), before)
		})
	}
}

func (s *suite) testBind(t *testing.T) {
	const cluster = "bind"
	st := s.store(cluster)
	var writes atomic.Int64
	st.Writes = func() { writes.Add(1) }
	claimed := claim(t, st, 0, "i-a")
	b := lease.Binding{ENIID: "eni-0123", VolumeID: "vol-0456", IP: "10.0.1.10"}

	bound, err := st.Bind(t.Context(), claimed, b, "eni and volume attached")
	if err != nil {
		t.Fatalf("Bind: %v", err)
	}
	want := claimed
	want.State, want.ENIID, want.VolumeID, want.IP = lease.Bound, b.ENIID, b.VolumeID, b.IP
	want.UpdatedAt = bound.UpdatedAt
	want.History = append(append([]lease.Transition(nil), claimed.History...), lease.Transition{
		At: bound.UpdatedAt, From: lease.Claimed, To: lease.Bound, Version: 1,
		Instance: "i-a", Actor: st.Actor, Reason: "eni and volume attached",
	})
	sameLease(t, "Bind result", bound, want)
	sameLease(t, "stored lease", s.read(t, cluster, 0), bound)
	if bound.UpdatedAt == claimed.UpdatedAt {
		t.Error("Bind did not move updated_at")
	}

	// Repeats of a bind that happened return the bound lease and change nothing.
	cases := []struct {
		name        string
		l           lease.Lease
		updateItems int // UpdateItem calls the repeat makes
	}{
		// The caller already holds the bound lease: nothing to write.
		{"same bound lease", bound, 0},
		// A redelivered invocation still holding the claimed view: its write is fenced
		// (the state is no longer claimed), the store reads the item and sees its own bind.
		{"redelivered claimed view", claimed, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			calls, w := s.h.Calls("UpdateItem"), writes.Load()
			got, err := st.Bind(t.Context(), tc.l, b, "attached again")
			if err != nil {
				t.Fatalf("repeated Bind: %v", err)
			}
			sameLease(t, "repeated Bind result", got, bound)
			sameLease(t, "stored lease", s.read(t, cluster, 0), bound)
			if n := s.h.Calls("UpdateItem") - calls; n != tc.updateItems {
				t.Errorf("repeated Bind made %d UpdateItem calls, want %d", n, tc.updateItems)
			}
			if n := writes.Load() - w; n != int64(tc.updateItems) {
				t.Errorf("repeated Bind counted %d writes, want %d", n, tc.updateItems)
			}
		})
	}
}

func (s *suite) testBindStaleFenced(t *testing.T) {
	cases := []struct {
		name string
		// stale returns a claimed lease of slot that is no longer current.
		stale func(t *testing.T, st *lease.Store, slot int) lease.Lease
	}{
		{"released", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			l := claim(t, st, slot, "i-a")
			release(t, st, l)
			return l
		}},
		{"released and reclaimed", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			l := claim(t, st, slot, "i-a")
			release(t, st, l)
			claim(t, st, slot, "i-b")
			return l
		}},
		// Bound at a newer version by another holder: the fallback read sees a bound
		// lease, but not the caller's, so the bind is still fenced.
		{"reclaimed and bound by another", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			l := claim(t, st, slot, "i-a")
			release(t, st, l)
			bind(t, st, claim(t, st, slot, "i-b"))
			return l
		}},
		// The same holder claimed again after a release: only the version tells them apart.
		{"reclaimed and bound by the same holder", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			l := claim(t, st, slot, "i-a")
			release(t, st, l)
			bind(t, st, claim(t, st, slot, "i-a"))
			return l
		}},
	}
	const cluster = "bind-stale"
	st := s.store(cluster)
	for slot, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stale := tc.stale(t, st, slot)
			before := s.read(t, cluster, slot)
			_, err := st.Bind(t.Context(), stale, lease.Binding{ENIID: "eni-late", VolumeID: "vol-late", IP: "10.0.9.9"}, "late bind")
			fenced(t, "bind of a stale lease", err)
			sameLease(t, "lease after the fenced bind", s.read(t, cluster, slot), before)
		})
	}
}

func (s *suite) testDrainRelease(t *testing.T) {
	cases := []struct {
		name string
		// held returns the lease to drain.
		held func(t *testing.T, st *lease.Store, slot int) lease.Lease
	}{
		{"bound", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			return bind(t, st, claim(t, st, slot, "i-a"))
		}},
		// A termination can start before the launch finished binding.
		{"claimed", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			return claim(t, st, slot, "i-a")
		}},
	}
	const cluster = "drain-release"
	st := s.store(cluster)
	for slot, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			held := tc.held(t, st, slot)

			drained, err := st.Drain(t.Context(), held, "planned termination")
			if err != nil {
				t.Fatalf("Drain: %v", err)
			}
			want := held
			want.State, want.UpdatedAt = lease.Draining, drained.UpdatedAt
			want.History = append(append([]lease.Transition(nil), held.History...), lease.Transition{
				At: drained.UpdatedAt, From: held.State, To: lease.Draining, Version: held.Version,
				Instance: "i-a", Actor: st.Actor, Reason: "planned termination",
			})
			sameLease(t, "Drain result", drained, want)
			sameLease(t, "stored lease after Drain", s.read(t, cluster, slot), drained)

			released, err := st.Release(t.Context(), drained, "terminated")
			if err != nil {
				t.Fatalf("Release: %v", err)
			}
			// The slot's resources and claim time stay recorded: they belong to the slot.
			want = drained
			want.State, want.Version, want.UpdatedAt = lease.Free, drained.Version+1, released.UpdatedAt
			want.Holder, want.HolderAZ, want.LastHolder = "", "", "i-a"
			want.History = append(append([]lease.Transition(nil), drained.History...), lease.Transition{
				At: released.UpdatedAt, From: lease.Draining, To: lease.Free, Version: drained.Version + 1,
				Instance: "i-a", Actor: st.Actor, Reason: "terminated",
			})
			sameLease(t, "Release result", released, want)
			sameLease(t, "stored lease after Release", s.read(t, cluster, slot), released)
			if released.HeldBy("i-a") {
				t.Error("released lease is still held by its old holder")
			}
		})
	}
}

func (s *suite) testReleaseFenced(t *testing.T) {
	cases := []struct {
		name string
		// stale returns a lease of slot whose release must be refused.
		stale func(t *testing.T, st *lease.Store, slot int) lease.Lease
	}{
		// The same holder claimed again: only the version fences the old release.
		{"stale version", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			old := claim(t, st, slot, "i-a")
			release(t, st, old)
			bind(t, st, claim(t, st, slot, "i-a"))
			return old
		}},
		{"different holder", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			l := bind(t, st, claim(t, st, slot, "i-a"))
			l.Holder = "i-b"
			return l
		}},
		// Released, and claimed again by another instance since: the old release is
		// no longer "already done", the slot moved on.
		{"released and claimed again", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			l := bind(t, st, claim(t, st, slot, "i-a"))
			release(t, st, l)
			claim(t, st, slot, "i-b")
			return l
		}},
		// The caller saw the claim, the slot has been bound since: its view is stale,
		// and a release from it would write a wrong "from" into the history.
		{"stale state", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			l := claim(t, st, slot, "i-a")
			bind(t, st, l)
			return l
		}},
	}
	const cluster = "release-fenced"
	st := s.store(cluster)
	for slot, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stale := tc.stale(t, st, slot)
			before := s.read(t, cluster, slot)
			_, err := st.Release(t.Context(), stale, "late release")
			fenced(t, "release of a stale lease", err)
			sameLease(t, "lease after the fenced release", s.read(t, cluster, slot), before)
		})
	}
}

func (s *suite) testReclaim(t *testing.T) {
	cases := []struct {
		name string
		// prepare leaves slot held or released by i-a, at version wantVersion-1.
		prepare     func(t *testing.T, st *lease.Store, slot int) lease.Lease
		wantVersion int64
	}{
		// 1 claim, 2 release, 3 claim.
		{"after release", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			l := bind(t, st, claim(t, st, slot, "i-a"))
			release(t, st, l)
			return l
		}, 3},
		// A claim over a held lease (the caller decided the holder is gone).
		{"taking over a held lease", func(t *testing.T, st *lease.Store, slot int) lease.Lease {
			return bind(t, st, claim(t, st, slot, "i-a"))
		}, 2},
	}
	const cluster = "reclaim"
	st := s.store(cluster)
	for slot, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			old := tc.prepare(t, st, slot)
			cur := get(t, st, slot)
			got, err := st.Claim(t.Context(), cur, "i-b", "us-east-1c", "replacement")
			if err != nil {
				t.Fatalf("Claim by i-b: %v", err)
			}
			if got.Version != tc.wantVersion || got.State != lease.Claimed || got.Holder != "i-b" ||
				got.HolderAZ != "us-east-1c" || got.LastHolder != "i-a" || got.ClaimedAt != got.UpdatedAt {
				t.Errorf("reclaimed lease = %s v%d by %s in %s, last holder %q, claimed_at %s, updated_at %s; "+
					"want claimed v%d by i-b in us-east-1c, last holder i-a, claimed now",
					got.State, got.Version, got.Holder, got.HolderAZ, got.LastHolder, got.ClaimedAt, got.UpdatedAt, tc.wantVersion)
			}
			if got.ENIID != old.ENIID || got.VolumeID != old.VolumeID || got.IP != old.IP {
				t.Errorf("reclaim lost the slot's resources: %s %s %s, want %s %s %s",
					got.ENIID, got.VolumeID, got.IP, old.ENIID, old.VolumeID, old.IP)
			}
			sameLease(t, "stored lease", s.read(t, cluster, slot), got)
			want := append(append([]lease.Transition(nil), cur.History...), lease.Transition{
				At: got.UpdatedAt, From: cur.State, To: lease.Claimed, Version: tc.wantVersion,
				Instance: "i-b", Actor: st.Actor, Reason: "replacement",
			})
			if !reflect.DeepEqual(got.History, want) {
				t.Errorf("history = %+v, want the earlier entries and then %+v", got.History, want[len(want)-1])
			}

			// The old holder's lease is fenced off now.
			_, err = st.Release(t.Context(), old, "late release by the old holder")
			fenced(t, "release by the old holder", err)
		})
	}
}

func (s *suite) testHistoryOrder(t *testing.T) {
	const cluster = "history-order"
	st := s.store(cluster)
	start := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	st.Now = ticker(start)

	l := claim(t, st, 0, "i-a")
	l = bind(t, st, l)
	l, err := st.Drain(t.Context(), l, "planned termination")
	if err != nil {
		t.Fatalf("Drain: %v", err)
	}
	release(t, st, l)
	st.Actor = "reconcile/req-9"
	if _, err := st.Claim(t.Context(), get(t, st, 0), "i-b", "us-east-1b", "replacement"); err != nil {
		t.Fatalf("Claim by i-b: %v", err)
	}

	actor := "test/" + cluster
	want := []lease.Transition{
		{From: lease.Free, To: lease.Claimed, Version: 1, Instance: "i-a", Actor: actor, Reason: "launch"},
		{From: lease.Claimed, To: lease.Bound, Version: 1, Instance: "i-a", Actor: actor, Reason: "attached"},
		{From: lease.Bound, To: lease.Draining, Version: 1, Instance: "i-a", Actor: actor, Reason: "planned termination"},
		{From: lease.Draining, To: lease.Free, Version: 2, Instance: "i-a", Actor: actor, Reason: "terminated"},
		{From: lease.Free, To: lease.Claimed, Version: 3, Instance: "i-b", Actor: "reconcile/req-9", Reason: "replacement"},
	}
	got := s.read(t, cluster, 0).History
	if len(got) != len(want) {
		t.Fatalf("history has %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i, tr := range got {
		at, err := time.Parse(time.RFC3339, tr.At)
		if err != nil {
			t.Errorf("history[%d].At %q is not RFC 3339: %v", i, tr.At, err)
		}
		// Each write reads the clock once: entry i was written at tick i.
		if wantAt := start.Add(time.Duration(i) * time.Second); !at.Equal(wantAt) {
			t.Errorf("history[%d].At = %s, want %s", i, at, wantAt)
		}
		tr.At = ""
		if tr != want[i] {
			t.Errorf("history[%d] = %+v, want %+v", i, tr, want[i])
		}
	}
}

func (s *suite) testHistoryCap(t *testing.T) {
	const cluster = "history-cap"
	st := s.store(cluster)
	st.Now = ticker(time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC))
	// Each cycle adds two entries, so the cap is reached halfway through.
	cycles := lease.HistoryLimit + 1
	cur := get(t, st, 0)
	for i := range cycles {
		l, err := st.Claim(t.Context(), cur, fmt.Sprintf("i-%d", i%2), "us-east-1a", "launch")
		if err != nil {
			t.Fatalf("cycle %d: Claim: %v", i, err)
		}
		cur = release(t, st, l)
	}

	// checkNewest fails the test unless h is the newest entries, ending at version
	// last: consecutive versions, claims at odd ones, releases at even ones.
	checkNewest := func(h []lease.Transition, last int64) {
		t.Helper()
		for i, tr := range h {
			v := last - int64(len(h)-1-i)
			wantTo := lease.Free
			if v%2 == 1 {
				wantTo = lease.Claimed
			}
			if tr.Version != v || tr.To != wantTo {
				t.Errorf("history[%d] = version %d to %s, want version %d to %s", i, tr.Version, tr.To, v, wantTo)
			}
			if i > 0 && tr.At <= h[i-1].At {
				t.Errorf("history[%d].At %s is not after history[%d].At %s", i, tr.At, i-1, h[i-1].At)
			}
		}
	}

	released := s.read(t, cluster, 0)
	if n := len(released.History); n < lease.HistoryLimit || n > lease.HistoryLimit+2 {
		t.Errorf("after %d claim/release cycles the history has %d entries, want %d to %d",
			cycles, n, lease.HistoryLimit, lease.HistoryLimit+2)
	}
	if released.Version != int64(2*cycles) {
		t.Fatalf("version after %d cycles = %d, want %d", cycles, released.Version, 2*cycles)
	}
	checkNewest(released.History, released.Version)

	// The cap is applied at claim: the claimed item keeps exactly HistoryLimit entries.
	claimed := claim(t, st, 0, "i-last")
	if n := len(claimed.History); n != lease.HistoryLimit {
		t.Errorf("history after a claim has %d entries, want %d", n, lease.HistoryLimit)
	}
	checkNewest(claimed.History, claimed.Version)
	sameLease(t, "stored lease", s.read(t, cluster, 0), claimed)
}

func (s *suite) testWritesHook(t *testing.T) {
	st := s.store("writes")
	var writes atomic.Int64
	st.Writes = func() { writes.Add(1) }
	ctx := t.Context()
	b := lease.Binding{ENIID: "eni-0a", VolumeID: "vol-0a", IP: "10.0.1.10"}

	// The steps run in order; later ones use the leases earlier ones returned.
	read := get(t, st, 0)
	var claimed, bound, drained lease.Lease
	steps := []struct {
		name   string
		do     func() error
		fenced bool
		writes int64 // conditional writes attempted (each one call at the proxy)
	}{
		{"claim", func() (err error) { claimed, err = st.Claim(ctx, read, "i-a", "us-east-1a", "launch"); return err }, false, 1},
		{"fenced claim", func() error { _, err := st.Claim(ctx, read, "i-b", "us-east-1a", "launch"); return err }, true, 1},
		{"bind", func() (err error) { bound, err = st.Bind(ctx, claimed, b, "attached"); return err }, false, 1},
		{"repeat of the bound lease", func() error { _, err := st.Bind(ctx, bound, b, "attached"); return err }, false, 0},
		{"redelivered bind of the claimed view", func() error { _, err := st.Bind(ctx, claimed, b, "attached"); return err }, false, 1},
		{"drain of the claimed view, bound since by the same holder", func() (err error) { drained, err = st.Drain(ctx, claimed, "planned"); return err }, false, 2},
		{"repeated drain of the bound view", func() error { _, err := st.Drain(ctx, bound, "planned"); return err }, false, 1},
		{"fenced drain", func() error { _, err := st.Drain(ctx, other(bound), "planned"); return err }, true, 1},
		{"release", func() error { _, err := st.Release(ctx, drained, "terminated"); return err }, false, 1},
		{"repeated release (another call)", func() error { _, err := st.Release(ctx, drained, "terminated"); return err }, true, 1},
		{"fenced release", func() error { _, err := st.Release(ctx, other(drained), "terminated"); return err }, true, 1},
	}
	for _, step := range steps {
		w, calls := writes.Load(), s.writeCalls()
		err := step.do()
		switch {
		case step.fenced:
			fenced(t, step.name, err)
		case err != nil:
			t.Fatalf("%s: %v", step.name, err)
		}
		if n := writes.Load() - w; n != step.writes {
			t.Errorf("%s: Writes called %d times, want %d", step.name, n, step.writes)
		}
		if n := int64(s.writeCalls() - calls); n != step.writes {
			t.Errorf("%s: %d PutItem/UpdateItem calls, want %d", step.name, n, step.writes)
		}
		if strings.HasPrefix(step.name, "drain of the claimed view") && (drained.State != lease.Draining || drained.Version != bound.Version || drained.Holder != "i-a") {
			t.Errorf("%s: %s at version %d by %q, want draining at version %d by i-a", step.name, drained.State, drained.Version, drained.Holder, bound.Version)
		}
	}
}

func (s *suite) testThrottled(t *testing.T) {
	cases := []struct {
		name   string
		action string
		// prepare returns the lease to act on.
		prepare func(t *testing.T, st *lease.Store, slot int) lease.Lease
		act     func(t *testing.T, st *lease.Store, l lease.Lease) (lease.Lease, error)
		want    lease.State
	}{
		{"claim", "UpdateItem",
			func(t *testing.T, st *lease.Store, slot int) lease.Lease { return get(t, st, slot) },
			func(t *testing.T, st *lease.Store, l lease.Lease) (lease.Lease, error) {
				return st.Claim(t.Context(), l, "i-a", "us-east-1a", "launch")
			}, lease.Claimed},
		{"bind", "UpdateItem",
			func(t *testing.T, st *lease.Store, slot int) lease.Lease { return claim(t, st, slot, "i-a") },
			func(t *testing.T, st *lease.Store, l lease.Lease) (lease.Lease, error) {
				return st.Bind(t.Context(), l, lease.Binding{ENIID: "eni-0a", VolumeID: "vol-0a", IP: "10.0.1.10"}, "attached")
			}, lease.Bound},
		{"release", "UpdateItem",
			func(t *testing.T, st *lease.Store, slot int) lease.Lease {
				return bind(t, st, claim(t, st, slot, "i-a"))
			},
			func(t *testing.T, st *lease.Store, l lease.Lease) (lease.Lease, error) {
				return st.Release(t.Context(), l, "terminated")
			}, lease.Free},
	}
	const cluster = "throttled"
	st := s.store(cluster)
	var writes atomic.Int64
	st.Writes = func() { writes.Add(1) }
	for slot, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.prepare(t, st, slot)
			t.Cleanup(s.h.ClearFaults)
			s.h.Inject(harness.Fault{Action: tc.action, Kind: harness.Throttle, Times: 2})
			calls, w := s.h.Calls(tc.action), writes.Load()

			got, err := tc.act(t, st, l)
			if err != nil {
				t.Fatalf("%s throttled twice: %v", tc.name, err)
			}
			if n := s.h.Calls(tc.action) - calls; n != 3 {
				t.Errorf("%s made %d %s calls, want 3 (two throttled, one retry through)", tc.name, n, tc.action)
			}
			if n := writes.Load() - w; n != 1 {
				t.Errorf("Writes called %d times, want 1: SDK retries are one logical write", n)
			}
			if got.State != tc.want {
				t.Errorf("state after %s = %s, want %s", tc.name, got.State, tc.want)
			}
			sameLease(t, "stored lease", s.read(t, cluster, slot), got)
		})
	}
}

// testCrash covers a write that took effect at DynamoDB while the caller saw an
// error (the invocation died). A new claim or release with the same lease is then
// fenced, because the write it repeats has already moved the item on; the caller
// re-reads and finds the slot claimed by it at the next version, or released. (A
// response lost and retried by the SDK within one call is testLostResponse.)
func (s *suite) testCrash(t *testing.T) {
	const cluster = "crash"
	st := s.store(cluster)

	t.Run("release", func(t *testing.T) {
		t.Cleanup(s.h.ClearFaults)
		l := bind(t, st, claim(t, st, 0, "i-a"))
		s.h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.Crash, Times: 1})

		_, err := st.Release(t.Context(), l, "terminated")
		if err == nil || errors.Is(err, lease.ErrFenced) || awsapi.Code(err) != "InjectedCrash" {
			t.Fatalf("Release during a crash: error %v, want the InjectedCrash error", err)
		}
		after := s.read(t, cluster, 0)
		if after.State != lease.Free || after.Version != l.Version+1 || after.LastHolder != "i-a" {
			t.Fatalf("after the crashed Release the slot is %s v%d (last holder %q), want free v%d: the write landed",
				after.State, after.Version, after.LastHolder, l.Version+1)
		}

		// A new Release (another invocation) is fenced: the crashed one released it.
		_, err = st.Release(t.Context(), l, "terminated (retry)")
		fenced(t, "retried Release", err)
		sameLease(t, "lease after the retried Release", s.read(t, cluster, 0), after)
		if cur := get(t, st, 0); cur.HeldBy("i-a") {
			t.Error("after the fenced retry the slot is still held by i-a")
		}
	})

	t.Run("claim", func(t *testing.T) {
		t.Cleanup(s.h.ClearFaults)
		cur := get(t, st, 1)
		s.h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.Crash, Times: 1})

		_, err := st.Claim(t.Context(), cur, "i-a", "us-east-1a", "launch")
		if err == nil || errors.Is(err, lease.ErrFenced) || awsapi.Code(err) != "InjectedCrash" {
			t.Fatalf("Claim during a crash: error %v, want the InjectedCrash error", err)
		}
		after := s.read(t, cluster, 1)

		_, err = st.Claim(t.Context(), cur, "i-a", "us-east-1a", "launch (retry)")
		fenced(t, "retried Claim", err)
		sameLease(t, "lease after the retried Claim", s.read(t, cluster, 1), after)
		if now := get(t, st, 1); !now.HeldBy("i-a") || now.Version != cur.Version+1 {
			t.Errorf("after the crashed Claim the slot is %s v%d by %q, want claimed v%d by i-a",
				now.State, now.Version, now.Holder, cur.Version+1)
		}
	})
}

// other returns l as another instance would hold it: every write on its behalf is fenced.
func other(l lease.Lease) lease.Lease {
	l.Holder = "i-other"
	return l
}

// A drain repeated by the same holder at the same version (a redelivered event, or a
// concurrent delivery of the same event) carries on: it returns the draining lease and
// writes no second history entry. A release made by another call is not this call's:
// it is fenced (the caller did not release the slot; the slot moved on without it).
func (s *suite) testDrainReleaseRepeated(t *testing.T) {
	const cluster = "repeated"
	st := s.store(cluster)
	l := bind(t, st, claim(t, st, 0, "i-a"))
	drained, err := st.Drain(t.Context(), l, "planned")
	if err != nil {
		t.Fatal(err)
	}
	again, err := st.Drain(t.Context(), l, "planned (redelivered)")
	if err != nil {
		t.Fatalf("repeated Drain: %v", err)
	}
	sameLease(t, "repeated Drain", again, drained)
	released := release(t, st, drained)
	_, err = st.Release(t.Context(), drained, "terminated (redelivered)")
	fenced(t, "a second release of the same lease", err)
	sameLease(t, "stored lease", s.read(t, cluster, 0), released)
	if n := len(released.History); n != 4 {
		t.Errorf("history has %d entries, want 4 (claim, bind, drain, release): %+v", n, released.History)
	}
	// A concurrent delivery that drained, released and saw the slot claimed again
	// is fenced: the slot has moved on.
	claim(t, st, 0, "i-b")
	_, err = st.Release(t.Context(), drained, "late")
	fenced(t, "release after the next claim", err)
	_, err = st.Drain(t.Context(), l, "late")
	fenced(t, "drain after the next claim", err)
}

// A write whose response is lost is retried by the SDK; the retry fails its condition
// because the first attempt took effect. Drain and Release recognise their own write
// (as Bind does) instead of reporting that the slot moved on: Drain by the state it
// was moving the lease to, Release by that state and its own history entry.
func (s *suite) testLostResponse(t *testing.T) {
	const cluster = "lost-response"
	st := s.store(cluster)
	cases := []struct {
		name string
		do   func(l lease.Lease) (lease.Lease, error)
		want lease.State
	}{
		{"drain", func(l lease.Lease) (lease.Lease, error) { return st.Drain(t.Context(), l, "planned") }, lease.Draining},
		{"release", func(l lease.Lease) (lease.Lease, error) { return st.Release(t.Context(), l, "terminated") }, lease.Free},
	}
	for slot, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := bind(t, st, claim(t, st, slot, "i-a"))
			t.Cleanup(s.h.ClearFaults)
			calls := s.h.Calls("UpdateItem")
			s.h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.LostResponse, Times: 1})
			got, err := tc.do(l)
			if err != nil {
				t.Fatalf("%s with its response lost: %v, want success", tc.name, err)
			}
			if n := s.h.Calls("UpdateItem") - calls; n != 2 {
				t.Errorf("%d UpdateItem calls, want 2 (the lost one and the SDK's retry)", n)
			}
			stored := s.read(t, cluster, slot)
			sameLease(t, "result", got, stored)
			if stored.State != tc.want || stored.Holder != l.Holder && tc.want != lease.Free {
				t.Errorf("stored %s by %q, want %s", stored.State, stored.Holder, tc.want)
			}
			if n := len(stored.History); n != 3 {
				t.Errorf("history has %d entries, want 3 (claim, bind, %s once)", n, tc.name)
			}
		})
	}
}
