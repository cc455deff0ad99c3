package demo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/slotkeeper/slotkeeper/test/realkafka"
)

// The demo's Kafka (Options.Kafka).
const (
	// KafkaFake is franz-go's in-process kfake, with the ISRs scripted.
	KafkaFake = "kfake"
	// KafkaReal is Apache Kafka itself: three KRaft nodes on loopback, from the runtime
	// make kafka-runtime fetches.
	KafkaReal = "real"
)

// kafkaWorld is what happens to the brokers' Kafka as the story goes.
type kafkaWorld interface {
	// name says which Kafka this is, for the setup note.
	name() string
	// offline: no instance runs yet, so no broker does.
	offline(ctx context.Context) error
	// started: the broker of node started once its instance's launch completed.
	started(ctx context.Context, node int32) error
	// catchingUp: the next start of node is a broker that still has to catch up.
	catchingUp(node int32)
	// crashed: the instance of node vanished without warning.
	crashed(node int32) error
	// stopped: the deployment's stop command ran on node's instance (controlled shutdown).
	stopped(node int32) error
	// caughtUp: every broker that runs has caught up; every replica is in sync.
	caughtUp(ctx context.Context) error
}

// fakeKafka scripts kfake: registration and ISRs follow the story.
type fakeKafka struct{ d *demo }

func (k fakeKafka) name() string { return "Kafka (kfake)" }

func (k fakeKafka) offline(context.Context) error {
	for n := range Slots {
		k.d.st.Kafka.Unregister(int32(n))
	}
	return nil
}

func (k fakeKafka) started(_ context.Context, node int32) error {
	k.d.st.Kafka.Register(node)
	return nil
}

func (k fakeKafka) catchingUp(int32) {}

func (k fakeKafka) crashed(node int32) error {
	k.d.st.Kafka.Unregister(node)
	k.d.outOfSync(node)
	return nil
}

func (k fakeKafka) stopped(node int32) error {
	k.d.behind(node) // a stopped controller stops voting
	return k.crashed(node)
}

func (k fakeKafka) caughtUp(context.Context) error {
	k.d.inSync()
	return nil
}

// realKafka drives Apache Kafka's processes: a crash is SIGKILL, the stop command
// SIGTERM (Kafka's controlled shutdown, as systemctl stop sends it), a start starts
// the node's process on its data directory (the slot's volume). A broker that is
// catching up starts its process only when the story lets it catch up.
type realKafka struct {
	c *realkafka.Cluster

	mu       sync.Mutex
	deferred map[int32]bool
}

func (k *realKafka) name() string { return "Apache Kafka " + realkafka.Version }

func (k *realKafka) offline(context.Context) error {
	var errs []error
	for _, s := range k.c.Nodes {
		errs = append(errs, s.Kill())
	}
	return errors.Join(errs...)
}

func (k *realKafka) started(ctx context.Context, node int32) error {
	k.mu.Lock()
	later := k.deferred[node]
	k.mu.Unlock()
	if later {
		return nil
	}
	return k.start(ctx, node)
}

func (k *realKafka) start(ctx context.Context, node int32) error {
	if !k.c.Nodes[node].Running() {
		if err := k.c.Nodes[node].Start(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return k.c.WaitRegistered(ctx, node)
}

func (k *realKafka) catchingUp(node int32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.deferred == nil {
		k.deferred = map[int32]bool{}
	}
	k.deferred[node] = true
}

func (k *realKafka) crashed(node int32) error { return k.c.Nodes[node].Kill() }

func (k *realKafka) stopped(node int32) error { return k.c.Nodes[node].Stop(2 * time.Minute) }

func (k *realKafka) caughtUp(ctx context.Context) error {
	k.mu.Lock()
	var late []int32
	for n := range k.deferred {
		late = append(late, n)
	}
	clear(k.deferred)
	k.mu.Unlock()
	for _, n := range late {
		if err := k.start(ctx, n); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		full, err := k.inSync(ctx)
		if full {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for every replica to be in sync: %w", errors.Join(ctx.Err(), err))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// inSync reports whether every running broker lists every partition fully in sync.
func (k *realKafka) inSync(ctx context.Context) (bool, error) {
	cl, err := k.c.Client()
	if err != nil {
		return false, err
	}
	defer cl.Close()
	for i, s := range k.c.Nodes {
		if !s.Running() {
			return false, fmt.Errorf("node %d is not running", i)
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := cl.Broker(i).Request(rctx, kmsg.NewPtrMetadataRequest())
		cancel()
		if err != nil {
			return false, err
		}
		meta := resp.(*kmsg.MetadataResponse)
		if len(meta.Brokers) != len(k.c.Nodes) {
			return false, nil
		}
		for _, t := range meta.Topics {
			for _, p := range t.Partitions {
				if len(p.ISR) != len(p.Replicas) {
					return false, nil
				}
			}
		}
	}
	return true, nil
}
