// Package fakekafka runs an in-process Kafka cluster (franz-go's kfake) whose
// Metadata and DescribeQuorum answers can be scripted. It is an ordinary package (no
// dependency on package testing), used by the demo (`slotctl demo`) and, through
// shared/kafka/kafkatest, which wraps it for tests, by the tests.
//
// kfake does not model replication: every partition it reports has ISR equal to
// its replicas, and every broker stays registered. Removal safety and health need
// partitions out of the ISR, offline partitions and brokers that left, so Cluster
// answers every Metadata request itself (a kfake ControlKey hook) from the cluster's
// own real answer with the script's edits applied:
//
//	c, err := fakekafka.Start()                        // 3 brokers, min.insync.replicas=2
//	defer c.Close()
//	err = c.CreateTopic(ctx, "orders", 3, 3, nil)      // 3 partitions, replication factor 3
//	c.SetISR("orders", 0, 0, 1)                        // broker 2 fell out of orders/0's ISR
//	c.Restore("orders", 0)                             // and caught up again
//
// The real answer is fetched through kfake's normal request path when the
// cluster starts and after every CreateTopic (call Refresh after changing the
// cluster's topology by other means, e.g. Fake.MoveTopicPartition). That fetch is
// told apart from other clients by IncludeTopicAuthorizedOperations, which
// only this package sets; such requests are left to kfake.
package fakekafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/slotkeeper/slotkeeper/shared/config"
)

// Brokers and MinISR are the defaults of Start: node ids 0..Brokers-1, and the
// brokers' min.insync.replicas.
const (
	Brokers = 3
	MinISR  = 2
)

// Cluster is a kfake cluster with scriptable Metadata answers. Its methods are
// safe for concurrent use.
type Cluster struct {
	// Fake is the kfake cluster itself.
	Fake *kfake.Cluster
	// Addrs are the brokers' host:port, all on 127.0.0.1.
	Addrs []string

	admin     *kgo.Client
	answered  atomic.Int64
	closeOnce sync.Once

	mu      sync.Mutex
	base    *kmsg.MetadataResponse    // kfake's own answer, for all topics
	isr     map[partition][]int32     // scripted ISRs
	offline map[partition]bool        // scripted leaderless partitions
	gone    map[int32]bool            // brokers left out of the broker list
	hosts   map[int32]string          // scripted advertised hosts (Advertise)
	down    map[int32]bool            // brokers that answer nothing (SetDown)
	quorum  *Quorum                   // scripted controller quorum; nil: every broker a caught-up voter
	apis    *kmsg.ApiVersionsResponse // kfake's ApiVersions answer plus DescribeQuorum
	// noQuorumAPI: leave DescribeQuorum out of the ApiVersions answer (HideQuorumAPI).
	noQuorumAPI bool
}

type partition struct {
	topic string
	p     int32
}

