package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// MetadataTopic is the KRaft metadata log, whose partition 0 the controller quorum
// replicates; DescribeQuorum describes it.
const MetadataTopic = "__cluster_metadata"

// DefaultCaughtUpLag is how far behind the leader a voter's last caught-up fetch may
// be for the voter to count as caught up. It is Kafka's default
// controller.quorum.fetch.timeout.ms (2 s), the bound after which a follower that
// has not fetched starts an election; Strimzi's quorum check uses the same bound.
const DefaultCaughtUpLag = 2 * time.Second

// Voter is one member of the KRaft controller quorum as DescribeQuorum reports it.
type Voter struct {
	ID int32
	// LogEndOffset is the voter's last known log end offset (-1 unknown).
	LogEndOffset int64
	// LastCaughtUp is the leader's wall-clock time (ms since the epoch) of the offset
	// up to which the voter had fetched at its most recent fetch; -1 when unknown.
	LastCaughtUp int64
	// LastFetch is the leader's wall-clock time (ms) of the voter's last fetch; -1
	// when unknown.
	LastFetch int64
}

// Quorum is the state of the KRaft controller quorum.
type Quorum struct {
	// Leader is the active controller's node id; -1 when there is none.
	Leader int32
	// LeaderEpoch and HighWatermark describe the metadata log.
	LeaderEpoch   int32
	HighWatermark int64
	// Voters are the controllers that vote, by id.
	Voters []Voter
	// Observers are the brokers (and controllers not voting) that replicate the log.
	Observers []Voter
}

// IsVoter reports whether node is a voter of the quorum.
func (q Quorum) IsVoter(node int32) bool {
	return slices.ContainsFunc(q.Voters, func(v Voter) bool { return v.ID == node })
}

// VoterIDs returns the voters' ids, ascending.
func (q Quorum) VoterIDs() []int32 {
	ids := make([]int32, 0, len(q.Voters))
	for _, v := range q.Voters {
		ids = append(ids, v.ID)
	}
	slices.Sort(ids)
	return ids
}

// now is the leader's clock as the answer shows it: the leader reports its own
// caught-up time as the time of the answer (Kafka 3.3+; test/realkafka's
// TestQuorumRule checks it on the Kafka the template deploys). Should it not, the
// latest fetch time any replica reports is the closest lower bound.
func (q Quorum) now() int64 {
	var now int64 = -1
	for _, v := range append(slices.Clone(q.Voters), q.Observers...) {
		if v.ID == q.Leader && v.LastCaughtUp > now {
			now = v.LastCaughtUp
		}
	}
	if now > 0 {
		return now
	}
	for _, v := range append(slices.Clone(q.Voters), q.Observers...) {
		now = max(now, v.LastFetch, v.LastCaughtUp)
	}
	return now
}

