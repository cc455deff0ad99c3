package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest"
)

func newTestClient(t *testing.T, cfg config.KafkaConfig) *Client {
	t.Helper()
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func str(s string) *string { return &s }

// others returns a partition's replicas other than node.
func others(c *kafkatest.Cluster, topic string, p, node int32) []int32 {
	return slices.DeleteFunc(c.Replicas(topic, p), func(r int32) bool { return r == node })
}

func TestPartitionsMinISRSource(t *testing.T) {
	tests := []struct {
		name       string
		brokerMin  string // the brokers' min.insync.replicas; "" = not set (Kafka's default)
		topicMin   string // set on the topic at creation; "" = none
		wantMinISR int
		wantSource string
	}{
		{"broker default, no topic override", "2", "", 2, MinISRBroker},
		{"topic override above the broker default", "2", "3", 3, MinISRTopic},
		{"topic override below the broker default", "2", "1", 1, MinISRTopic},
		{"nothing set anywhere: Kafka's default", "", "", 1, MinISRDefault},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := kafkatest.Start(t, kfake.BrokerConfigs(map[string]string{"min.insync.replicas": tc.brokerMin}))
			var configs map[string]*string
			if tc.topicMin != "" {
				configs = map[string]*string{"min.insync.replicas": str(tc.topicMin)}
			}
			c.CreateTopic(t, "t", 2, 3, configs)
			parts, err := newTestClient(t, c.Config()).Partitions(context.Background())
			if err != nil {
				t.Fatalf("Partitions: %v", err)
			}
			if len(parts) != 2 {
				t.Fatalf("got %d partitions, want 2: %+v", len(parts), parts)
			}
			for _, p := range parts {
				t.Logf("%s/%d leader %d replicas %v isr %v min.insync.replicas %d (%s)", p.Topic, p.Partition, p.Leader, p.Replicas, p.ISR, p.MinISR, p.MinISRSource)
				if p.MinISR != tc.wantMinISR || p.MinISRSource != tc.wantSource {
					t.Errorf("%s/%d: min ISR %d from %q, want %d from %q", p.Topic, p.Partition, p.MinISR, p.MinISRSource, tc.wantMinISR, tc.wantSource)
				}
				if len(p.Replicas) != 3 || !slices.Equal(p.ISR, p.Replicas) {
					t.Errorf("%s/%d: replicas %v isr %v, want 3 replicas all in sync", p.Topic, p.Partition, p.Replicas, p.ISR)
				}
			}
		})
	}
}

// TestTopicLevelMinISRDecides gives three topics the same ISR (broker 0 and one
// other replica): only their min.insync.replicas tells them apart.
func TestTopicLevelMinISRDecides(t *testing.T) {
	c := kafkatest.Start(t) // brokers: min.insync.replicas=2
	c.CreateTopic(t, "plain", 1, 3, nil)
	c.CreateTopic(t, "relaxed", 1, 3, map[string]*string{"min.insync.replicas": str("1")})
	c.CreateTopic(t, "strict", 1, 3, map[string]*string{"min.insync.replicas": str("3")})
	for _, topic := range []string{"plain", "relaxed", "strict"} {
		c.SetISR(topic, 0, 0, others(c, topic, 0, 0)[0])
	}
	v, err := newTestClient(t, c.Config()).RemovalSafe(context.Background(), 0)
	if err != nil {
		t.Fatalf("RemovalSafe: %v", err)
	}
	t.Logf("%s", v)
	// plain: 2 in sync == broker default 2, broker 0 among them: blocks.
	// relaxed: 2 in sync > topic-level 1: fine. strict: RF 3 <= topic-level 3: ignored.
	if v.Safe || len(v.Blocking) != 1 || v.Blocking[0].Topic != "plain" || v.Blocking[0].Reason != ReasonAtMinISR ||
		v.Checked != 2 || v.Ignored != 1 {
		t.Fatalf("verdict %s (checked %d, ignored %d): want only plain/0 blocking, 2 checked, 1 ignored", v, v.Checked, v.Ignored)
	}
}

