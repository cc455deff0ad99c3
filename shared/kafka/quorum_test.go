package kafka

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest"
)

// quorumOfVoters builds a quorum whose leader's clock reads now and whose voters
// last caught up behind[id] before it (-1: unknown to the leader).
func quorumOfVoters(leader int32, voters []int32, behind map[int32]time.Duration) Quorum {
	const now = 1_700_000_000_000
	q := Quorum{Leader: leader, HighWatermark: 500}
	for _, id := range voters {
		v := Voter{ID: id, LogEndOffset: 500, LastCaughtUp: now, LastFetch: now}
		if b, ok := behind[id]; ok {
			if b < 0 {
				v = Voter{ID: id, LogEndOffset: -1, LastCaughtUp: -1, LastFetch: -1}
			} else {
				v.LastCaughtUp, v.LastFetch = now-b.Milliseconds(), now-b.Milliseconds()
			}
		}
		q.Voters = append(q.Voters, v)
	}
	return q
}

func TestQuorumSafeRule(t *testing.T) {
	lag := DefaultCaughtUpLag
	cases := []struct {
		name      string
		leader    int32
		voters    []int32
		behind    map[int32]time.Duration
		node      int32
		safe      bool
		voter     bool
		remaining []int32
	}{
		{"three voters all caught up: a follower may go", 0, []int32{0, 1, 2}, nil, 1, true, true, []int32{0, 2}},
		{"three voters all caught up: the leader may go", 0, []int32{0, 1, 2}, nil, 0, true, true, []int32{1, 2}},
		{"three voters, one lagging: a caught-up follower may not go", 0, []int32{0, 1, 2}, map[int32]time.Duration{2: 30 * time.Second}, 1, false, true, []int32{0}},
		{"three voters, one lagging: the lagging one may go", 0, []int32{0, 1, 2}, map[int32]time.Duration{2: 30 * time.Second}, 2, true, true, []int32{0, 1}},
		{"three voters, one unknown to the leader: another may not go", 0, []int32{0, 1, 2}, map[int32]time.Duration{2: -1}, 1, false, true, []int32{0}},
		{"lag just inside the bound counts as caught up", 0, []int32{0, 1, 2}, map[int32]time.Duration{2: 2 * time.Second}, 1, true, true, []int32{0, 2}},
		{"lag just past the bound does not", 0, []int32{0, 1, 2}, map[int32]time.Duration{2: 2*time.Second + time.Millisecond}, 1, false, true, []int32{0}},
		{"five voters, one down: one more may go", 0, []int32{0, 1, 2, 3, 4}, map[int32]time.Duration{4: time.Minute}, 3, true, true, []int32{0, 1, 2}},
		{"five voters, two down: none may go", 0, []int32{0, 1, 2, 3, 4}, map[int32]time.Duration{3: time.Minute, 4: -1}, 2, false, true, []int32{0, 1}},
		{"single voter may never go", 0, []int32{0}, nil, 0, false, true, nil},
		{"not a voter (broker-only node): the rule does not apply", 0, []int32{0, 1, 2}, map[int32]time.Duration{1: -1, 2: -1}, 5, true, false, nil},
		{"no leader: never safe", -1, []int32{0, 1, 2}, nil, 1, false, true, []int32{0, 2}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			q := quorumOfVoters(c.leader, c.voters, c.behind)
			v := QuorumSafe(q, c.node, lag)
			if v.Safe != c.safe || v.Voter != c.voter || !slices.Equal(v.Remaining, c.remaining) {
				t.Fatalf("QuorumSafe(node %d) = safe %v voter %v remaining %v; want safe %v voter %v remaining %v (%s)",
					c.node, v.Safe, v.Voter, v.Remaining, c.safe, c.voter, c.remaining, v)
			}
			if v.Majority != len(c.voters)/2+1 {
				t.Fatalf("majority %d, want %d", v.Majority, len(c.voters)/2+1)
			}
			if v.String() == "" {
				t.Fatal("empty verdict string")
			}
		})
	}
}

