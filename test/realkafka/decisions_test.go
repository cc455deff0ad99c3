package realkafka_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/test/realkafka"
	"github.com/slotkeeper/slotkeeper/test/realkafka/realkafkatest"
)

func str(s string) *string { return &s }

// min.insync.replicas as Kafka itself reports it, from each source: the static
// broker setting, the cluster-wide dynamic default (which outranks it), and a topic
// override. A cluster formatted without ELR (as one upgraded from 3.x is) shows the
// static setting; a new 4.x cluster (ELR on) has stored its static value as the
// cluster-wide default at first start.
func TestMinISRSources(t *testing.T) {
	ctx := context.Background()
	c := cluster(t)
	parts, err := client(t, c).Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if p.Topic == "orders" && (p.MinISR != 2 || p.MinISRSource != kafka.MinISRCluster) {
			t.Errorf("new 4.x cluster (ELR): orders/%d min ISR %d from %q, want 2 from the cluster-wide default stored at first start", p.Partition, p.MinISR, p.MinISRSource)
		}
	}
	t.Logf("new 4.x cluster (ELR on): orders min.insync.replicas %d, source %q (static setting 2)", parts[0].MinISR, parts[0].MinISRSource)

	one := realkafkatest.Start(t, realkafka.Options{
		Nodes:  1,
		Config: map[string]string{"min.insync.replicas": "2"},
		Format: []string{"--feature", "eligible.leader.replicas.version=0"},
	})
	adm := admin(t, one)
	k := client(t, one)
	minISR := func(topic string) kafka.Partition {
		t.Helper()
		parts, err := k.Partitions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range parts {
			if p.Topic == topic {
				return p
			}
		}
		t.Fatalf("topic %s not in %+v", topic, parts)
		return kafka.Partition{}
	}
	createTopic(t, adm, "plain", 1, 1, nil)
	steps := []struct {
		name, topic string
		do          func()
		want        int
		source      string
	}{
		{"static broker setting (ELR off)", "plain", func() {}, 2, kafka.MinISRBroker},
		{"dynamic cluster default outranks it", "plain", func() {
			rs, err := adm.AlterBrokerConfigs(ctx, []kadm.AlterConfig{{Name: "min.insync.replicas", Value: str("3")}})
			if err == nil {
				for _, r := range rs {
					err = r.Err
				}
			}
			if err != nil {
				t.Fatalf("setting the cluster default: %v", err)
			}
		}, 3, kafka.MinISRCluster},
		{"topic override outranks both", "override", func() {
			createTopic(t, adm, "override", 1, 1, map[string]*string{"min.insync.replicas": str("1")})
		}, 1, kafka.MinISRTopic},
	}
	for _, s := range steps {
		s.do()
		var p kafka.Partition
		for range 50 { // a dynamic config reaches the brokers within moments
			if p = minISR(s.topic); p.MinISR == s.want {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("%-40s topic %-8s min.insync.replicas %d from %q", s.name, s.topic, p.MinISR, p.MinISRSource)
		if p.MinISR != s.want || p.MinISRSource != s.source {
			t.Errorf("%s: min ISR %d from %q, want %d from %q", s.name, p.MinISR, p.MinISRSource, s.want, s.source)
		}
	}
}

// With every broker up, any one may leave, and Health agrees with Kafka's own tool.
func TestAllUp(t *testing.T) {
	ctx := context.Background()
	c := cluster(t)
	k := client(t, c)
	for _, id := range c.IDs() {
		v, err := k.RemovalSafe(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s", v)
		if !v.Safe || v.Checked != 3 || len(v.Unreachable) != 0 {
			t.Errorf("broker %d: %s (checked %d); want safe with orders' 3 partitions checked", id, v, v.Checked)
		}
	}
	h, err := k.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	urp, unavailable := kafkaCounts(t, c)
	t.Logf("Health %+v; kafka-topics: %d under-replicated (with a leader), %d unavailable", h, urp, unavailable)
	if !slices.Equal(h.Brokers, c.IDs()) || h.UnderReplicated != urp || h.Offline != unavailable || urp != 0 {
		t.Errorf("Health %+v, kafka-topics %d under-replicated, %d unavailable", h, urp, unavailable)
	}
}

// A graceful stop (SIGTERM, as systemctl stop kafka sends it): the broker leaves
// the metadata and every ISR, the others may no longer leave, the stopped one may;
// Health matches kafka-topics' under-replicated and unavailable counts; after a
// restart the broker is back and everything is safe again.
func TestGracefulStop(t *testing.T) {
	ctx := context.Background()
	c := cluster(t)
	k := client(t, c)
	// solo lives on broker 2 only: it goes offline while 2 is down.
	createAssigned(t, c, "solo", [][]int32{{2}})

	began := time.Now()
	if err := c.Nodes[2].Stop(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(began)
	var leftAfter time.Duration
	for {
		registered, err := k.Registered(ctx, 2)
		if err == nil && !registered {
			leftAfter = time.Since(began)
			break
		}
		if time.Since(began) > time.Minute {
			t.Fatalf("broker 2 still registered a minute after SIGTERM (err %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("SIGTERM: Kafka exited after %s; Registered(2) = false after %s", stopped.Round(time.Millisecond), leftAfter.Round(time.Millisecond))

	for _, tc := range []struct {
		broker int32
		safe   bool
	}{{0, false}, {1, false}, {2, true}} {
		v, err := k.RemovalSafe(ctx, tc.broker)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s", v)
		if v.Safe != tc.safe {
			t.Errorf("broker %d: safe %v, want %v (broker 2 stopped)", tc.broker, v.Safe, tc.safe)
		}
	}
	var h kafka.Health
	var urp, unavailable int
	for try := range 5 { // compare once Kafka's counts are stable
		beforeURP, beforeOffline := kafkaCounts(t, c)
		var err error
		if h, err = k.Health(ctx); err != nil {
			t.Fatal(err)
		}
		urp, unavailable = kafkaCounts(t, c)
		if beforeURP == urp && beforeOffline == unavailable && h.UnderReplicated == urp && h.Offline == unavailable {
			break
		}
		t.Logf("try %d: Health %+v, kafka-topics %d/%d under-replicated, %d/%d unavailable", try, h, beforeURP, urp, beforeOffline, unavailable)
	}
	t.Logf("broker 2 stopped: Health %+v; kafka-topics: %d under-replicated (with a leader), %d unavailable", h, urp, unavailable)
	if h.UnderReplicated != urp || h.Offline != unavailable || unavailable != 1 || urp < 3 || slices.Contains(h.Brokers, 2) {
		t.Errorf("Health %+v, kafka-topics %d under-replicated, %d unavailable; want equal counts, solo unavailable, orders under-replicated", h, urp, unavailable)
	}

	began = time.Now()
	if err := c.Nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	for {
		registered, err := k.Registered(ctx, 2)
		if err == nil && registered {
			break
		}
		if time.Since(began) > 90*time.Second {
			t.Fatalf("broker 2 not registered 90 s after its restart (err %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	back := time.Since(began)
	waitISRFull(t, c, time.Minute)
	t.Logf("restart: Registered(2) = true after %s, every ISR full after %s", back.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	if v, err := k.RemovalSafe(ctx, 0); err != nil || !v.Safe {
		t.Errorf("after the restart: %s, %v; want safe", v, err)
	}
	h, err := k.Health(ctx)
	urp, unavailable = kafkaCounts(t, c)
	if err != nil || h.UnderReplicated != 0 || h.Offline != 0 || len(h.Brokers) != 3 || urp != 0 || unavailable != 0 {
		t.Errorf("after the restart: Health %+v, %v; kafka-topics %d under-replicated, %d unavailable", h, err, urp, unavailable)
	}
}

// createAssigned creates a topic whose partition i lives on assignment[i].
func createAssigned(t testing.TB, c *realkafka.Cluster, name string, assignment [][]int32) {
	t.Helper()
	cl, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 20000
	tp := kmsg.NewCreateTopicsRequestTopic()
	tp.Topic, tp.NumPartitions, tp.ReplicationFactor = name, -1, -1
	for i, replicas := range assignment {
		a := kmsg.NewCreateTopicsRequestTopicReplicaAssignment()
		a.Partition, a.Replicas = int32(i), replicas
		tp.ReplicaAssignment = append(tp.ReplicaAssignment, a)
	}
	req.Topics = append(req.Topics, tp)
	resp, err := req.RequestWith(ctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.Topics[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("creating topic %s: %v", name, err)
	}
}

// row is one check of a sequence, for the tables the tests print.
type row struct {
	at        time.Duration // since the fault
	kafkaISR  bool          // Kafka's metadata still lists the faulty broker in an ISR
	metaOnly  string        // the rule on Kafka's metadata alone, without reachability
	took      time.Duration
	safe      bool
	errText   string
	unreached []int32
}

func table(t *testing.T, title, fault string, rows []row) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n  %-8s | %-26s | %-22s | %-9s | %s\n", title, "t+", "Kafka lists "+fault+" in an ISR", "metadata-only rule", "verdict", "check took")
	for _, r := range rows {
		v := "not safe"
		if r.safe {
			v = "SAFE"
		}
		if r.errText != "" {
			v = "error"
		}
		fmt.Fprintf(&b, "  %-8s | %-26v | %-22s | %-9s | %s\n", r.at.Round(100*time.Millisecond), r.kafkaISR, r.metaOnly, v, r.took.Round(time.Millisecond))
	}
	t.Log(b.String())
}

// metaOnly is the verdict the rule gives on Kafka's metadata as listed (what the
// check answered before it asked the ISR members), via Partitions.
func metaOnly(ctx context.Context, k *kafka.Client, broker int32) string {
	parts, err := k.Partitions(ctx)
	if err != nil {
		return "error"
	}
	if kafka.RemovalSafe(broker, parts).Safe {
		return "safe"
	}
	return "not safe"
}

// SIGKILL: Kafka keeps the dead broker in the ISRs until its session times out.
// During that window the metadata alone says another broker may leave; the check,
// which asks every ISR member, never does.
func TestSIGKILLSessionWindow(t *testing.T) {
	ctx := context.Background()
	c := cluster(t)
	k := client(t, c)
	observer := c.Addrs[1]

	if err := c.Nodes[2].Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var rows []row
	var goneAt time.Duration
	for time.Since(killed) < realkafka.SessionTimeout+5*time.Second {
		r := row{at: time.Since(killed)}
		if meta, err := metadataOf(ctx, observer); err == nil {
			r.kafkaISR = isrHolds(meta, 2)
		}
		if !r.kafkaISR && goneAt == 0 {
			goneAt = r.at
		}
		r.metaOnly = metaOnly(ctx, k, 0)
		began := time.Now()
		v, err := k.RemovalSafe(ctx, 0)
		r.took, r.safe, r.unreached = time.Since(began), err == nil && v.Safe, v.Unreachable
		if err != nil {
			r.errText = err.Error()
		}
		rows = append(rows, r)
		time.Sleep(250 * time.Millisecond)
	}
	table(t, fmt.Sprintf("SIGKILL of broker 2 (session timeout %s), removal of broker 0:", realkafka.SessionTimeout), "2", rows)
	safe, window := 0, 0
	for _, r := range rows {
		if r.safe {
			safe++
		}
		if r.kafkaISR && r.metaOnly == "safe" {
			window++
		}
	}
	t.Logf("%d checks; Kafka listed broker 2 in the ISRs for %s after the kill; the metadata alone said \"safe\" in %d checks; the check said \"safe\" in %d",
		len(rows), goneAt.Round(100*time.Millisecond), window, safe)
	if safe != 0 {
		t.Errorf("%d checks said broker 0 may leave while broker 2 was dead", safe)
	}
	if window == 0 {
		t.Errorf("no check saw the session-timeout window (Kafka listing the dead broker in the ISRs): the test did not test it")
	}
	t.Logf("restart: every ISR full after %s", restart(t, c, 2).Round(time.Millisecond))
}

// SIGSTOP: a hung broker answers nothing but keeps its sockets. No check says
// "safe" once it hangs (nor once the ISRs have shrunk), each check returns within
// its bounds, and questions for any broker do not wait on the hung one even when it
// is the first bootstrap broker. Broker 0 hangs: the lowest id, the first candidate.
func TestHungBroker(t *testing.T) {
	ctx := context.Background()
	c := cluster(t)
	k := client(t, c)
	hungFirst := client(t, c, c.Addrs[0], c.Addrs[1], c.Addrs[2]) // the hung broker is the first seed
	observer := c.Addrs[1]

	if err := c.Nodes[0].Pause(); err != nil {
		t.Fatal(err)
	}
	hung := time.Now()
	defer func() { _ = c.Nodes[0].Resume() }()

	var rows []row
	shrunkAt := time.Duration(0)
	for time.Since(hung) < realkafka.ReplicaLag+realkafka.SessionTimeout+4*time.Second {
		r := row{at: time.Since(hung)}
		if meta, err := metadataOf(ctx, observer); err == nil {
			r.kafkaISR = isrHolds(meta, 0)
		}
		if !r.kafkaISR && shrunkAt == 0 {
			shrunkAt = r.at
		}
		r.metaOnly = metaOnly(ctx, k, 1)
		began := time.Now()
		v, err := k.RemovalSafe(ctx, 1)
		r.took, r.safe, r.unreached = time.Since(began), err == nil && v.Safe, v.Unreachable
		if err != nil {
			r.errText = err.Error()
		}
		rows = append(rows, r)
		time.Sleep(250 * time.Millisecond)
	}
	table(t, "SIGSTOP of broker 0, removal of broker 1:", "0", rows)
	var safe, safeShrunk int
	var longest time.Duration
	for _, r := range rows {
		if r.safe {
			safe++
			if !r.kafkaISR {
				safeShrunk++
			}
		}
		longest = max(longest, r.took)
	}
	t.Logf("%d checks; ISRs shrank (broker 0 out) %s after the hang; \"safe\" verdicts: %d in all, %d after the shrink; longest check %s (PingTimeout %s, CallTimeout %s)",
		len(rows), shrunkAt.Round(100*time.Millisecond), safe, safeShrunk, longest.Round(time.Millisecond), kafka.PingTimeout, kafka.CallTimeout)
	if safe != 0 {
		t.Errorf("%d checks said broker 1 may leave while broker 0 hung (%d after the ISRs shrank)", safe, safeShrunk)
	}
	if shrunkAt == 0 {
		t.Errorf("the ISRs never shrank: the test did not reach the state it tests")
	}
	if longest > kafka.CallTimeout {
		t.Errorf("a check took %s, beyond its deadline %s", longest, kafka.CallTimeout)
	}

	// Every call, with the hung broker as the first bootstrap broker.
	calls := []struct {
		name string
		call func(context.Context) error
		ok   bool // must succeed: the others can answer
	}{
		{"Health", func(ctx context.Context) error { _, err := hungFirst.Health(ctx); return err }, true},
		{"Registered", func(ctx context.Context) error { _, err := hungFirst.Registered(ctx, 1); return err }, true},
		// Brokers forward DescribeQuorum to the active controller: while that is the
		// hung node, Kafka itself cannot answer; the call must still end in time.
		{"Quorum", func(ctx context.Context) error { _, err := hungFirst.Quorum(ctx); return err }, false},
		{"Partitions", func(ctx context.Context) error { _, err := hungFirst.Partitions(ctx); return err }, true},
		{"RemovalSafe(1)", func(ctx context.Context) error { _, err := hungFirst.RemovalSafe(ctx, 1); return err }, true},
	}
	var b strings.Builder
	fmt.Fprintf(&b, "calls with hung broker 0 as the first bootstrap broker (3 rounds):\n")
	for _, cl := range calls {
		var took []string
		for range 3 {
			began := time.Now()
			err := cl.call(ctx)
			d := time.Since(began)
			took = append(took, d.Round(time.Millisecond).String())
			if cl.ok && err != nil {
				t.Errorf("%s failed with one broker hung: %v", cl.name, err)
			}
			if err != nil {
				took[len(took)-1] += " (error)"
			}
			if d > kafka.CallTimeout+time.Second {
				t.Errorf("%s took %s, beyond its deadline %s", cl.name, d, kafka.CallTimeout)
			}
		}
		fmt.Fprintf(&b, "  %-15s %s\n", cl.name, strings.Join(took, ", "))
	}
	t.Log(b.String())

	if err := c.Nodes[0].Resume(); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	waitISRFull(t, c, 2*time.Minute)
	t.Logf("SIGCONT: every ISR full after %s", time.Since(resumed).Round(time.Millisecond))
}

// Topics created while checks run in a loop are never missing from a verdict: each
// check covers every topic whose creation was acknowledged before it began, or is
// not safe and names the topic it could not read.
func TestTopicsCreatedDuringChecks(t *testing.T) {
	ctx := context.Background()
	c := cluster(t)
	k := client(t, c)
	adm := admin(t, c)
	v0, err := k.RemovalSafe(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	base := v0.Checked + v0.Ignored

	const topics = 30
	var acked atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range topics {
			createTopic(t, adm, fmt.Sprintf("fresh-%02d", i), 1, 3, nil)
			acked.Add(1)
			time.Sleep(50 * time.Millisecond)
		}
	}()
	var checks, missing, unknown, errs int
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		before := int(acked.Load())
		v, err := k.RemovalSafe(ctx, 0)
		checks++
		switch {
		case err != nil:
			errs++
			t.Logf("check %d: %v", checks, err)
		case len(v.Unknown) > 0:
			unknown++
			if v.Safe {
				t.Errorf("check %d: safe with unknown topics %v", checks, v.Unknown)
			}
			t.Logf("check %d: not safe: %v", checks, v.Unknown)
		case v.Checked+v.Ignored < base+before:
			missing++
			t.Errorf("check %d: %d partitions in the verdict, but %d existed before it began", checks, v.Checked+v.Ignored, base+before)
		}
	}
	t.Logf("%d topics created while %d checks ran: %d verdicts missing a topic, %d not safe naming a topic without a config answer, %d errors",
		topics, checks, missing, unknown, errs)
	if missing != 0 {
		t.Errorf("%d verdicts left out a topic", missing)
	}
}

// The wait of the terminate path, paced as it is there (SLOTKEEPER_SAFETY_RECHECK's
// default, up to kafka.MaxRecheck): how long after every ISR is full again does a
// held termination proceed?
func TestWaitAfterRecovery(t *testing.T) {
	ctx := context.Background()
	c := cluster(t)
	k := client(t, c)
	cfg, err := config.Load(func(key string) string {
		switch strings.TrimPrefix(key, config.Prefix) {
		case "CLUSTER":
			return "c"
		case "ASG_NAME":
			return "g"
		case "TABLE":
			return "t"
		case "SLOT_COUNT":
			return "3"
		case "SUBNETS":
			return "subnet-0a"
		case "SECURITY_GROUPS":
			return "sg-0a"
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Nodes[2].Stop(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	w := kafka.Wait{First: cfg.SafetyRecheck, Max: kafka.MaxRecheck, Bound: 3 * time.Minute}
	type result struct {
		res kafka.WaitResult
		at  time.Time
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := w.Until(ctx, func(ctx context.Context) (kafka.Verdict, error) { return k.RemovalSafe(ctx, 0) })
		done <- result{res, time.Now(), err}
	}()
	time.Sleep(12 * time.Second) // held long enough to pace at the longest pause
	if err := c.Nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	var full time.Time
	for full.IsZero() {
		if meta, err := metadataOf(ctx, c.Addrs[1]); err == nil && isrFull(meta) && len(meta.Brokers) == 3 {
			full = time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := <-done
	if r.err != nil || !r.res.Verdict.Safe || r.res.Forced {
		t.Fatalf("wait ended %+v, %v; want safe, not forced", r.res, r.err)
	}
	t.Logf("pacing: first pause %s, longest %s; every ISR full -> wait returned safe: %s (%d checks in %s)",
		cfg.SafetyRecheck, kafka.MaxRecheck, r.at.Sub(full).Round(time.Millisecond), r.res.Checks, r.res.Waited.Round(time.Millisecond))
	waitISRFull(t, c, time.Minute)
}
