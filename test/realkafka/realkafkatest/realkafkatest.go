// Package realkafkatest wraps package realkafka for tests: a test that needs Apache
// Kafka is skipped when the runtime is not on the machine, except under CI=true,
// where it fails (a silent skip would hide a broken setup); clusters are stopped when
// the test (or, for Shared, the package) ends.
package realkafkatest

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/test/realkafka"
)

// Need skips the test, or fails it under CI=true, when Kafka's runtime or java is
// missing, and returns the runtime's directory.
func Need(t testing.TB) string {
	t.Helper()
	rt, err := realkafka.Runtime()
	if err != nil {
		unavailable(t, err)
	}
	return rt
}

func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" || !errors.Is(err, realkafka.ErrNoRuntime) {
		t.Fatalf("Apache Kafka: %v", err)
	}
	t.Skipf("skipping: %v", err)
}

// Lock takes the runtime's cluster lock (realkafka.Lock) until the test ends.
func Lock(t testing.TB) {
	t.Helper()
	Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	unlock, err := realkafka.Lock(ctx)
	if err != nil {
		t.Fatalf("Apache Kafka: %v", err)
	}
	t.Cleanup(unlock)
}

// Start starts a cluster (holding the lock) for the test and stops it when the test
// ends.
func Start(t testing.TB, opt realkafka.Options) *realkafka.Cluster {
	t.Helper()
	Lock(t)
	c, err := realkafka.Start(context.Background(), opt)
	if err != nil {
		t.Fatalf("starting Apache Kafka %s: %v", realkafka.Version, err)
	}
	t.Cleanup(c.Close)
	t.Logf("Apache Kafka %s: %d nodes started in %s at %s", realkafka.Version, len(c.Nodes), c.Started.Round(time.Millisecond), c.Bootstrap())
	return c
}

// Shared is one cluster for a whole test package: the first Get starts it, and the
// package's TestMain calls Close after m.Run.
//
//	var kafka = &realkafkatest.Shared{}
//	func TestMain(m *testing.M) { code := m.Run(); kafka.Close(); os.Exit(code) }
type Shared struct {
	Options realkafka.Options

	once   sync.Once
	c      *realkafka.Cluster
	err    error
	unlock func()
}

// Get returns the package's cluster, starting it on first use; it skips or fails
// the test as Need does when the cluster cannot be had.
func (s *Shared) Get(t testing.TB) *realkafka.Cluster {
	t.Helper()
	s.once.Do(func() {
		if _, s.err = realkafka.Runtime(); s.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		if s.unlock, s.err = realkafka.Lock(ctx); s.err != nil {
			return
		}
		if s.c, s.err = realkafka.Start(context.Background(), s.Options); s.err != nil {
			s.unlock()
			s.unlock = nil
			return
		}
		t.Logf("Apache Kafka %s: %d nodes started in %s at %s", realkafka.Version, len(s.c.Nodes), s.c.Started.Round(time.Millisecond), s.c.Bootstrap())
	})
	if s.err != nil {
		unavailable(t, s.err)
	}
	return s.c
}

// Close stops the cluster, if one was started, and releases the lock.
func (s *Shared) Close() {
	if s.c != nil {
		s.c.Close()
	}
	if s.unlock != nil {
		s.unlock()
	}
}