func TestQuorumLeaderClockFallback(t *testing.T) {
	// Kafka before 3.3 reported -1 for the leader's own timestamps: the latest fetch
	// time of any replica then stands in for the leader's clock.
	q := Quorum{Leader: 0, Voters: []Voter{
		{ID: 0, LogEndOffset: 10, LastCaughtUp: -1, LastFetch: -1},
		{ID: 1, LogEndOffset: 10, LastCaughtUp: 10_000, LastFetch: 10_000},
		{ID: 2, LogEndOffset: 4, LastCaughtUp: 1_000, LastFetch: 1_000},
	}}
	if got := q.CaughtUp(DefaultCaughtUpLag); !slices.Equal(got, []int32{0, 1}) {
		t.Fatalf("caught up %v, want [0 1]", got)
	}
}

// TestQuorumOverTheWire sends a real DescribeQuorum to kfake, whose answer the
// kafkatest script provides, and applies the rule to what came back.
func TestQuorumOverTheWire(t *testing.T) {
	kc := kafkatest.Start(t)
	c, err := NewClient(kc.Config(), kgo.RetryTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	q, err := c.Quorum(ctx)
	if err != nil {
		t.Fatalf("default quorum: %v", err)
	}
	if !slices.Equal(q.VoterIDs(), []int32{0, 1, 2}) || q.Leader != 0 {
		t.Fatalf("default quorum voters %v leader %d, want [0 1 2] led by 0", q.VoterIDs(), q.Leader)
	}
	if v := QuorumSafe(q, 1, DefaultCaughtUpLag); !v.Safe {
		t.Fatalf("all caught up, node 1 should be safe: %s", v)
	}

	kc.SetQuorum(kafkatest.Quorum{Leader: 0, Voters: []int32{0, 1, 2}, Behind: map[int32]time.Duration{2: 20 * time.Second}})
	q, err = c.Quorum(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v := QuorumSafe(q, 1, DefaultCaughtUpLag); v.Safe || !slices.Equal(v.Remaining, []int32{0}) {
		t.Fatalf("voter 2 lags 20 s: removing 1 must be unsafe with only [0] remaining, got %s", v)
	}
	if v := QuorumSafe(q, 2, DefaultCaughtUpLag); !v.Safe {
		t.Fatalf("removing the lagging voter 2 leaves [0 1]: want safe, got %s", v)
	}

	kc.SetQuorum(kafkatest.Quorum{ErrorCode: kerr.NotLeaderForPartition.Code})
	if _, err := c.Quorum(ctx); err == nil {
		t.Fatal("an error answer must be an error")
	}
}

// TestQuorumUnsupported tells a cluster that has no controller quorum to describe (it
// does not advertise DescribeQuorum, or answers UNSUPPORTED_VERSION) from one whose
// quorum could not be read just now: only the former is ErrQuorumUnsupported.
func TestQuorumUnsupported(t *testing.T) {
	ctx := context.Background()
	client := func(t *testing.T, kc *kafkatest.Cluster) *Client {
		c, err := NewClient(kc.Config(), kgo.RetryTimeout(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	t.Run("not advertised", func(t *testing.T) {
		kc := kafkatest.Start(t)
		kc.HideQuorumAPI()
		_, err := client(t, kc).Quorum(ctx)
		if !errors.Is(err, ErrQuorumUnsupported) {
			t.Fatalf("err = %v, want ErrQuorumUnsupported", err)
		}
		t.Logf("not advertised: %v", err)
	})
	kc := kafkatest.Start(t)
	c := client(t, kc)
	for _, tc := range []struct {
		name        string
		code        int16
		unsupported bool
	}{
		{"UNSUPPORTED_VERSION", kerr.UnsupportedVersion.Code, true},
		{"NOT_LEADER_OR_FOLLOWER", kerr.NotLeaderForPartition.Code, false},
		{"REQUEST_TIMED_OUT", kerr.RequestTimedOut.Code, false},
		{"BROKER_NOT_AVAILABLE", kerr.BrokerNotAvailable.Code, false},
		{"UNKNOWN_SERVER_ERROR", kerr.UnknownServerError.Code, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc.SetQuorum(kafkatest.Quorum{ErrorCode: tc.code})
			_, err := c.Quorum(ctx)
			if err == nil || errors.Is(err, ErrQuorumUnsupported) != tc.unsupported {
				t.Fatalf("err = %v; want an error, ErrQuorumUnsupported: %v", err, tc.unsupported)
			}
		})
	}
	t.Run("the cluster gone", func(t *testing.T) {
		kc.Close()
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := c.Quorum(cctx)
		if err == nil || errors.Is(err, ErrQuorumUnsupported) {
			t.Fatalf("err = %v; want an ordinary error: the quorum could not be read", err)
		}
	})
}
