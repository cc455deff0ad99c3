package realkafka_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/test/realkafka"
	"github.com/slotkeeper/slotkeeper/test/realkafka/realkafkatest"
)

// The package's tests share one cluster of three combined broker+controller nodes
// (Kafka's defaults for a new 4.x cluster: ELR on), started by the first test that
// needs it. Each test leaves every node running and every ISR full.
var shared = &realkafkatest.Shared{}

func TestMain(m *testing.M) {
	began := time.Now()
	code := m.Run()
	if c := sharedCluster(); c != nil {
		var rss []string
		for i, b := range c.RSS() {
			rss = append(rss, fmt.Sprintf("node %d %d MiB", i, b>>20))
		}
		fmt.Printf("real Kafka %s: cluster of %d started in %s; RSS at the end: %s; package wall time %s\n",
			realkafka.Version, len(c.Nodes), c.Started.Round(time.Millisecond), strings.Join(rss, ", "), time.Since(began).Round(time.Second))
	}
	shared.Close()
	os.Exit(code)
}

var sharedRef *realkafka.Cluster

func sharedCluster() *realkafka.Cluster { return sharedRef }

// cluster returns the shared cluster with the package's topics, every node running
// and every ISR full.
func cluster(t *testing.T) *realkafka.Cluster {
	t.Helper()
	c := shared.Get(t)
	if sharedRef == nil {
		sharedRef = c
		rss := c.RSS()
		t.Logf("RSS after start: %v MiB", []int64{rss[0] >> 20, rss[1] >> 20, rss[2] >> 20})
		adm := admin(t, c)
		// orders: RF 3 > min ISR 2, checked; pairs: RF 2 <= min ISR 2, never blocks.
		createTopic(t, adm, "orders", 3, 3, nil)
		createTopic(t, adm, "pairs", 3, 2, nil)
	}
	for i, s := range c.Nodes {
		if !s.Running() {
			t.Fatalf("node %d is not running at the start of %s", i, t.Name())
		}
	}
	waitISRFull(t, c, time.Minute)
	return c
}

// admin is a franz-go client for test setup, closed with the test.
func admin(t testing.TB, c *realkafka.Cluster) *kadm.Client {
	t.Helper()
	cl, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// client is slotkeeper's Kafka client of the cluster (bootstrap: addrs, else all).
func client(t testing.TB, c *realkafka.Cluster, addrs ...string) *kafka.Client {
	t.Helper()
	if len(addrs) == 0 {
		addrs = c.Addrs
	}
	k, err := kafka.NewClient(config.KafkaConfig{Bootstrap: addrs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k
}

func createTopic(t testing.TB, adm *kadm.Client, name string, partitions int32, rf int16, configs map[string]*string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := adm.CreateTopic(ctx, partitions, rf, configs, name)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("creating topic %s: %v", name, err)
	}
}

// metadataOf asks the broker at addr alone for its Metadata (all topics).
func metadataOf(ctx context.Context, addr string) (*kmsg.MetadataResponse, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.RequestRetries(0), kgo.DialTimeout(time.Second))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := cl.SeedBrokers()[0].Request(ctx, kmsg.NewPtrMetadataRequest())
	if err != nil {
		return nil, err
	}
	return resp.(*kmsg.MetadataResponse), nil
}

// isrFull reports whether, in meta, every partition's ISR is its replica set.
func isrFull(meta *kmsg.MetadataResponse) bool {
	for _, tp := range meta.Topics {
		for _, p := range tp.Partitions {
			if len(p.ISR) != len(p.Replicas) {
				return false
			}
		}
	}
	return true
}

// isrHolds reports whether node is in the ISR of any partition in meta.
func isrHolds(meta *kmsg.MetadataResponse, node int32) bool {
	for _, tp := range meta.Topics {
		for _, p := range tp.Partitions {
			if slices.Contains(p.ISR, node) {
				return true
			}
		}
	}
	return false
}

// waitISRFull waits until every running broker reports every ISR full.
func waitISRFull(t testing.TB, c *realkafka.Cluster, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		all := true
		for i, s := range c.Nodes {
			if !s.Running() {
				continue
			}
			meta, err := metadataOf(context.Background(), c.Addrs[i])
			if err != nil || !isrFull(meta) || len(meta.Brokers) != len(c.Nodes) {
				all = false
				break
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ISRs not full within %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kafkaList lists the partitions ("topic/partition") that Kafka's own kafka-topics
// tool reports with flag (--under-replicated-partitions, --unavailable-partitions).
func kafkaList(t testing.TB, c *realkafka.Cluster, flag string) []string {
	t.Helper()
	rt := realkafkatest.Need(t)
	var running []string
	for i, s := range c.Nodes {
		if s.Running() {
			running = append(running, c.Addrs[i])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := realkafka.RunTool(ctx, rt, "org.apache.kafka.tools.TopicCommand",
		"--bootstrap-server", strings.Join(running, ","), "--describe", flag)
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == "Topic:" && f[2] == "Partition:" {
			parts = append(parts, f[1]+"/"+f[3])
		}
	}
	slices.Sort(parts)
	return parts
}

// kafkaCounts are kafka-topics' counts in Health's terms: Kafka lists a partition
// without a leader (and an ISR smaller than its replicas) as both under-replicated
// and unavailable; Health counts it as offline only.
func kafkaCounts(t testing.TB, c *realkafka.Cluster) (underReplicated, offline int) {
	t.Helper()
	urp, unavailable := kafkaList(t, c, "--under-replicated-partitions"), kafkaList(t, c, "--unavailable-partitions")
	for _, p := range urp {
		if !slices.Contains(unavailable, p) {
			underReplicated++
		}
	}
	t.Logf("kafka-topics: under-replicated %v, unavailable %v", urp, unavailable)
	return underReplicated, len(unavailable)
}

// restart starts a stopped or killed node again and waits until it is registered
// and every ISR is full.
func restart(t testing.TB, c *realkafka.Cluster, id int32) time.Duration {
	t.Helper()
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.Restart(ctx, id); err != nil {
		t.Fatalf("restarting node %d: %v", id, err)
	}
	waitISRFull(t, c, time.Minute)
	return time.Since(began)
}
