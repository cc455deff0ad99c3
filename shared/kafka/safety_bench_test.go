package kafka

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Synthetic metadata of a large cluster for the removal-safety benchmarks: 50,000
// partitions in 500 topics of 100 partitions over 30 brokers, replication factor 3
// (one topic in ten has 2, at min.insync.replicas 2: ignored), replicas spread round
// robin, topics listed in a random order and partitions in reverse; one partition in a hundred has lost a replica from its ISR, so the broker
// under test is blocked by some (a verdict with blockers is the costlier one).
const (
	benchTopics     = 500
	benchPartitions = 100
	benchBrokers    = 30
)

func benchMetadata() *kmsg.MetadataResponse {
	meta := kmsg.NewPtrMetadataResponse()
	for b := range int32(benchBrokers) {
		meta.Brokers = append(meta.Brokers, kmsg.MetadataResponseBroker{NodeID: b, Host: fmt.Sprintf("b%d", b), Port: 9092})
	}
	n := 0
	for t := range benchTopics {
		topic := kmsg.NewMetadataResponseTopic()
		name := fmt.Sprintf("topic-%03d", t)
		topic.Topic = &name
		rf := 3
		if t%10 == 9 {
			rf = 2
		}
		for p := range int32(benchPartitions) {
			part := kmsg.NewMetadataResponseTopicPartition()
			part.Partition = p
			for r := range rf {
				part.Replicas = append(part.Replicas, int32((n+r)%benchBrokers))
			}
			part.Leader = part.Replicas[0]
			part.ISR = append([]int32(nil), part.Replicas...)
			if n%100 == 0 {
				part.ISR = part.ISR[:rf-1]
			}
			topic.Partitions = append(topic.Partitions, part)
			n++
		}
		slices.Reverse(topic.Partitions)
		meta.Topics = append(meta.Topics, topic)
	}
	// Brokers list topics in no particular order (a hash map's); so does this.
	rand.New(rand.NewPCG(14, 50000)).Shuffle(len(meta.Topics), func(i, j int) {
		meta.Topics[i], meta.Topics[j] = meta.Topics[j], meta.Topics[i]
	})
	return meta
}

func benchPartitionsOf(b *testing.B, meta *kmsg.MetadataResponse) []Partition {
	b.Helper()
	parts, err := partitionsOf(meta)
	if err != nil {
		b.Fatal(err)
	}
	for i := range parts {
		parts[i].MinISR = 2
	}
	if len(parts) != benchTopics*benchPartitions {
		b.Fatalf("%d partitions, want %d", len(parts), benchTopics*benchPartitions)
	}
	return parts
}

// BenchmarkRemovalSafe50k is the removal-safety rule (RemovalSafe) alone on 50,000
// partitions. Target: at most 50 ms per verdict.
func BenchmarkRemovalSafe50k(b *testing.B) {
	parts := benchPartitionsOf(b, benchMetadata())
	b.ReportAllocs()
	var v Verdict
	for b.Loop() {
		v = RemovalSafe(0, parts)
	}
	if v.Safe || v.Checked == 0 || v.Ignored == 0 {
		b.Fatalf("verdict %v: want checked, ignored and blocking partitions", v)
	}
	b.ReportMetric(float64(len(parts)), "partitions")
	b.ReportMetric(float64(len(v.Blocking)), "blockers")
}

// BenchmarkRemovalVerdict50k is all of a verdict's own computation on 50,000
// partitions, from the two brokers' Metadata answers (decoded) to the verdict:
// listing and sorting each answer's partitions, merging the two views, collecting the
// ISR members to ping, setting the min ISR, and the rule. The Kafka round trips are
// not included.
func BenchmarkRemovalVerdict50k(b *testing.B) {
	metaA, metaB := benchMetadata(), benchMetadata()
	b.ReportAllocs()
	var v Verdict
	for b.Loop() {
		a, err := partitionsOf(metaA)
		if err != nil {
			b.Fatal(err)
		}
		c, err := partitionsOf(metaB)
		if err != nil {
			b.Fatal(err)
		}
		parts := mergeViews(a, c)
		_ = isrMembers(parts, 0)
		for i := range parts {
			parts[i].MinISR, parts[i].MinISRSource = 2, MinISRCluster
		}
		v = RemovalSafe(0, parts)
	}
	if v.Safe || v.Checked == 0 {
		b.Fatalf("verdict %v: want checked and blocking partitions", v)
	}
}

// The benchmarks' machinery on the synthetic metadata, once: the verdict is what the
// rule gives for it (every partition of broker 0 counted, the blockers those whose ISR
// lost a replica while holding broker 0).
func TestRemovalBenchmarkMetadata(t *testing.T) {
	parts, err := partitionsOf(benchMetadata())
	if err != nil {
		t.Fatal(err)
	}
	checked, ignored, blocking := 0, 0, 0
	for i := range parts {
		parts[i].MinISR = 2
		p := parts[i]
		holds := false
		for _, r := range p.Replicas {
			holds = holds || r == 0
		}
		if !holds {
			continue
		}
		if len(p.Replicas) <= 2 {
			ignored++
			continue
		}
		checked++
		inISR := false
		for _, r := range p.ISR {
			inISR = inISR || r == 0
		}
		if len(p.ISR) == 2 && inISR {
			blocking++
		}
	}
	v := RemovalSafe(0, parts)
	if len(parts) != 50000 || v.Checked != checked || v.Ignored != ignored || len(v.Blocking) != blocking || blocking == 0 || v.Safe {
		t.Errorf("%d partitions; verdict checked %d ignored %d blocking %d safe %v; want 50000, %d, %d, %d (> 0), not safe",
			len(parts), v.Checked, v.Ignored, len(v.Blocking), v.Safe, checked, ignored, blocking)
	}
}