// TestRemovalSafetyScripted walks broker 0 through the states a planned
// termination meets, with ISRs scripted through kfake's Metadata ControlKey.
func TestRemovalSafetyScripted(t *testing.T) {
	const leaving = 0
	c := kafkatest.Start(t)
	c.CreateTopic(t, "orders", 3, 3, nil) // RF 3 > min ISR 2: checked
	c.CreateTopic(t, "pairs", 3, 2, nil)  // RF 2 <= min ISR 2: never blocks
	cl := newTestClient(t, c.Config())

	steps := []struct {
		name    string
		script  func()
		blocked []string // topic/partition of the blockers
	}{
		{"healthy", func() {}, nil},
		{"another replica of orders/1 out of the ISR", func() {
			c.SetISR("orders", 1, leaving, others(c, "orders", 1, leaving)[0])
		}, []string{"orders/1"}},
		{"orders/1 ISR recovers", func() { c.Restore("orders", 1) }, nil},
		{"pairs partitions down to one in-sync replica do not block", func() {
			for p := range int32(3) {
				c.SetISR("pairs", p, c.Replicas("pairs", p)[0])
			}
		}, nil},
		{"orders/2 under min ISR with broker 0 a lagging replica", func() {
			c.SetISR("orders", 2, others(c, "orders", 2, leaving)[0])
		}, []string{"orders/2"}},
		{"all recovered", c.Reset, nil},
	}
	for _, s := range steps {
		s.script()
		before := c.Answered()
		v, err := cl.RemovalSafe(context.Background(), leaving)
		if err != nil {
			t.Fatalf("%s: RemovalSafe: %v", s.name, err)
		}
		var got []string
		for _, b := range v.Blocking {
			got = append(got, fmt.Sprintf("%s/%d", b.Topic, b.Partition))
		}
		t.Logf("%s: %s", s.name, v)
		if v.Safe != (len(s.blocked) == 0) || !slices.Equal(got, s.blocked) {
			t.Fatalf("%s: blocked by %v, want %v", s.name, got, s.blocked)
		}
		if v.Checked != 3 {
			t.Fatalf("%s: checked %d partitions, want orders' 3", s.name, v.Checked)
		}
		if want := pairsWith(c, leaving); v.Ignored != want {
			t.Fatalf("%s: ignored %d, want %d (pairs partitions broker %d replicates)", s.name, v.Ignored, want, leaving)
		}
		// Each decision rests on a Metadata request of its own, not on a cache.
		if c.Answered() == before {
			t.Fatalf("%s: no fresh Metadata request reached the cluster", s.name)
		}
	}
}

// pairsWith counts the partitions of topic "pairs" that node replicates.
func pairsWith(c *kafkatest.Cluster, node int32) int {
	n := 0
	for p := range int32(3) {
		if slices.Contains(c.Replicas("pairs", p), node) {
			n++
		}
	}
	return n
}

func TestRegistered(t *testing.T) {
	tests := []struct {
		name string
		gone []int32
		ask  int32
		want bool
	}{
		{"registered broker", nil, 1, true},
		{"broker left the metadata", []int32{1}, 1, false},
		{"another broker left", []int32{2}, 1, true},
		{"never existed", nil, 7, false},
	}
	c := kafkatest.Start(t)
	cl := newTestClient(t, c.Config())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.Reset()
			for _, n := range tc.gone {
				c.Unregister(n)
			}
			got, err := cl.Registered(context.Background(), tc.ask)
			if err != nil {
				t.Fatalf("Registered(%d): %v", tc.ask, err)
			}
			if got != tc.want {
				t.Fatalf("Registered(%d) with %v gone = %v, want %v", tc.ask, tc.gone, got, tc.want)
			}
		})
	}
}

