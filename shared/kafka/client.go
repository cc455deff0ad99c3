package kafka

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/slotkeeper/slotkeeper/shared/config"
)

// Bounds on every call, so that an unreachable cluster costs seconds, not
// minutes: a check that cannot reach Kafka fails fast and the caller's own bounded
// wait (Wait) decides what happens next. Options passed to NewClient override the
// kgo ones.
const (
	// DialTimeout bounds one connection attempt, TLS and SASL included (kgo default 10 s).
	DialTimeout = 5 * time.Second
	// RequestRetries is how often kgo tries a retriable request (kgo default 20).
	RequestRetries = 3
	// RetryTimeout bounds the time kgo spends retrying one request (kgo default 30 s).
	RetryTimeout = 10 * time.Second
	// CallTimeout bounds each Client method as a whole (Partitions makes two requests).
	CallTimeout = 20 * time.Second
)

// minISRKey is the topic and broker configuration Partitions reads.
const minISRKey = "min.insync.replicas"

// ErrNoBootstrap is returned by NewClient when no bootstrap broker is configured:
// slotkeeper then runs without Kafka checks (SLOTKEEPER_KAFKA_BOOTSTRAP empty).
var ErrNoBootstrap = errors.New("no Kafka bootstrap brokers configured")

// Client asks a Kafka cluster the questions slotkeeper needs answered. It is safe
// for concurrent use. Every method sends a fresh Metadata request; none uses a cache.
type Client struct {
	cl *kgo.Client
}