// Start starts a cluster of Brokers brokers whose min.insync.replicas is MinISR and
// installs the Metadata script; Close stops it. opts are applied after those defaults
// (kfake.NumBrokers and kfake.BrokerConfigs override them).
func Start(opts ...kfake.Opt) (*Cluster, error) {
	all := append([]kfake.Opt{
		kfake.NumBrokers(Brokers),
		kfake.BrokerConfigs(map[string]string{"min.insync.replicas": strconv.Itoa(MinISR)}),
	}, opts...)
	fake, err := kfake.NewCluster(all...)
	if err != nil {
		return nil, fmt.Errorf("starting kfake: %w", err)
	}
	c := &Cluster{
		Fake:    fake,
		Addrs:   fake.ListenAddrs(),
		isr:     map[partition][]int32{},
		offline: map[partition]bool{},
		gone:    map[int32]bool{},
		hosts:   map[int32]string{},
		down:    map[int32]bool{},
	}
	c.admin, err = kgo.NewClient(kgo.SeedBrokers(c.Addrs...), kgo.RequestRetries(3))
	if err != nil {
		fake.Close()
		return nil, fmt.Errorf("fakekafka admin client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Refresh(ctx); err != nil {
		c.Close()
		return nil, err
	}
	fake.ControlKey(int16(kmsg.Metadata), c.control)
	if err := c.advertiseQuorum(ctx); err != nil {
		c.Close()
		return nil, err
	}
	fake.ControlKey(int16(kmsg.DescribeQuorum), c.controlQuorum)
	return c, nil
}

// Config is a slotkeeper Kafka configuration pointing at the cluster.
func (c *Cluster) Config() config.KafkaConfig {
	return config.KafkaConfig{Bootstrap: slices.Clone(c.Addrs)}
}

// CreateTopic creates a topic with the given partition count, replication factor
// and topic configs (nil for none), then refreshes the real Metadata answer.
func (c *Cluster) CreateTopic(ctx context.Context, topic string, partitions int32, rf int16, configs map[string]*string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(c.admin).CreateTopic(ctx, partitions, rf, configs, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		return fmt.Errorf("creating topic %s: %w", topic, err)
	}
	return c.Refresh(ctx)
}

// Refresh re-reads kfake's real Metadata answer, on which scripted answers are based.
func (c *Cluster) Refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req := kmsg.NewPtrMetadataRequest()
	req.IncludeTopicAuthorizedOperations = true // marks this request as ours: kfake answers it
	resp, err := req.RequestWith(ctx, c.admin)
	if err != nil {
		return fmt.Errorf("reading kfake metadata: %w", err)
	}
	c.mu.Lock()
	c.base = resp
	c.mu.Unlock()
	return nil
}

// Replicas returns a partition's replicas as kfake assigned them (nil if unknown).
func (c *Cluster) Replicas(topic string, p int32) []int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.base.Topics {
		if t.Topic != nil && *t.Topic == topic {
			for _, bp := range t.Partitions {
				if bp.Partition == p {
					return slices.Clone(bp.Replicas)
				}
			}
		}
	}
	return nil
}

// SetISR makes Metadata report isr as the partition's in-sync replicas.
func (c *Cluster) SetISR(topic string, p int32, isr ...int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.isr[partition{topic, p}] = slices.Clone(isr)
}

// SetOffline makes Metadata report the partition as Kafka reports one that lost
// all its in-sync replicas: leader -1, empty ISR, LEADER_NOT_AVAILABLE.
func (c *Cluster) SetOffline(topic string, p int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offline[partition{topic, p}] = true
}

// Restore drops every edit of one partition: it is reported fully in sync again.
func (c *Cluster) Restore(topic string, p int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.isr, partition{topic, p})
	delete(c.offline, partition{topic, p})
}

// Unregister leaves node out of the broker list, as after a broker's controlled
// shutdown. Partitions are not changed: script their ISR separately if needed.
func (c *Cluster) Unregister(node int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gone[node] = true
}

// SetDown makes node answer nothing (down true), as a broker whose process died or
// hangs: every Metadata, DescribeQuorum and ApiVersions request it receives (what
// slotkeeper's removal-safety and health checks ask), from now on, closes the
// connection unanswered, so a client's request to it fails. Other requests are left
// to kfake. Its registration and the ISRs are not changed
// (script them separately: Kafka keeps a dead broker in both until its session times
// out). down false makes it answer again.
func (c *Cluster) SetDown(node int32, down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if down {
		c.down[node] = true
	} else {
		delete(c.down, node)
	}
}

// errDown closes the connection of a request to a broker that is down.
var errDown = errors.New("fakekafka: broker is down")

// isDown reports whether the broker handling the current control call is down. It
// must be called from a control function.
func (c *Cluster) isDown() bool {
	node := c.Fake.CurrentNode()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.down[node]
}

// Register puts node back in the broker list.
func (c *Cluster) Register(node int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.gone, node)
}

// Advertise makes the Metadata answers list node at host (its port kept), as a
// broker that advertises its instance's address; a node the cluster does not have is
// added to the broker list at host:9092 (a registered broker nobody can reach: only
// for checks that read the broker list).
func (c *Cluster) Advertise(node int32, host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hosts[node] = host
}

// Reset drops every edit: all brokers registered and answering, every partition in
// sync.
func (c *Cluster) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.isr)
	clear(c.offline)
	clear(c.gone)
	clear(c.hosts)
	clear(c.down)
	c.quorum = nil
}

