// Package kafkatest runs an in-process Kafka cluster (franz-go's kfake) with
// scriptable Metadata and DescribeQuorum answers for tests: it wraps package
// test/fakekafka, stopping the cluster when the test ends and failing the test where
// fakekafka returns an error.
//
//	c := kafkatest.Start(t)                  // 3 brokers, min.insync.replicas=2
//	c.CreateTopic(t, "orders", 3, 3, nil)    // 3 partitions, replication factor 3
//	c.SetISR("orders", 0, 0, 1)              // broker 2 fell out of orders/0's ISR
//	c.Restore("orders", 0)                   // and caught up again
//
// Everything but Start, CreateTopic and Refresh is fakekafka's API, promoted through
// the embedded *fakekafka.Cluster.
package kafkatest

import (
	"context"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/slotkeeper/slotkeeper/test/fakekafka"
)

// Brokers and MinISR are the defaults of Start: node ids 0..Brokers-1, and the
// brokers' min.insync.replicas.
const (
	Brokers = fakekafka.Brokers
	MinISR  = fakekafka.MinISR
)

// Quorum scripts the answer to DescribeQuorum (fakekafka.Quorum).
type Quorum = fakekafka.Quorum

// Unknown is a Quorum.Behind value: the leader knows nothing of the voter.
const Unknown = fakekafka.Unknown

// Cluster is a kfake cluster with scriptable answers, for one test.
type Cluster struct {
	*fakekafka.Cluster
}

// Start starts a cluster (fakekafka.Start) and registers its shutdown with
// t.Cleanup.
func Start(t testing.TB, opts ...kfake.Opt) *Cluster {
	t.Helper()
	c, err := fakekafka.Start(opts...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(c.Close)
	return &Cluster{Cluster: c}
}

// CreateTopic creates a topic with the given partition count, replication factor
// and topic configs (nil for none), then refreshes the real Metadata answer.
func (c *Cluster) CreateTopic(t testing.TB, topic string, partitions int32, rf int16, configs map[string]*string) {
	t.Helper()
	if err := c.Cluster.CreateTopic(context.Background(), topic, partitions, rf, configs); err != nil {
		t.Fatalf("%v", err)
	}
}

// Refresh re-reads kfake's real Metadata answer, on which scripted answers are based.
func (c *Cluster) Refresh(t testing.TB) {
	t.Helper()
	if err := c.Cluster.Refresh(context.Background()); err != nil {
		t.Fatalf("%v", err)
	}
}