// NewClient returns a client for the cluster cfg describes: its bootstrap
// brokers, TLS (system roots; the server name is taken from each broker's host)
// and SASL PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512. No connection is made until the
// first call. opts are appended after slotkeeper's own kgo options, so they win
// (tests use this for kfake's addresses or shorter timeouts).
func NewClient(cfg config.KafkaConfig, opts ...kgo.Opt) (*Client, error) {
	if len(cfg.Bootstrap) == 0 {
		return nil, ErrNoBootstrap
	}
	base := []kgo.Opt{
		kgo.SeedBrokers(cfg.Bootstrap...),
		kgo.ClientID("slotkeeper"),
		kgo.DialTimeout(DialTimeout),
		kgo.RequestRetries(RequestRetries),
		kgo.RetryTimeout(RetryTimeout),
	}
	if cfg.TLS {
		base = append(base, kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	switch cfg.SASLMechanism {
	case "":
	case "PLAIN":
		base = append(base, kgo.SASL(plain.Auth{User: cfg.Username, Pass: cfg.Password}.AsMechanism()))
	case "SCRAM-SHA-256":
		base = append(base, kgo.SASL(scram.Auth{User: cfg.Username, Pass: cfg.Password}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		base = append(base, kgo.SASL(scram.Auth{User: cfg.Username, Pass: cfg.Password}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("kafka SASL mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", cfg.SASLMechanism)
	}
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("creating Kafka client for %s: %w", strings.Join(cfg.Bootstrap, ","), err)
	}
	return &Client{cl: cl}, nil
}

// Close closes the client's connections.
func (c *Client) Close() { c.cl.Close() }

// RemovalSafe reports whether broker may leave the cluster now, by the rule of
// the package-level RemovalSafe applied to a fresh Partitions answer.
func (c *Client) RemovalSafe(ctx context.Context, broker int32) (Verdict, error) {
	parts, err := c.Partitions(ctx)
	if err != nil {
		return Verdict{Broker: broker}, fmt.Errorf("deciding whether broker %d may leave: %w", broker, err)
	}
	return RemovalSafe(broker, parts), nil
}

// Registered reports whether broker is in the broker list of a fresh Metadata
// response, i.e. whether the cluster currently counts it as alive.
func (c *Client) Registered(ctx context.Context, broker int32) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	meta, err := c.metadata(ctx, false)
	if err != nil {
		return false, fmt.Errorf("checking whether broker %d is registered: %w", broker, err)
	}
	return slices.Contains(brokersOf(meta), broker), nil
}

// Health is a snapshot of the cluster's brokers and partitions.
type Health struct {
	// Brokers are the registered brokers' node ids, ascending.
	Brokers []int32
	// Partitions counts all partitions of all topics (internal ones included).
	Partitions int
	// UnderReplicated counts partitions that have a leader and an ISR smaller than
	// their replica set. Offline partitions are not counted here.
	UnderReplicated int
	// Offline counts partitions without a leader or with an empty ISR.
	Offline int
}

// Health counts under-replicated and offline partitions from a fresh Metadata
// response. It does not read min.insync.replicas.
func (c *Client) Health(ctx context.Context) (Health, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	meta, err := c.metadata(ctx, true)
	if err != nil {
		return Health{}, fmt.Errorf("checking Kafka health: %w", err)
	}
	parts, err := partitionsOf(meta)
	if err != nil {
		return Health{}, fmt.Errorf("checking Kafka health: %w", err)
	}
	h := Health{Brokers: brokersOf(meta), Partitions: len(parts)}
	for _, p := range parts {
		switch {
		case p.Leader < 0 || len(p.ISR) == 0:
			h.Offline++
		case len(p.ISR) < len(p.Replicas):
			h.UnderReplicated++
		}
	}
	return h, nil
}

// Partitions returns every partition of every topic, in topic/partition order,
// with its leader, replicas and ISR from a fresh Metadata request (all topics),
// and its topic's effective min.insync.replicas from one DescribeConfigs request
// covering all topics plus one broker (the lowest registered node id).
//
// min.insync.replicas is the value the topic reports, which real Kafka resolves
// to the topic override, else the broker setting, else the default (the source is
// kept in Partition.MinISRSource). Should a topic answer without the key, the
// broker's value is used, then Kafka's default, 1. A topic whose configuration
// cannot be read is an error, not a guess: guessing low could let a broker leave
// unsafely. A topic deleted between the two requests is left out.
func (c *Client) Partitions(ctx context.Context) ([]Partition, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	meta, err := c.metadata(ctx, true)
	if err != nil {
		return nil, err
	}
	parts, err := partitionsOf(meta)
	if err != nil || len(parts) == 0 {
		return parts, err
	}

	req := kmsg.NewPtrDescribeConfigsRequest()
	var topics []string
	for _, p := range parts {
		if len(topics) == 0 || topics[len(topics)-1] != p.Topic { // parts are sorted by topic
			topics = append(topics, p.Topic)
			req.Resources = append(req.Resources, configResource(kmsg.ConfigResourceTypeTopic, p.Topic))
		}
	}
	brokerName := ""
	if brokers := brokersOf(meta); len(brokers) > 0 {
		brokerName = strconv.Itoa(int(brokers[0]))
		// kgo sends a broker resource to that broker, the topics to any broker.
		req.Resources = append(req.Resources, configResource(kmsg.ConfigResourceTypeBroker, brokerName))
	}
	// kgo splits the request in two; with one half failed it returns the other
	// half's answer and the error, so a broken broker half only matters if a topic
	// needs the broker fallback.
	resp, reqErr := req.RequestWith(ctx, c.cl)
	if resp == nil {
		return nil, fmt.Errorf("describing %s of %d topics: %w", minISRKey, len(topics), reqErr)
	}
	byTopic := map[string]*kmsg.DescribeConfigsResponseResource{}
	var broker *kmsg.DescribeConfigsResponseResource
	for i := range resp.Resources {
		r := &resp.Resources[i]
		switch {
		case r.ResourceType == kmsg.ConfigResourceTypeTopic:
			byTopic[r.ResourceName] = r
		case r.ResourceType == kmsg.ConfigResourceTypeBroker && r.ResourceName == brokerName:
			broker = r
		}
	}

	minISR := map[string]int{}
	source := map[string]string{}
	for _, t := range topics {
		tr := byTopic[t]
		if tr != nil && tr.ErrorCode == kerr.UnknownTopicOrPartition.Code {
			continue // deleted since the Metadata request: nothing left to protect
		}
		n, src, err := resolveMinISR(t, tr, broker)
		if err != nil {
			if reqErr != nil {
				err = fmt.Errorf("%w (DescribeConfigs: %w)", err, reqErr)
			}
			return nil, err
		}
		minISR[t], source[t] = n, src
	}
	out := parts[:0]
	for _, p := range parts {
		if n, ok := minISR[p.Topic]; ok {
			p.MinISR, p.MinISRSource = n, source[p.Topic]
			out = append(out, p)
		}
	}
	return out, nil
}

// metadata sends a fresh Metadata request, for all topics or for none (brokers
// only). kgo's Request always goes to a broker; only kadm and RequestCachedMetadata
// serve cached metadata.
func (c *Client) metadata(ctx context.Context, allTopics bool) (*kmsg.MetadataResponse, error) {
	req := kmsg.NewPtrMetadataRequest()
	if !allTopics {
		req.Topics = []kmsg.MetadataRequestTopic{} // empty, not nil: no topics
	}
	resp, err := req.RequestWith(ctx, c.cl)
	if err != nil {
		return nil, fmt.Errorf("requesting Kafka metadata: %w", err)
	}
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return nil, fmt.Errorf("requesting Kafka metadata: %w", err)
	}
	return resp, nil
}

// brokersOf returns the node ids in a Metadata response, ascending.
func brokersOf(meta *kmsg.MetadataResponse) []int32 {
	ids := make([]int32, 0, len(meta.Brokers))
	for _, b := range meta.Brokers {
		ids = append(ids, b.NodeID)
	}
	slices.Sort(ids)
	return ids
}

// partitionsOf lists a Metadata response's partitions in topic/partition order,
// without MinISR. A topic-level error fails the listing (the topic's partitions
// would be unknown), except UNKNOWN_TOPIC_OR_PARTITION: the topic was just deleted.
// Partition-level errors do not: Kafka still reports the replicas and ISR of,
// say, a leaderless partition, and those are what the rule needs.
func partitionsOf(meta *kmsg.MetadataResponse) ([]Partition, error) {
	var parts []Partition
	for _, t := range meta.Topics {
		name := ""
		if t.Topic != nil {
			name = *t.Topic
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			if errors.Is(err, kerr.UnknownTopicOrPartition) {
				continue
			}
			return nil, fmt.Errorf("metadata of topic %q: %w", name, err)
		}
		for _, p := range t.Partitions {
			parts = append(parts, Partition{
				Topic: name, Partition: p.Partition, Leader: p.Leader,
				Replicas: slices.Clone(p.Replicas), ISR: slices.Clone(p.ISR),
			})
		}
	}
	slices.SortFunc(parts, func(a, b Partition) int {
		if c := strings.Compare(a.Topic, b.Topic); c != 0 {
			return c
		}
		return cmp.Compare(a.Partition, b.Partition)
	})
	return parts, nil
}

// configResource is a DescribeConfigs resource asking for min.insync.replicas only.
func configResource(typ kmsg.ConfigResourceType, name string) kmsg.DescribeConfigsRequestResource {
	r := kmsg.NewDescribeConfigsRequestResource()
	r.ResourceType = typ
	r.ResourceName = name
	r.ConfigNames = []string{minISRKey}
	return r
}

// resolveMinISR picks topic's min.insync.replicas from its DescribeConfigs answer
// (nil if absent) and a broker's (nil if absent or not asked for):
//   - the topic answered with the key: that value; the source is MinISRTopic for a
//     topic override, MinISRDefault for Kafka's default, MinISRBroker otherwise;
//   - else the broker answered with the key: that value, MinISRBroker (or
//     MinISRDefault when the broker reports the built-in default);
//   - else the broker answered without it: 1, MinISRDefault;
//   - else an error: the value is unknown.
//
// A topic that did not answer, or answered with an error, is an error.
func resolveMinISR(topic string, tr, br *kmsg.DescribeConfigsResponseResource) (int, string, error) {
	if tr == nil {
		return 0, "", fmt.Errorf("reading %s of topic %s: no answer for the topic", minISRKey, topic)
	}
	if err := kerr.ErrorForCode(tr.ErrorCode); err != nil {
		return 0, "", fmt.Errorf("reading %s of topic %s: %w", minISRKey, topic, err)
	}
	if n, src, ok, err := configValue(tr); ok || err != nil {
		if err != nil {
			return 0, "", fmt.Errorf("topic %s: %w", topic, err)
		}
		return n, src, nil
	}
	if br == nil {
		return 0, "", fmt.Errorf("topic %s reports no %s and no broker default was read", topic, minISRKey)
	}
	if err := kerr.ErrorForCode(br.ErrorCode); err != nil {
		return 0, "", fmt.Errorf("topic %s reports no %s; reading broker %s's: %w", topic, minISRKey, br.ResourceName, err)
	}
	n, src, ok, err := configValue(br)
	switch {
	case err != nil:
		return 0, "", fmt.Errorf("broker %s: %w", br.ResourceName, err)
	case !ok:
		return 1, MinISRDefault, nil
	case src == MinISRTopic: // a broker resource has no topic-level source
		src = MinISRBroker
	}
	return n, src, nil
}

// configValue finds min.insync.replicas in a DescribeConfigs answer.
func configValue(r *kmsg.DescribeConfigsResponseResource) (n int, source string, ok bool, err error) {
	for _, c := range r.Configs {
		if c.Name != minISRKey || c.Value == nil {
			continue
		}
		n, err := strconv.Atoi(*c.Value)
		if err != nil || n < 1 {
			return 0, "", false, fmt.Errorf("%s is %q, not a positive integer", minISRKey, *c.Value)
		}
		switch c.Source {
		case kmsg.ConfigSourceDynamicTopicConfig:
			return n, MinISRTopic, true, nil
		case kmsg.ConfigSourceDefaultConfig:
			return n, MinISRDefault, true, nil
		default:
			return n, MinISRBroker, true, nil
		}
	}
	return 0, "", false, nil
}