func TestHealth(t *testing.T) {
	c := kafkatest.Start(t)
	c.CreateTopic(t, "orders", 3, 3, nil)
	c.CreateTopic(t, "pairs", 2, 2, nil)
	cl := newTestClient(t, c.Config())
	tests := []struct {
		name   string
		script func()
		want   Health
	}{
		{"healthy", func() {}, Health{Brokers: []int32{0, 1, 2}, Partitions: 5}},
		{"one partition behind, one offline, one broker gone", func() {
			c.SetISR("orders", 0, c.Replicas("orders", 0)[:2]...)
			c.SetOffline("pairs", 1)
			c.Unregister(2)
		}, Health{Brokers: []int32{0, 1}, Partitions: 5, UnderReplicated: 1, Offline: 1}},
		{"an offline partition counts as offline only", func() {
			c.SetOffline("orders", 0)
			c.SetISR("orders", 1, c.Replicas("orders", 1)[0])
			c.SetISR("orders", 2, c.Replicas("orders", 2)[1:]...)
		}, Health{Brokers: []int32{0, 1, 2}, Partitions: 5, UnderReplicated: 2, Offline: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.Reset()
			tc.script()
			h, err := cl.Health(context.Background())
			if err != nil {
				t.Fatalf("Health: %v", err)
			}
			t.Logf("%+v", h)
			if !slices.Equal(h.Brokers, tc.want.Brokers) || h.Partitions != tc.want.Partitions ||
				h.UnderReplicated != tc.want.UnderReplicated || h.Offline != tc.want.Offline {
				t.Fatalf("health %+v, want %+v", h, tc.want)
			}
		})
	}
}

// TestKafkaDown: with nothing answering, every call fails within the client's
// bounds (dial 5 s, 3 tries, 10 s of retries, 20 s per call) instead of hanging.
func TestKafkaDown(t *testing.T) {
	tests := []struct {
		name string
		addr func(t *testing.T) []string
	}{
		{"cluster closed", func(t *testing.T) []string {
			c := kafkatest.Start(t)
			c.CreateTopic(t, "orders", 1, 3, nil)
			c.Close()
			return c.Addrs
		}},
		{"nothing listening", func(t *testing.T) []string {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			return []string{addr}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cl := newTestClient(t, config.KafkaConfig{Bootstrap: tc.addr(t)})
			ctx := context.Background()
			calls := map[string]func() error{
				"Partitions":  func() error { _, err := cl.Partitions(ctx); return err },
				"RemovalSafe": func() error { _, err := cl.RemovalSafe(ctx, 0); return err },
				"Registered":  func() error { _, err := cl.Registered(ctx, 0); return err },
				"Health":      func() error { _, err := cl.Health(ctx); return err },
			}
			for name, call := range calls {
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					start := time.Now()
					err := call()
					t.Logf("failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
					if err == nil {
						t.Fatalf("%s succeeded against a dead cluster", name)
					}
				})
			}
		})
	}
}