// Answered counts the Metadata requests answered by the script, i.e. those sent
// by anything but this package: a test can prove that a check sent a fresh one.
func (c *Cluster) Answered() int64 { return c.answered.Load() }

// Close stops the cluster, as if Kafka went down. It is safe to call more than once.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		c.admin.Close()
		c.Fake.Close()
	})
}

// control is the kfake ControlKey hook for Metadata requests.
func (c *Cluster) control(kreq kmsg.Request) (kmsg.Response, error, bool) {
	c.Fake.KeepControl()
	req := kreq.(*kmsg.MetadataRequest)
	if req.IncludeTopicAuthorizedOperations {
		return nil, nil, false // Refresh: let kfake answer
	}
	if c.isDown() {
		return nil, errDown, true
	}
	c.answered.Add(1)
	return c.answer(req), nil, true
}

// answer builds a Metadata response for req from the real answer and the edits.
func (c *Cluster) answer(req *kmsg.MetadataRequest) *kmsg.MetadataResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := req.ResponseKind().(*kmsg.MetadataResponse)
	resp.ClusterID = c.base.ClusterID
	resp.ControllerID = -1
	for _, b := range c.base.Brokers {
		if c.gone[b.NodeID] {
			continue
		}
		if h, ok := c.hosts[b.NodeID]; ok {
			b.Host = h
		}
		resp.Brokers = append(resp.Brokers, b)
		if b.NodeID == c.base.ControllerID || resp.ControllerID < 0 {
			resp.ControllerID = b.NodeID
		}
	}
	for node, h := range c.hosts {
		if !c.gone[node] && !slices.ContainsFunc(c.base.Brokers, func(b kmsg.MetadataResponseBroker) bool { return b.NodeID == node }) {
			b := kmsg.NewMetadataResponseBroker()
			b.NodeID, b.Host, b.Port = node, h, 9092
			resp.Brokers = append(resp.Brokers, b)
		}
	}
	slices.SortFunc(resp.Brokers, func(a, b kmsg.MetadataResponseBroker) int { return int(a.NodeID) - int(b.NodeID) })

	// nil Topics asks for every topic; otherwise only those named (by name or id).
	if req.Topics == nil {
		for _, t := range c.base.Topics {
			resp.Topics = append(resp.Topics, c.edited(t))
		}
		return resp
	}
	for _, rt := range req.Topics {
		i := slices.IndexFunc(c.base.Topics, func(t kmsg.MetadataResponseTopic) bool {
			if rt.TopicID != [16]byte{} {
				return t.TopicID == rt.TopicID
			}
			return rt.Topic != nil && t.Topic != nil && *t.Topic == *rt.Topic
		})
		if i < 0 {
			unknown := kmsg.NewMetadataResponseTopic()
			unknown.Topic, unknown.TopicID = rt.Topic, rt.TopicID
			unknown.ErrorCode = kerr.UnknownTopicOrPartition.Code
			resp.Topics = append(resp.Topics, unknown)
			continue
		}
		resp.Topics = append(resp.Topics, c.edited(c.base.Topics[i]))
	}
	return resp
}

// edited returns a deep copy of t with the scripted edits applied.
func (c *Cluster) edited(t kmsg.MetadataResponseTopic) kmsg.MetadataResponseTopic {
	t.AuthorizedOperations = -2147483648 // "not requested", as Kafka answers by default
	parts := make([]kmsg.MetadataResponseTopicPartition, 0, len(t.Partitions))
	for _, p := range t.Partitions {
		p.Replicas = slices.Clone(p.Replicas)
		p.ISR = slices.Clone(p.ISR)
		p.OfflineReplicas = slices.Clone(p.OfflineReplicas)
		key := partition{p: p.Partition}
		if t.Topic != nil {
			key.topic = *t.Topic
		}
		if isr, ok := c.isr[key]; ok {
			p.ISR = slices.Clone(isr)
		}
		if c.offline[key] {
			p.Leader, p.ISR = -1, []int32{}
			p.ErrorCode = kerr.LeaderNotAvailable.Code
		}
		parts = append(parts, p)
	}
	t.Partitions = parts
	return t
}
