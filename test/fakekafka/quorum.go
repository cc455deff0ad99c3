package fakekafka

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Quorum scripts the answer to DescribeQuorum, which kfake does not implement
// (KRaft has no controller quorum in kfake). Without a script the cluster answers
// as a cluster of combined nodes would: every broker is a voter, broker 0 leads, and
// every voter is caught up.
type Quorum struct {
	// Leader is the active controller; -1 for none.
	Leader int32
	// Voters are the voting controllers.
	Voters []int32
	// Behind says how far a voter's last caught-up fetch is behind the leader's clock;
	// a voter not in the map is caught up (behind by 0). Unknown marks a voter the
	// leader knows nothing of (timestamps and offset -1).
	Behind map[int32]time.Duration
	// ErrorCode, when not 0, is answered instead of the quorum.
	ErrorCode int16
}

// Unknown is a Quorum.Behind value: the leader knows nothing of the voter.
const Unknown time.Duration = -1

// SetQuorum makes DescribeQuorum answer q from now on.
func (c *Cluster) SetQuorum(q Quorum) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q.Voters = slices.Clone(q.Voters)
	q.Behind = cloneMap(q.Behind)
	c.quorum = &q
}

func cloneMap(m map[int32]time.Duration) map[int32]time.Duration {
	out := make(map[int32]time.Duration, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// controlQuorum is the kfake ControlKey hook for DescribeQuorum.
func (c *Cluster) controlQuorum(kreq kmsg.Request) (kmsg.Response, error, bool) {
	c.Fake.KeepControl()
	req := kreq.(*kmsg.DescribeQuorumRequest)
	if c.isDown() {
		return nil, errDown, true
	}
	c.mu.Lock()
	q := Quorum{Leader: 0}
	if c.quorum != nil {
		q = *c.quorum
	} else {
		for _, b := range c.base.Brokers {
			q.Voters = append(q.Voters, b.NodeID)
		}
		slices.Sort(q.Voters)
	}
	c.mu.Unlock()

	resp := req.ResponseKind().(*kmsg.DescribeQuorumResponse)
	if q.ErrorCode != 0 {
		resp.ErrorCode = q.ErrorCode
		return resp, nil, true
	}
	now := time.Now().UnixMilli()
	const hw = 1000
	t := kmsg.NewDescribeQuorumResponseTopic()
	t.Topic = "__cluster_metadata"
	p := kmsg.NewDescribeQuorumResponseTopicPartition()
	p.Partition, p.LeaderID, p.LeaderEpoch, p.HighWatermark = 0, q.Leader, 1, hw
	for _, id := range q.Voters {
		r := kmsg.NewDescribeQuorumResponseTopicPartitionReplicaState()
		r.ReplicaID = id
		behind, ok := q.Behind[id]
		switch {
		case ok && behind == Unknown:
			r.LogEndOffset, r.LastCaughtUpTimestamp, r.LastFetchTimestamp = -1, -1, -1
		default:
			r.LogEndOffset = hw - behind.Milliseconds()/500 // a no-op record every 500 ms
			r.LastCaughtUpTimestamp = now - behind.Milliseconds()
			r.LastFetchTimestamp = now - behind.Milliseconds()
		}
		p.CurrentVoters = append(p.CurrentVoters, r)
	}
	t.Partitions = append(t.Partitions, p)
	resp.Topics = append(resp.Topics, t)
	return resp, nil, true
}

// advertiseQuorum makes the brokers advertise DescribeQuorum (versions 0–2) in their
// ApiVersions answers, which kfake leaves it out of: a client does not send a request
// its broker does not advertise. The answer is kfake's own, read once, plus that key.
func (c *Cluster) advertiseQuorum(ctx context.Context) error {
	resp, err := kmsg.NewPtrApiVersionsRequest().RequestWith(ctx, c.admin)
	if err == nil {
		err = kerr.ErrorForCode(resp.ErrorCode)
	}
	if err != nil {
		return fmt.Errorf("reading kfake's ApiVersions: %w", err)
	}
	if !slices.ContainsFunc(resp.ApiKeys, func(k kmsg.ApiVersionsResponseApiKey) bool { return k.ApiKey == int16(kmsg.DescribeQuorum) }) {
		k := kmsg.NewApiVersionsResponseApiKey()
		k.ApiKey, k.MinVersion, k.MaxVersion = int16(kmsg.DescribeQuorum), 0, 2
		resp.ApiKeys = append(resp.ApiKeys, k)
	}
	c.mu.Lock()
	c.apis = resp
	c.mu.Unlock()
	c.Fake.ControlKey(int16(kmsg.ApiVersions), c.controlApiVersions)
	return nil
}

// controlApiVersions answers ApiVersions with the answer advertiseQuorum built
// (without DescribeQuorum after HideQuorumAPI).
func (c *Cluster) controlApiVersions(kreq kmsg.Request) (kmsg.Response, error, bool) {
	c.Fake.KeepControl()
	req := kreq.(*kmsg.ApiVersionsRequest)
	if c.isDown() {
		return nil, errDown, true
	}
	if req.Version > c.apis.Version {
		return nil, nil, false // kfake answers versions it does not serve itself (KIP-511)
	}
	c.mu.Lock()
	resp := *c.apis
	hide := c.noQuorumAPI
	c.mu.Unlock()
	resp.Version = req.Version
	resp.ApiKeys = slices.Clone(resp.ApiKeys)
	if hide {
		resp.ApiKeys = slices.DeleteFunc(resp.ApiKeys, func(k kmsg.ApiVersionsResponseApiKey) bool { return k.ApiKey == int16(kmsg.DescribeQuorum) })
	}
	return &resp, nil, true
}

// HideQuorumAPI makes the brokers stop advertising DescribeQuorum, as a ZooKeeper-mode
// cluster (or one before Kafka 3.3) does: a client connecting from now on does not
// send the request. Clients already connected keep what they learnt.
func (c *Cluster) HideQuorumAPI() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.noQuorumAPI = true
}
