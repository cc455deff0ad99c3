// Package kafka answers the Kafka questions slotkeeper asks before and after it
// touches a broker: may this broker leave without taking a partition below
// min.insync.replicas (removal safety), is a broker registered, and how healthy
// are the partitions.
//
// Every answer comes from a fresh Metadata request. kadm's helpers serve metadata
// cached for seconds, which is fine for tooling but not for a decision to stop a
// broker, so this package talks kmsg through a kgo client directly.
//
// The removal-safety rule itself (RemovalSafe) is pure and works on Partition
// values, so it is tested without a cluster; Client gathers those values.
package kafka

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Partition is what the removal-safety rule needs to know about one partition.
type Partition struct {
	Topic     string
	Partition int32
	// Leader is the leader's node id; -1 when the partition has no leader (offline).
	Leader   int32
	Replicas []int32
	ISR      []int32
	// MinISR is the topic's effective min.insync.replicas.
	MinISR int
	// MinISRSource says where MinISR came from: MinISRTopic, MinISRCluster,
	// MinISRBroker or MinISRDefault. Empty for partitions built by hand.
	MinISRSource string
	// Silent are ISR members Kafka lists that did not answer a reachability check
	// (a removal verdict's snapshot); they are not counted in ISR.
	Silent []int32
}

// Where a partition's MinISR came from.
const (
	MinISRTopic   = "topic"   // a topic-level override
	MinISRCluster = "cluster" // the cluster-wide dynamic default (Kafka 4.x stores one at first start)
	MinISRBroker  = "broker"  // a broker's own setting (static server.properties, or dynamic per broker)
	MinISRDefault = "default" // nothing set anywhere: Kafka's built-in default, 1
)

// Reasons a partition blocks a broker's removal (Blocker.Reason).
const (
	// ReasonUnderMinISR: the partition is already below min.insync.replicas and the
	// broker is one of its replicas; losing it can only delay recovery further.
	ReasonUnderMinISR = "already under min.insync.replicas"
	// ReasonAtMinISR: the partition is exactly at min.insync.replicas and the broker
	// is in the ISR; removing it takes the partition below, and acks=all producers fail.
	ReasonAtMinISR = "at min.insync.replicas with this broker in the ISR"
)

// Blocker is a partition that makes a broker's removal unsafe.
type Blocker struct {
	Topic     string
	Partition int32
	Replicas  []int32
	ISR       []int32
	// Silent are ISR members Kafka lists that did not answer; ISR leaves them out.
	Silent []int32
	MinISR int
	Reason string
}

// String renders the blocker for logs, e.g.
// "orders/3: isr [1 2] of replicas [0 1 2], min.insync.replicas 2: at min.insync.replicas with this broker in the ISR".
func (b Blocker) String() string {
	silent := ""
	if len(b.Silent) > 0 {
		silent = fmt.Sprintf(" (listed but not answering: %v)", b.Silent)
	}
	return fmt.Sprintf("%s/%d: isr %v%s of replicas %v, min.insync.replicas %d: %s",
		b.Topic, b.Partition, b.ISR, silent, b.Replicas, b.MinISR, b.Reason)
}

// Verdict is the outcome of the removal-safety rule for one broker.
type Verdict struct {
	Broker int32
	// Safe is true when no partition blocks the broker's removal.
	Safe bool
	// Blocking lists the partitions that block it, in topic/partition order.
	Blocking []Blocker
	// Checked counts the partitions the broker replicates that the rule evaluated.
	Checked int
	// Ignored counts the partitions the broker replicates whose replication factor
	// is at or below their min.insync.replicas: they can never be safe, so they
	// never block (otherwise such a topic would pin the broker forever).
	Ignored int
	// Unreachable are the brokers asked before the verdict (the ISR members of the
	// broker's partitions) that did not answer; they were counted out of every ISR.
	Unreachable []int32
	// Unknown names the topics the Metadata lists whose min.insync.replicas could
	// not be read; any makes the verdict not safe.
	Unknown []string
}

// String summarises the verdict for logs, naming at most three blockers.
func (v Verdict) String() string {
	unreachable := ""
	if len(v.Unreachable) > 0 {
		unreachable = fmt.Sprintf("; brokers %v did not answer (counted out of the ISRs)", v.Unreachable)
	}
	if v.Safe {
		return fmt.Sprintf("broker %d may leave: %d partitions checked, %d ignored (replication factor <= min.insync.replicas)%s",
			v.Broker, v.Checked, v.Ignored, unreachable)
	}
	if len(v.Blocking) == 0 && len(v.Unknown) > 0 {
		return fmt.Sprintf("broker %d may not leave: %d topic(s) without a known %s: %s%s",
			v.Broker, len(v.Unknown), "min.insync.replicas", strings.Join(v.Unknown, "; "), unreachable)
	}
	names := make([]string, 0, 3)
	for _, b := range v.Blocking[:min(3, len(v.Blocking))] {
		names = append(names, b.String())
	}
	more := ""
	if n := len(v.Blocking) - len(names); n > 0 {
		more = fmt.Sprintf("; and %d more", n)
	}
	if len(v.Unknown) > 0 {
		more += fmt.Sprintf("; and %d topic(s) without a known min.insync.replicas: %s", len(v.Unknown), strings.Join(v.Unknown, "; "))
	}
	return fmt.Sprintf("broker %d may not leave: %d of %d partitions block: %s%s%s",
		v.Broker, len(v.Blocking), v.Checked, strings.Join(names, "; "), more, unreachable)
}

// RemovalSafe applies the removal-safety rule (DESIGN.md "Removal safety", after
// Strimzi's KafkaAvailability): broker may leave if and only if, for every
// partition it replicates, it is not the case that ISR < minISR, nor that
// ISR == minISR with the broker in the ISR. Partitions whose replication factor
// is at or below minISR are ignored (counted in Verdict.Ignored). Partitions the
// broker does not replicate are not looked at. A MinISR below 1 is taken as 1,
// Kafka's lowest value.
func RemovalSafe(broker int32, parts []Partition) Verdict {
	v := Verdict{Broker: broker}
	for _, p := range parts {
		if !slices.Contains(p.Replicas, broker) {
			continue
		}
		minISR := max(p.MinISR, 1)
		if len(p.Replicas) <= minISR {
			v.Ignored++
			continue
		}
		v.Checked++
		reason := ""
		switch isr := len(p.ISR); {
		case isr < minISR:
			reason = ReasonUnderMinISR
		case isr == minISR && slices.Contains(p.ISR, broker):
			reason = ReasonAtMinISR
		}
		if reason != "" {
			v.Blocking = append(v.Blocking, Blocker{
				Topic: p.Topic, Partition: p.Partition, MinISR: minISR, Reason: reason,
				Replicas: slices.Clone(p.Replicas), ISR: slices.Clone(p.ISR), Silent: slices.Clone(p.Silent),
			})
		}
	}
	slices.SortFunc(v.Blocking, func(a, b Blocker) int {
		if c := strings.Compare(a.Topic, b.Topic); c != 0 {
			return c
		}
		return cmp.Compare(a.Partition, b.Partition)
	})
	v.Safe = len(v.Blocking) == 0
	return v
}
