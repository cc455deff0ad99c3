package test

import (
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest"
)

// kafkaCluster is an in-process Kafka (kfake) whose brokers 0..n-1 are the slots'
// node ids, with scriptable ISR, and a topic "orders" (3 partitions, RF 3) plus a topic
// "scratch" with RF 2, which is at or below min ISR 2 and must never block.
type kafkaCluster struct {
	*kafkatest.Cluster
}

func newKafka(t testing.TB, _ int) *kafkaCluster {
	t.Helper()
	k := kafkatest.Start(t)
	k.CreateTopic(t, "orders", 3, 3, nil)
	k.CreateTopic(t, "scratch", 1, 2, nil)
	return &kafkaCluster{k}
}

// client returns a slotkeeper Kafka client of this cluster, closed with the test.
func (k *kafkaCluster) client(t testing.TB) *kafka.Client {
	t.Helper()
	c, err := kafka.NewClient(k.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}