// TestPartitionsConfigErrors uses kfake faults on DescribeConfigs.
func TestPartitionsConfigErrors(t *testing.T) {
	describe := []kmsg.Key{kmsg.DescribeConfigs}
	tests := []struct {
		name       string
		fault      kfake.Fault
		wantErr    string   // "" = no error
		wantTopics []string // topics in the answer
	}{
		{"topic config unreadable: an error, not a guess",
			kfake.Fault{Keys: describe, Resource: "orders", Err: kerr.TopicAuthorizationFailed, Count: -1},
			"TOPIC_AUTHORIZATION_FAILED", nil},
		{"a config answer that does not know a listed topic once: asked again",
			kfake.Fault{Keys: describe, Resource: "orders", Err: kerr.UnknownTopicOrPartition, Count: 1},
			"", []string{"orders", "pairs"}},
		{"a config answer that never knows a listed topic: an error naming it, never 'deleted'",
			kfake.Fault{Keys: describe, Resource: "orders", Err: kerr.UnknownTopicOrPartition, Count: -1},
			"UNKNOWN_TOPIC_OR_PARTITION", nil},
		{"broker default unreadable but not needed",
			kfake.Fault{Keys: describe, Resource: "0", Err: kerr.ClusterAuthorizationFailed, Count: -1},
			"", []string{"orders", "pairs"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := kafkatest.Start(t)
			c.CreateTopic(t, "orders", 1, 3, nil)
			c.CreateTopic(t, "pairs", 1, 2, nil)
			c.Fake.Fault(tc.fault)
			parts, err := newTestClient(t, c.Config()).Partitions(context.Background())
			t.Logf("err: %v", err)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "orders") {
					t.Fatalf("err %v, want one naming orders and %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Partitions: %v", err)
			}
			var topics []string
			for _, p := range parts {
				if len(topics) == 0 || topics[len(topics)-1] != p.Topic {
					topics = append(topics, p.Topic)
				}
				if p.MinISR != kafkatest.MinISR {
					t.Errorf("%s/%d: min ISR %d, want %d", p.Topic, p.Partition, p.MinISR, kafkatest.MinISR)
				}
			}
			if !slices.Equal(topics, tc.wantTopics) {
				t.Fatalf("topics %v, want %v", topics, tc.wantTopics)
			}
		})
	}
}

// A removal verdict never leaves out a topic the Metadata lists: when no
// configuration answer knows it, the verdict is "not safe" and says why.
func TestRemovalSafeUnknownTopicIsNotSafe(t *testing.T) {
	c := kafkatest.Start(t)
	c.CreateTopic(t, "orders", 3, 3, nil)
	c.CreateTopic(t, "fresh", 3, 3, nil)
	c.Fake.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.DescribeConfigs}, Resource: "fresh", Err: kerr.UnknownTopicOrPartition, Count: -1})
	v, err := newTestClient(t, c.Config()).RemovalSafe(context.Background(), 0)
	if err != nil {
		t.Fatalf("RemovalSafe: %v", err)
	}
	t.Logf("%s", v)
	if v.Safe || len(v.Unknown) != 1 || !strings.Contains(v.Unknown[0], "fresh") || !strings.Contains(v.String(), "fresh") {
		t.Fatalf("verdict %s (unknown %v): want not safe, naming topic fresh", v, v.Unknown)
	}
}

