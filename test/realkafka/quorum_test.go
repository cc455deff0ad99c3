package realkafka_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/test/realkafka"
)

// The controller-quorum rule against Kafka's own DescribeQuorum: with every voter
// up any one may go; with one controller down (killed, or stopped) another may not,
// but the one that is down may; once it has rejoined, any may go again. And the
// leader reports its own last caught-up time as the time of the answer, the clock
// the rule measures lag against.
func TestQuorumRule(t *testing.T) {
	ctx := context.Background()
	c := cluster(t)
	k := client(t, c)

	before := time.Now().UnixMilli()
	q, err := k.Quorum(ctx)
	after := time.Now().UnixMilli()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(q.VoterIDs(), c.IDs()) || q.Leader < 0 {
		t.Fatalf("quorum voters %v, leader %d; want %v with a leader", q.VoterIDs(), q.Leader, c.IDs())
	}
	var leaderClock int64 = -1
	for _, v := range q.Voters {
		t.Logf("voter %d: log end offset %d, last caught up %+d ms, last fetch %+d ms (relative to the request)", v.ID, v.LogEndOffset, v.LastCaughtUp-before, v.LastFetch-before)
		if v.ID == q.Leader {
			leaderClock = v.LastCaughtUp
		}
	}
	if leaderClock < before-5 || leaderClock > after+5 { // same machine, same clock
		t.Errorf("leader %d reports last caught up at %d, outside the request's %d..%d: its own time is not the answer's time", q.Leader, leaderClock, before, after)
	}
	t.Logf("leader %d reports its own last caught-up time %d ms into the %d ms request", q.Leader, leaderClock-before, after-before)
	for _, id := range c.IDs() {
		if v := kafka.QuorumSafe(q, id, kafka.DefaultCaughtUpLag); !v.Safe {
			t.Errorf("all voters up: %s", v)
		}
	}

	for _, fault := range []struct {
		name     string
		node     int32
		down     func(*realkafka.Server) error
		asked    int32 // another voter, whose removal the rule must refuse
		restarts bool
	}{
		{"SIGKILL", 2, (*realkafka.Server).Kill, 1, true},
		{"SIGTERM", 1, func(s *realkafka.Server) error { return s.Stop(2 * time.Minute) }, 0, true},
	} {
		t.Run(fault.name, func(t *testing.T) {
			waitISRFull(t, c, time.Minute)
			if err := fault.down(c.Nodes[fault.node]); err != nil {
				t.Fatal(err)
			}
			down := time.Now()
			var log strings.Builder
			var unsafeAfter time.Duration
			for time.Since(down) < 30*time.Second {
				q, err := k.Quorum(ctx)
				if err != nil {
					fmt.Fprintf(&log, "  t+%-6s error: %v\n", time.Since(down).Round(100*time.Millisecond), err)
					time.Sleep(250 * time.Millisecond)
					continue
				}
				other, self := kafka.QuorumSafe(q, fault.asked, kafka.DefaultCaughtUpLag), kafka.QuorumSafe(q, fault.node, kafka.DefaultCaughtUpLag)
				fmt.Fprintf(&log, "  t+%-6s leader %d: remove %d safe=%v (remaining %v), remove %d safe=%v\n",
					time.Since(down).Round(100*time.Millisecond), q.Leader, fault.asked, other.Safe, other.Remaining, fault.node, self.Safe)
				if !other.Safe && self.Safe {
					unsafeAfter = time.Since(down)
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			t.Logf("node %d down (%s):\n%s", fault.node, fault.name, log.String())
			if unsafeAfter == 0 {
				t.Fatalf("node %d down for 30 s: the rule never refused removing %d (while allowing %d)", fault.node, fault.asked, fault.node)
			}
			t.Logf("%s of controller %d: removing controller %d refused %s later (DefaultCaughtUpLag %s)", fault.name, fault.node, fault.asked, unsafeAfter.Round(time.Millisecond), kafka.DefaultCaughtUpLag)

			began := time.Now()
			if err := c.Nodes[fault.node].Start(); err != nil {
				t.Fatal(err)
			}
			var safeAfter time.Duration
			for time.Since(began) < 90*time.Second {
				if q, err := k.Quorum(ctx); err == nil && kafka.QuorumSafe(q, fault.asked, kafka.DefaultCaughtUpLag).Safe &&
					kafka.QuorumSafe(q, fault.node, kafka.DefaultCaughtUpLag).Safe {
					safeAfter = time.Since(began)
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if safeAfter == 0 {
				t.Fatalf("controller %d restarted 90 s ago: the quorum rule still refuses", fault.node)
			}
			t.Logf("restart of controller %d: every voter may go again %s after the start", fault.node, safeAfter.Round(time.Millisecond))
			waitISRFull(t, c, time.Minute)
		})
	}
}