// CaughtUp returns the voters that are caught up with the leader: the leader itself,
// and every follower whose last caught-up time is known and at most lag behind the
// leader's clock. A voter the leader knows nothing of is not caught up.
func (q Quorum) CaughtUp(lag time.Duration) []int32 {
	now := q.now()
	var ids []int32
	for _, v := range q.Voters {
		switch {
		case v.ID == q.Leader && q.Leader >= 0:
			ids = append(ids, v.ID)
		case v.LastCaughtUp >= 0 && now >= 0 && now-v.LastCaughtUp <= lag.Milliseconds():
			ids = append(ids, v.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// QuorumVerdict is the outcome of the quorum rule for one node.
type QuorumVerdict struct {
	Node int32
	// Voter is false when the node is not a controller voter: the rule does not apply.
	Voter bool
	// Safe is true when the node may leave without costing the quorum its majority.
	Safe bool
	// Leader is the active controller when the verdict was taken.
	Leader int32
	// Voters are all voters; Remaining those caught up apart from Node; Majority the
	// number of voters a quorum needs.
	Voters    []int32
	Remaining []int32
	Majority  int
}

// String summarises the verdict for logs.
func (v QuorumVerdict) String() string {
	switch {
	case !v.Voter:
		return fmt.Sprintf("node %d is not a controller voter (voters %v)", v.Node, v.Voters)
	case v.Safe:
		return fmt.Sprintf("controller %d may leave: %d caught-up voters %v remain of %v, a majority is %d",
			v.Node, len(v.Remaining), v.Remaining, v.Voters, v.Majority)
	}
	return fmt.Sprintf("controller %d may not leave: only %d caught-up voters %v would remain of %v, a majority is %d",
		v.Node, len(v.Remaining), v.Remaining, v.Voters, v.Majority)
}

// QuorumSafe applies the quorum rule (DESIGN.md "Removal safety"): a KRaft voter may
// leave only if the voters that remain and are caught up (within lag of the leader)
// are a majority of all voters. The voter set does not shrink when a controller
// stops, so the majority is counted over every voter. A node that is not a voter is
// always safe for this rule. A quorum without a leader is never safe to shrink.
func QuorumSafe(q Quorum, node int32, lag time.Duration) QuorumVerdict {
	v := QuorumVerdict{Node: node, Leader: q.Leader, Voters: q.VoterIDs(), Voter: q.IsVoter(node)}
	v.Majority = len(v.Voters)/2 + 1
	if !v.Voter {
		v.Safe = true
		return v
	}
	for _, id := range q.CaughtUp(lag) {
		if id != node {
			v.Remaining = append(v.Remaining, id)
		}
	}
	v.Safe = q.Leader >= 0 && len(v.Remaining) >= v.Majority
	return v
}

// ErrQuorumUnsupported means the cluster does not answer DescribeQuorum at all: it is
// not a KRaft cluster (ZooKeeper mode), or its brokers are older than Kafka 3.3 (which
// forward DescribeQuorum to the controllers). The quorum rule does not apply to it.
// Only two answers mean this: the broker's ApiVersions answer does not list
// DescribeQuorum (the client then refuses to send it), or the broker answers
// UNSUPPORTED_VERSION. Every other failure (a timeout, a lost connection, no leader)
// is an ordinary error: the quorum could not be read, and removal is not safe.
var ErrQuorumUnsupported = errors.New("the cluster does not support DescribeQuorum (not KRaft, or Kafka before 3.3)")

// Quorum describes the KRaft controller quorum with a fresh DescribeQuorum request
// (answered by the active controller, forwarded by any broker), sent to Hedge
// brokers at once and bounded by CallTimeout like every other call. A cluster that
// does not support the request at all gets an error wrapping ErrQuorumUnsupported.
func (c *Client) Quorum(ctx context.Context) (Quorum, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	addr, resp, err := c.first(ctx, func() kmsg.Request {
		req := kmsg.NewPtrDescribeQuorumRequest()
		t := kmsg.NewDescribeQuorumRequestTopic()
		t.Topic = MetadataTopic
		p := kmsg.NewDescribeQuorumRequestTopicPartition()
		p.Partition = 0
		t.Partitions = append(t.Partitions, p)
		req.Topics = append(req.Topics, t)
		return req
	})
	if err != nil {
		// The client refuses a request its broker does not advertise ("broker is too
		// old"), with an error it does not export: ask the broker what it supports,
		// and call the request unsupported only when it says so.
		if advertised, aerr := c.advertises(ctx, kmsg.DescribeQuorum); aerr == nil && !advertised {
			return Quorum{}, fmt.Errorf("describing the controller quorum: %w: the broker's ApiVersions answer has no DescribeQuorum (%w)", ErrQuorumUnsupported, err)
		}
		return Quorum{}, fmt.Errorf("describing the controller quorum: %w", err)
	}
	q, err := quorumOf(resp.(*kmsg.DescribeQuorumResponse))
	if err != nil {
		return Quorum{}, fmt.Errorf("%w (answered by %s)", err, addr)
	}
	return q, nil
}

// advertises reports whether a broker of the cluster lists key in a fresh ApiVersions
// answer.
func (c *Client) advertises(ctx context.Context, key kmsg.Key) (bool, error) {
	_, kresp, err := c.first(ctx, func() kmsg.Request { return kmsg.NewPtrApiVersionsRequest() })
	if err != nil {
		return false, fmt.Errorf("asking which requests the broker supports: %w", err)
	}
	resp := kresp.(*kmsg.ApiVersionsResponse)
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return false, fmt.Errorf("asking which requests the broker supports: %w", err)
	}
	return slices.ContainsFunc(resp.ApiKeys, func(k kmsg.ApiVersionsResponseApiKey) bool { return k.ApiKey == int16(key) }), nil
}

// quorumOf reads the metadata partition's state out of a DescribeQuorum response.
func quorumOf(resp *kmsg.DescribeQuorumResponse) (Quorum, error) {
	if err := kerr.ErrorForCode(resp.ErrorCode); errors.Is(err, kerr.UnsupportedVersion) {
		return Quorum{}, fmt.Errorf("describing the controller quorum: %w: %w%s", ErrQuorumUnsupported, err, message(resp.ErrorMessage))
	} else if err != nil {
		return Quorum{}, fmt.Errorf("describing the controller quorum: %w%s", err, message(resp.ErrorMessage))
	}
	for _, t := range resp.Topics {
		if t.Topic != MetadataTopic {
			continue
		}
		for _, p := range t.Partitions {
			if p.Partition != 0 {
				continue
			}
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return Quorum{}, fmt.Errorf("describing the controller quorum: %w%s", err, message(p.ErrorMessage))
			}
			q := Quorum{Leader: p.LeaderID, LeaderEpoch: p.LeaderEpoch, HighWatermark: p.HighWatermark}
			for _, r := range p.CurrentVoters {
				q.Voters = append(q.Voters, voterOf(r))
			}
			for _, r := range p.Observers {
				q.Observers = append(q.Observers, voterOf(r))
			}
			slices.SortFunc(q.Voters, func(a, b Voter) int { return int(a.ID - b.ID) })
			return q, nil
		}
	}
	return Quorum{}, fmt.Errorf("describing the controller quorum: the answer has no %s partition 0", MetadataTopic)
}

func voterOf(r kmsg.DescribeQuorumResponseTopicPartitionReplicaState) Voter {
	return Voter{ID: r.ReplicaID, LogEndOffset: r.LogEndOffset, LastCaughtUp: r.LastCaughtUpTimestamp, LastFetch: r.LastFetchTimestamp}
}

func message(m *string) string {
	if m == nil || strings.TrimSpace(*m) == "" {
		return ""
	}
	return ": " + *m
}