func TestResolveMinISR(t *testing.T) {
	entry := func(value string, src kmsg.ConfigSource) kmsg.DescribeConfigsResponseResourceConfig {
		c := kmsg.NewDescribeConfigsResponseResourceConfig()
		c.Name, c.Value, c.Source = minISRKey, &value, src
		return c
	}
	res := func(typ kmsg.ConfigResourceType, errCode int16, cs ...kmsg.DescribeConfigsResponseResourceConfig) *kmsg.DescribeConfigsResponseResource {
		r := kmsg.NewDescribeConfigsResponseResource()
		r.ResourceType, r.ResourceName, r.ErrorCode, r.Configs = typ, "0", errCode, cs
		return &r
	}
	topic := func(cs ...kmsg.DescribeConfigsResponseResourceConfig) *kmsg.DescribeConfigsResponseResource {
		return res(kmsg.ConfigResourceTypeTopic, 0, cs...)
	}
	broker := func(cs ...kmsg.DescribeConfigsResponseResourceConfig) *kmsg.DescribeConfigsResponseResource {
		return res(kmsg.ConfigResourceTypeBroker, 0, cs...)
	}
	brokerDown := res(kmsg.ConfigResourceTypeBroker, kerr.ClusterAuthorizationFailed.Code)
	tests := []struct {
		name     string
		tr, br   *kmsg.DescribeConfigsResponseResource
		want     int
		wantFrom string
		wantErr  bool
	}{
		{"topic override", topic(entry("3", kmsg.ConfigSourceDynamicTopicConfig)), broker(entry("2", kmsg.ConfigSourceStaticBrokerConfig)), 3, MinISRTopic, false},
		{"topic reports the static broker setting", topic(entry("2", kmsg.ConfigSourceStaticBrokerConfig)), nil, 2, MinISRBroker, false},
		{"topic reports the cluster-wide dynamic default", topic(entry("2", kmsg.ConfigSourceDynamicDefaultBrokerConfig)), nil, 2, MinISRCluster, false},
		{"topic reports a broker's dynamic setting", topic(entry("2", kmsg.ConfigSourceDynamicBrokerConfig)), nil, 2, MinISRBroker, false},
		{"topic reports Kafka's default", topic(entry("1", kmsg.ConfigSourceDefaultConfig)), nil, 1, MinISRDefault, false},
		{"topic silent: broker value", topic(), broker(entry("2", kmsg.ConfigSourceStaticBrokerConfig)), 2, MinISRBroker, false},
		{"topic silent, broker silent: Kafka's default 1", topic(), broker(), 1, MinISRDefault, false},
		{"topic silent, broker unreadable", topic(), brokerDown, 0, "", true},
		{"topic silent, broker not asked", topic(), nil, 0, "", true},
		{"topic errored", res(kmsg.ConfigResourceTypeTopic, kerr.TopicAuthorizationFailed.Code), broker(entry("2", kmsg.ConfigSourceStaticBrokerConfig)), 0, "", true},
		{"topic missing from the answer", nil, broker(entry("2", kmsg.ConfigSourceStaticBrokerConfig)), 0, "", true},
		{"garbage value", topic(entry("two", kmsg.ConfigSourceDynamicTopicConfig)), nil, 0, "", true},
		{"zero value", topic(entry("0", kmsg.ConfigSourceDynamicTopicConfig)), nil, 0, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, from, err := resolveMinISR("orders", tc.tr, tc.br)
			if (err != nil) != tc.wantErr || n != tc.want || from != tc.wantFrom {
				t.Fatalf("got %d from %q, err %v; want %d from %q, err=%v", n, from, err, tc.want, tc.wantFrom, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "orders") {
				t.Fatalf("error %q does not name the topic", err)
			}
		})
	}
}

func TestNewClientAuth(t *testing.T) {
	tests := []struct {
		mechanism string
		password  string
		wantOK    bool
	}{
		{"PLAIN", "secret", true},
		{"PLAIN", "wrong", false},
		{"SCRAM-SHA-256", "secret", true},
		{"SCRAM-SHA-256", "wrong", false},
		{"SCRAM-SHA-512", "secret", true},
		{"SCRAM-SHA-512", "wrong", false},
	}
	for _, tc := range tests {
		t.Run(tc.mechanism+"/"+tc.password, func(t *testing.T) {
			t.Parallel()
			fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser(tc.mechanism, "slotkeeper", "secret"))
			if err != nil {
				t.Fatal(err)
			}
			defer fake.Close()
			cl := newTestClient(t, config.KafkaConfig{
				Bootstrap: fake.ListenAddrs(), SASLMechanism: tc.mechanism, Username: "slotkeeper", Password: tc.password,
			})
			start := time.Now()
			ok, err := cl.Registered(context.Background(), 0)
			t.Logf("registered=%v after %s, err: %v", ok, time.Since(start).Round(time.Millisecond), err)
			if tc.wantOK && (err != nil || !ok) {
				t.Fatalf("authenticated call failed: %v", err)
			}
			if !tc.wantOK && err == nil {
				t.Fatalf("call with a wrong password succeeded")
			}
		})
	}
}

func TestNewClientRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  config.KafkaConfig
		want error // nil: any error
	}{
		{"no bootstrap", config.KafkaConfig{}, ErrNoBootstrap},
		{"unknown SASL mechanism", config.KafkaConfig{Bootstrap: []string{"127.0.0.1:9092"}, SASLMechanism: "GSSAPI"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(tc.cfg)
			if err == nil {
				c.Close()
				t.Fatalf("NewClient(%+v) succeeded", tc.cfg)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
}
