package kafka

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/slotkeeper/slotkeeper/shared/config"
)

// Bounds on every call, so that an unreachable or hung cluster costs seconds, not
// minutes: a check that cannot reach Kafka fails fast and the caller's own bounded
// wait (Wait) decides what happens next. Options passed to NewClient override the
// kgo ones.
//
// Every request is sent to one chosen broker and abandoned when its deadline passes,
// whatever the connection is doing: kgo does not give up on a request queued behind
// a hung broker when the context ends, so the client does not rely on it.
const (
	// DialTimeout bounds one connection attempt, TLS and SASL included (kgo default 10 s).
	DialTimeout = 5 * time.Second
	// RequestTimeout bounds one request on one connection (kgo's request timeout
	// overhead, default 10 s); a broker that does not answer in time loses the
	// connection.
	RequestTimeout = 5 * time.Second
	// PingTimeout bounds the reachability check of one broker (an ApiVersions
	// request) before a removal verdict.
	PingTimeout = 2 * time.Second
	// CallTimeout bounds each Client method as a whole.
	CallTimeout = 20 * time.Second
	// Hedge is how many brokers a question for any broker goes to at once; the next
	// is asked as soon as one fails, so one hung broker costs no time.
	Hedge = 2
	// failurePenalty is how long a broker that did not answer is asked last.
	failurePenalty = time.Minute
	// maxRounds bounds the re-reads of a removal snapshot that found a topic without
	// a configuration answer or an ISR member not yet asked.
	maxRounds = 4
)

// minISRKey is the topic and broker configuration Partitions reads.
const minISRKey = "min.insync.replicas"

// ErrNoBootstrap is returned by NewClient when no bootstrap broker is configured:
// slotkeeper then runs without Kafka checks (SLOTKEEPER_KAFKA_BOOTSTRAP empty).
var ErrNoBootstrap = errors.New("no Kafka bootstrap brokers configured")

// Client asks a Kafka cluster the questions slotkeeper needs answered. It is safe
// for concurrent use. Every method sends fresh requests; none uses a cache.
//
// The client keeps one kgo connection per broker address (the bootstrap brokers and
// the brokers of the latest Metadata answer) and sends each request to a broker it
// chose: questions any broker can answer go to Hedge brokers at once (those that
// failed recently last), questions about a broker go to that broker.
type Client struct {
	opts  []kgo.Opt
	seeds []string

	mu      sync.Mutex
	conns   map[string]*kgo.Client
	brokers map[int32]string     // node id -> host:port, from the latest Metadata answer
	failed  map[string]time.Time // host:port -> when it last did not answer
}

// NewClient returns a client for the cluster cfg describes: its bootstrap
// brokers, TLS (system roots; the server name is taken from each broker's host)
// and SASL PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512. No connection is made until the
// first call. opts are appended after slotkeeper's own kgo options, so they win
// (tests use this for shorter timeouts).
func NewClient(cfg config.KafkaConfig, opts ...kgo.Opt) (*Client, error) {
	return NewClientWithPassword(cfg, func(context.Context) (string, error) { return cfg.Password, nil }, opts...)
}

// PasswordFunc returns the SASL password. It is asked on every new connection, so a
// password read from a secret can follow a rotation, and a secret that cannot be read
// fails the connections that need it (Kafka then counts as unreachable: "not safe")
// instead of the whole function.
type PasswordFunc func(context.Context) (string, error)

// NewClientWithPassword is NewClient with the SASL password from password instead of
// cfg.Password.
func NewClientWithPassword(cfg config.KafkaConfig, password PasswordFunc, opts ...kgo.Opt) (*Client, error) {
	if len(cfg.Bootstrap) == 0 {
		return nil, ErrNoBootstrap
	}
	base := []kgo.Opt{
		kgo.ClientID("slotkeeper"),
		kgo.DialTimeout(DialTimeout),
		kgo.RequestTimeoutOverhead(RequestTimeout),
		kgo.RequestRetries(0),
	}
	if cfg.TLS {
		base = append(base, kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	switch cfg.SASLMechanism {
	case "":
	case "PLAIN":
		base = append(base, kgo.SASL(plain.Plain(func(ctx context.Context) (plain.Auth, error) {
			p, err := password(ctx)
			return plain.Auth{User: cfg.Username, Pass: p}, err
		})))
	case "SCRAM-SHA-256", "SCRAM-SHA-512":
		auth := func(ctx context.Context) (scram.Auth, error) {
			p, err := password(ctx)
			return scram.Auth{User: cfg.Username, Pass: p}, err
		}
		if cfg.SASLMechanism == "SCRAM-SHA-256" {
			base = append(base, kgo.SASL(scram.Sha256(auth)))
		} else {
			base = append(base, kgo.SASL(scram.Sha512(auth)))
		}
	default:
		return nil, fmt.Errorf("kafka SASL mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", cfg.SASLMechanism)
	}
	c := &Client{
		opts: append(base, opts...), seeds: slices.Clone(cfg.Bootstrap),
		conns: map[string]*kgo.Client{}, brokers: map[int32]string{}, failed: map[string]time.Time{},
	}
	// The options are checked once, here, on the first seed's connection.
	if _, err := c.conn(c.seeds[0]); err != nil {
		return nil, fmt.Errorf("creating Kafka client for %s: %w", strings.Join(cfg.Bootstrap, ","), err)
	}
	return c, nil
}

// Close closes the client's connections.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, cl := range c.conns {
		cl.Close()
		delete(c.conns, addr)
	}
}

// conn returns the request handle of the broker at addr, connecting lazily.
func (c *Client) conn(addr string) (*kgo.Broker, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.conns[addr]
	if !ok {
		var err error
		if cl, err = kgo.NewClient(append(slices.Clone(c.opts), kgo.SeedBrokers(addr))...); err != nil {
			return nil, err
		}
		c.conns[addr] = cl
	}
	return cl.SeedBrokers()[0], nil
}

// ask sends req to the broker at addr and returns its answer, or an error once ctx
// ends, whichever comes first: the request runs on its own goroutine, which is left
// to kgo's own bounds (RequestTimeout) when ctx ends first. A request that failed
// on its connection (it died, say after another request on it timed out) is sent
// once more on a new one; a timeout is not (a hung broker would hang again). A
// broker that fails or times out is asked last for a while; one that was merely
// cancelled is not blamed.
func (c *Client) ask(ctx context.Context, addr string, req kmsg.Request) (kmsg.Response, error) {
	b, err := c.conn(addr)
	if err != nil {
		return nil, err
	}
	type answer struct {
		resp kmsg.Response
		err  error
	}
	var a answer
	for attempt := 1; ; attempt++ {
		ch := make(chan answer, 1)
		go func() {
			resp, err := b.Request(ctx, req)
			ch <- answer{resp, err}
		}()
		select {
		case a = <-ch:
		case <-ctx.Done():
			a.err = ctx.Err()
		}
		if a.err == nil || attempt == 2 || ctx.Err() != nil || !retriable(a.err) {
			break
		}
	}
	if a.err != nil && ctx.Err() != nil {
		a.err = fmt.Errorf("no answer from %s in time: %w", addr, ctx.Err())
	}
	c.mu.Lock()
	switch {
	case a.err == nil:
		delete(c.failed, addr)
	case !errors.Is(a.err, context.Canceled):
		c.failed[addr] = time.Now()
	}
	c.mu.Unlock()
	return a.resp, a.err
}

// retriable reports whether a request that failed with err is worth a second try on
// a new connection: not after a timeout, an error Kafka answered, or a closed client.
func retriable(err error) bool {
	var ne net.Error
	var ke *kerr.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.As(err, &ke), errors.Is(err, kgo.ErrClientClosed),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	}
	return true
}

// candidates lists the addresses to ask a question any broker can answer: the
// brokers of the latest Metadata answer by node id, then the bootstrap brokers not
// among them; those that failed within failurePenalty come last.
func (c *Client) candidates() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]int32, 0, len(c.brokers))
	for id := range c.brokers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var addrs []string
	for _, id := range ids {
		addrs = append(addrs, c.brokers[id])
	}
	for _, s := range c.seeds {
		if !slices.Contains(addrs, s) {
			addrs = append(addrs, s)
		}
	}
	now := time.Now()
	slices.SortStableFunc(addrs, func(a, b string) int {
		fa, fb := now.Sub(c.failed[a]) < failurePenalty, now.Sub(c.failed[b]) < failurePenalty
		switch {
		case fa == fb:
			return 0
		case fa:
			return 1
		}
		return -1
	})
	return addrs
}

// firstN asks the brokers at addrs, in order, until n have answered: min(n+Hedge-1,
// len) at once, the next whenever one fails. It returns the answers with their
// addresses, in the order they came; fewer than n answers come with every error.
func (c *Client) firstN(ctx context.Context, addrs []string, n int, mk func() kmsg.Request) ([]string, []kmsg.Response, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type answer struct {
		addr string
		resp kmsg.Response
		err  error
	}
	ch := make(chan answer, len(addrs))
	next, running := 0, 0
	launch := func() {
		addr := addrs[next]
		next++
		running++
		go func() {
			resp, err := c.ask(ctx, addr, mk())
			ch <- answer{addr, resp, err}
		}()
	}
	for next < len(addrs) && running < n+Hedge-1 {
		launch()
	}
	var got []string
	var resps []kmsg.Response
	var errs []error
	for running > 0 && len(got) < n {
		a := <-ch
		running--
		if a.err == nil {
			got, resps = append(got, a.addr), append(resps, a.resp)
			continue
		}
		errs = append(errs, fmt.Errorf("%s: %w", a.addr, a.err))
		if next < len(addrs) && ctx.Err() == nil {
			launch()
		}
	}
	if len(got) >= n {
		return got, resps, nil
	}
	if len(addrs) == 0 {
		errs = append(errs, errors.New("no broker to ask"))
	}
	return got, resps, fmt.Errorf("%d of %d brokers answered: %w", len(got), n, errors.Join(errs...))
}

// first asks any broker (see firstN) and returns the first answer and its address.
func (c *Client) first(ctx context.Context, mk func() kmsg.Request) (string, kmsg.Response, error) {
	addrs, resps, err := c.firstN(ctx, c.candidates(), 1, mk)
	if err != nil {
		return "", nil, err
	}
	return addrs[0], resps[0], nil
}

// RemovalSafe reports whether broker may leave the cluster now, by the rule of the
// package-level RemovalSafe applied to a fresh, checked snapshot of the partitions:
//
//   - the Metadata answers it rests on are read after every other answer (the
//     configurations and the reachability checks), from two brokers that answered,
//     and an ISR member counts only if both list it;
//   - every ISR member of the partitions broker replicates is asked (ApiVersions,
//     PingTimeout); one that does not answer counts as out of the ISR, so a broker
//     Kafka still lists during its session timeout (killed or hung) cannot make a
//     removal look safe;
//   - every topic the final Metadata lists is in the verdict, or the verdict is not
//     safe and Verdict.Unknown says which topic lacks its min.insync.replicas.
//
// The whole check is bounded by CallTimeout; an error (Kafka unreachable, a partial
// answer, the deadline) means "not safe".
func (c *Client) RemovalSafe(ctx context.Context, broker int32) (Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	s, err := c.snapshot(ctx, broker, true)
	if err != nil {
		return Verdict{Broker: broker}, fmt.Errorf("deciding whether broker %d may leave: %w", broker, err)
	}
	v := RemovalSafe(broker, s.parts)
	v.Unreachable, v.Unknown = s.unreachable, s.unknown
	if len(v.Unknown) > 0 {
		v.Safe = false
	}
	return v, nil
}

// Registered reports whether broker is in the broker list of a fresh Metadata
// response, i.e. whether the cluster currently counts it as alive.
func (c *Client) Registered(ctx context.Context, broker int32) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	_, meta, err := c.metadata(ctx, false)
	if err != nil {
		return false, fmt.Errorf("checking whether broker %d is registered: %w", broker, err)
	}
	return slices.Contains(brokersOf(meta), broker), nil
}

// Brokers returns the registered brokers' advertised host:port by node id, from a
// fresh Metadata response.
func (c *Client) Brokers(ctx context.Context) (map[int32]string, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	_, meta, err := c.metadata(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("listing the registered brokers: %w", err)
	}
	return brokerAddrs(meta), nil
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
// response of the first broker to answer. It does not read min.insync.replicas.
func (c *Client) Health(ctx context.Context) (Health, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	_, meta, err := c.metadata(ctx, true)
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
// with its leader, replicas and ISR from fresh Metadata requests (all topics, the
// last ones read after the configurations) and its topic's effective
// min.insync.replicas from DescribeConfigs.
//
// min.insync.replicas is the value the topic reports, which real Kafka resolves
// to the topic override, else the cluster-wide dynamic default, else the broker's
// static setting, else the default (the source is kept in Partition.MinISRSource).
// Should a topic answer without the key, the answering broker's value is used, then
// Kafka's default, 1. A topic whose configuration cannot be read is an error, not
// a guess: guessing low could let a broker leave unsafely. A topic the final
// Metadata lists but DescribeConfigs does not know (a broker that has not yet seen
// a new topic) is asked again, and is an error if it stays unknown.
func (c *Client) Partitions(ctx context.Context) ([]Partition, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	s, err := c.snapshot(ctx, -1, false)
	if err != nil {
		return nil, err
	}
	if len(s.unknown) > 0 {
		return nil, fmt.Errorf("reading %s: %s", minISRKey, strings.Join(s.unknown, "; "))
	}
	return s.parts, nil
}

// snapshot is a checked view of the partitions (see RemovalSafe, Partitions).
type snapshot struct {
	parts []Partition
	// unknown names the topics the final Metadata lists without a min ISR answer.
	unknown []string
	// unreachable are the brokers asked that did not answer.
	unreachable []int32
}

// snapshot gathers the partitions and their min ISR. With ping, it asks every ISR
// member of the partitions leaving replicates (and leaving itself) and counts
// those that do not answer as out of the ISR.
func (c *Client) snapshot(ctx context.Context, leaving int32, ping bool) (snapshot, error) {
	// 1. Which topics and partitions there are, and who replicates them.
	firstAddr, meta, err := c.metadata(ctx, true)
	if err != nil {
		return snapshot{}, err
	}
	parts, err := partitionsOf(meta)
	if err != nil {
		return snapshot{}, err
	}
	addrs := brokerAddrs(meta)

	answered := map[int32]bool{} // pinged brokers: did they answer?
	mins := map[string]minISR{}
	unknown := map[string]string{} // topic -> why its min ISR is unknown
	var views []string             // the addresses the final Metadata came from
	for round := 1; ; round++ {
		// 2. Reachability of every ISR member that matters, not yet asked.
		if ping {
			var ask []int32
			for _, id := range isrMembers(parts, leaving) {
				if _, done := answered[id]; !done {
					ask = append(ask, id)
				}
			}
			for id, ok := range c.ping(ctx, ask, addrs) {
				answered[id] = ok
			}
		}

		// 3. min.insync.replicas of every topic still without it, from a broker that
		// answered (a DescribeConfigs for a broker resource goes to that broker).
		var need []string
		for _, t := range topicsOf(parts) {
			if _, ok := mins[t]; !ok {
				need = append(need, t)
			}
		}
		if len(need) > 0 {
			target, addr := c.configBroker(answered, addrs, leaving, firstAddr)
			if err := c.configs(ctx, target, addr, need, mins, unknown); err != nil {
				return snapshot{}, err
			}
		}

		// 4. The partitions as they are now, read last: from two brokers that answered.
		var final []Partition
		final, views, err = c.views(ctx, c.viewCandidates(answered, addrs, leaving, ping), ping)
		if err != nil {
			return snapshot{}, err
		}
		parts = final

		// 5. A topic without its min ISR (new, or unknown to the broker asked), or an
		// ISR member not asked yet: ask again, within the bounds.
		again := false
		for _, t := range topicsOf(parts) {
			if _, ok := mins[t]; !ok {
				again = true
			}
		}
		if ping {
			for _, id := range isrMembers(parts, leaving) {
				if _, done := answered[id]; !done {
					again = true
				}
			}
		}
		if !again || round >= maxRounds || ctx.Err() != nil {
			break
		}
		if err := sleepCtx(ctx, time.Duration(round)*100*time.Millisecond); err != nil {
			break
		}
	}

	out := snapshot{}
	var unknownTopics []string
	for _, p := range parts {
		m, ok := mins[p.Topic]
		if !ok {
			if !slices.Contains(unknownTopics, p.Topic) {
				unknownTopics = append(unknownTopics, p.Topic)
			}
			continue
		}
		p.MinISR, p.MinISRSource = m.n, m.source
		if ping {
			for _, id := range p.ISR {
				if !answered[id] {
					p.Silent = append(p.Silent, id)
				}
			}
			p.ISR = slices.DeleteFunc(p.ISR, func(id int32) bool { return !answered[id] })
		}
		out.parts = append(out.parts, p)
	}
	for _, t := range unknownTopics {
		why := unknown[t]
		if why == "" {
			why = "no DescribeConfigs answer yet"
		}
		out.unknown = append(out.unknown, fmt.Sprintf("topic %s (listed by the Metadata of %s): %s unknown: %s", t, strings.Join(views, ", "), minISRKey, why))
	}
	for id, ok := range answered {
		if !ok {
			out.unreachable = append(out.unreachable, id)
		}
	}
	slices.Sort(out.unreachable)
	return out, nil
}

// ping asks each broker of ids for its ApiVersions, at once, each bounded by
// PingTimeout, and reports which answered. A broker without a known address did not.
func (c *Client) ping(ctx context.Context, ids []int32, addrs map[int32]string) map[int32]bool {
	out := make(map[int32]bool, len(ids))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range ids {
		addr, ok := addrs[id]
		if !ok { // not registered: it cannot answer
			mu.Lock()
			out[id] = false
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, PingTimeout)
			defer cancel()
			req := kmsg.NewPtrApiVersionsRequest()
			// Kafka refuses (INVALID_REQUEST) an ApiVersions v3+ without a valid client name.
			req.ClientSoftwareName, req.ClientSoftwareVersion = "slotkeeper", "1"
			resp, err := c.ask(pctx, addr, req)
			ok := err == nil && kerr.ErrorForCode(resp.(*kmsg.ApiVersionsResponse).ErrorCode) == nil
			mu.Lock()
			out[id] = ok
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// configBroker picks the broker to ask for configurations: the lowest that answered
// its ping, preferring one that is not leaving; without pings, the broker that
// answered the first Metadata request.
func (c *Client) configBroker(answered map[int32]bool, addrs map[int32]string, leaving int32, fallback string) (int32, string) {
	best := int32(-1)
	for id, ok := range answered {
		if !ok || addrs[id] == "" {
			continue
		}
		if best < 0 || (best == leaving && id != leaving) || (id < best && (id != leaving || best == leaving)) {
			best = id
		}
	}
	if best >= 0 {
		return best, addrs[best]
	}
	for id, addr := range addrs {
		if addr == fallback {
			return id, addr
		}
	}
	return -1, fallback
}

// viewCandidates lists where to read the final Metadata: the brokers that answered
// their ping (those not leaving first), else any broker.
func (c *Client) viewCandidates(answered map[int32]bool, addrs map[int32]string, leaving int32, ping bool) []string {
	if !ping {
		return c.candidates()
	}
	var ids []int32
	for id, ok := range answered {
		if ok && addrs[id] != "" {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b int32) int {
		if (a == leaving) != (b == leaving) {
			if a == leaving {
				return 1
			}
			return -1
		}
		return cmp.Compare(a, b)
	})
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		out = append(out, addrs[id])
	}
	return out
}

// views reads the partitions from fresh Metadata answers of two brokers among addrs
// (one if there is only one) and merges them: each broker answers from its own copy
// of the metadata, so an ISR member counts only if every answer lists it. strict (a
// removal verdict) needs both answers; otherwise one will do.
func (c *Client) views(ctx context.Context, addrs []string, strict bool) ([]Partition, []string, error) {
	n := min(2, len(addrs))
	if n == 0 {
		return nil, nil, errors.New("no broker answered to read the metadata from")
	}
	got, resps, err := c.firstN(ctx, addrs, n, func() kmsg.Request { return kmsg.NewPtrMetadataRequest() })
	if err != nil && (strict || len(got) == 0) {
		return nil, got, fmt.Errorf("reading the metadata last: %w", err)
	}
	var merged []Partition
	for i, r := range resps {
		meta := r.(*kmsg.MetadataResponse)
		if err := kerr.ErrorForCode(meta.ErrorCode); err != nil {
			return nil, got, fmt.Errorf("metadata from %s: %w", got[i], err)
		}
		c.learn(meta)
		parts, err := partitionsOf(meta)
		if err != nil {
			return nil, got, fmt.Errorf("metadata from %s: %w", got[i], err)
		}
		merged = mergeViews(merged, parts)
	}
	return merged, got, nil
}

// mergeViews adds a second broker's partitions to a first's: ISRs intersect,
// replica sets unite (a reassignment in flight), and partitions only one broker
// knows are kept.
func mergeViews(a, b []Partition) []Partition {
	if a == nil {
		return b
	}
	if slices.IsSortedFunc(a, comparePartitions) && slices.IsSortedFunc(b, comparePartitions) {
		return mergeSortedViews(a, b) // as partitionsOf lists them: no index needed
	}
	type key struct {
		t string
		p int32
	}
	idx := make(map[key]int, len(a))
	for i, p := range a {
		idx[key{p.Topic, p.Partition}] = i
	}
	for _, p := range b {
		i, ok := idx[key{p.Topic, p.Partition}]
		if !ok {
			a = append(a, p)
			continue
		}
		a[i] = mergePartition(a[i], p)
	}
	if !slices.IsSortedFunc(a, comparePartitions) { // only when b added partitions, or a came unsorted
		sortPartitions(a)
	}
	return a
}

// mergeSortedViews is mergeViews for two views in topic/partition order, by one walk
// through both.
func mergeSortedViews(a, b []Partition) []Partition {
	out := make([]Partition, 0, max(len(a), len(b)))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		c := 0
		switch {
		case i == len(a):
			c = 1
		case j == len(b):
			c = -1
		default:
			c = comparePartitions(a[i], b[j])
		}
		switch {
		case c < 0:
			out = append(out, a[i])
			i++
		case c > 0:
			out = append(out, b[j])
			j++
		default:
			out = append(out, mergePartition(a[i], b[j]))
			i++
			j++
		}
	}
	return out
}

// mergePartition merges two brokers' views of one partition: the ISR is both
// answers' intersection, the replicas their union, no leader wins over a leader.
func mergePartition(q, p Partition) Partition {
	q.ISR = slices.DeleteFunc(q.ISR, func(id int32) bool { return !slices.Contains(p.ISR, id) })
	for _, r := range p.Replicas {
		if !slices.Contains(q.Replicas, r) {
			q.Replicas = append(q.Replicas, r)
		}
	}
	if q.Leader != p.Leader {
		q.Leader = min(q.Leader, p.Leader) // -1 (no leader) wins
	}
	return q
}

// minISR is a topic's effective min.insync.replicas and its source.
type minISR struct {
	n      int
	source string
}

// configs asks the broker target (at addr) for the min.insync.replicas of topics
// and its own, and records each topic's value in mins, or in unknown why it has
// none yet (UNKNOWN_TOPIC_OR_PARTITION: the broker has not seen the topic, or it was
// just deleted; the final Metadata decides which). Any other failure is an error.
func (c *Client) configs(ctx context.Context, target int32, addr string, topics []string, mins map[string]minISR, unknown map[string]string) error {
	req := kmsg.NewPtrDescribeConfigsRequest()
	for _, t := range topics {
		req.Resources = append(req.Resources, configResource(kmsg.ConfigResourceTypeTopic, t))
	}
	brokerName := ""
	if target >= 0 {
		brokerName = strconv.Itoa(int(target))
		req.Resources = append(req.Resources, configResource(kmsg.ConfigResourceTypeBroker, brokerName))
	}
	resp, err := c.ask(ctx, addr, req)
	if err != nil {
		return fmt.Errorf("describing %s of %d topics at %s: %w", minISRKey, len(topics), addr, err)
	}
	byTopic := map[string]*kmsg.DescribeConfigsResponseResource{}
	var broker *kmsg.DescribeConfigsResponseResource
	for i := range resp.(*kmsg.DescribeConfigsResponse).Resources {
		r := &resp.(*kmsg.DescribeConfigsResponse).Resources[i]
		switch {
		case r.ResourceType == kmsg.ConfigResourceTypeTopic:
			byTopic[r.ResourceName] = r
		case r.ResourceType == kmsg.ConfigResourceTypeBroker && r.ResourceName == brokerName:
			broker = r
		}
	}
	for _, t := range topics {
		tr := byTopic[t]
		if tr != nil && tr.ErrorCode == kerr.UnknownTopicOrPartition.Code {
			unknown[t] = fmt.Sprintf("broker %s does not know the topic (%s)", addr, kerr.UnknownTopicOrPartition)
			continue
		}
		n, src, err := resolveMinISR(t, tr, broker)
		if err != nil {
			return err
		}
		mins[t] = minISR{n, src}
		delete(unknown, t)
	}
	return nil
}

// metadata sends a fresh Metadata request, for all topics or for none (brokers
// only), to any broker (Hedge at once), and remembers the brokers it lists.
func (c *Client) metadata(ctx context.Context, allTopics bool) (string, *kmsg.MetadataResponse, error) {
	addr, resp, err := c.first(ctx, func() kmsg.Request {
		req := kmsg.NewPtrMetadataRequest()
		if !allTopics {
			req.Topics = []kmsg.MetadataRequestTopic{} // empty, not nil: no topics
		}
		return req
	})
	if err != nil {
		return "", nil, fmt.Errorf("requesting Kafka metadata: %w", err)
	}
	meta := resp.(*kmsg.MetadataResponse)
	if err := kerr.ErrorForCode(meta.ErrorCode); err != nil {
		return "", nil, fmt.Errorf("requesting Kafka metadata from %s: %w", addr, err)
	}
	c.learn(meta)
	return addr, meta, nil
}

// learn remembers the brokers of a Metadata answer.
func (c *Client) learn(meta *kmsg.MetadataResponse) {
	if len(meta.Brokers) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.brokers = brokerAddrs(meta)
}

// brokerAddrs maps a Metadata answer's node ids to their host:port.
func brokerAddrs(meta *kmsg.MetadataResponse) map[int32]string {
	out := make(map[int32]string, len(meta.Brokers))
	for _, b := range meta.Brokers {
		out[b.NodeID] = fmt.Sprintf("%s:%d", b.Host, b.Port)
	}
	return out
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

// topicsOf lists the distinct topics of parts, which are sorted by topic.
func topicsOf(parts []Partition) []string {
	var topics []string
	for _, p := range parts {
		if len(topics) == 0 || topics[len(topics)-1] != p.Topic {
			topics = append(topics, p.Topic)
		}
	}
	return topics
}

// isrMembers lists, ascending, leaving and every ISR member of the partitions that
// leaving replicates.
func isrMembers(parts []Partition, leaving int32) []int32 {
	ids := []int32{leaving}
	for _, p := range parts {
		if !slices.Contains(p.Replicas, leaving) {
			continue
		}
		for _, id := range p.ISR {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
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
	// A large cluster has tens of thousands of partitions: the topics are put in order
	// by name and each topic's partitions by number (instead of sorting the partitions
	// themselves), and all replica and ISR ids share one allocation, each partition's
	// lists being capped sub-slices of it (appending to one copies it rather than
	// overwriting its neighbour).
	topics := make([]int, 0, len(meta.Topics)) // indices into meta.Topics
	nparts, nids := 0, 0
	for i, t := range meta.Topics {
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			if errors.Is(err, kerr.UnknownTopicOrPartition) {
				continue
			}
			return nil, fmt.Errorf("metadata of topic %q: %w", topicName(&t), err)
		}
		topics = append(topics, i)
		nparts += len(t.Partitions)
		for _, p := range t.Partitions {
			nids += len(p.Replicas) + len(p.ISR)
		}
	}
	slices.SortStableFunc(topics, func(a, b int) int { return strings.Compare(topicName(&meta.Topics[a]), topicName(&meta.Topics[b])) })
	parts := make([]Partition, 0, nparts)
	ids := make([]int32, 0, nids)
	clone := func(s []int32) []int32 {
		if s == nil {
			return nil
		}
		at := len(ids)
		ids = append(ids, s...)
		return ids[at:len(ids):len(ids)]
	}
	var order []int // a topic's partitions, by number
	for _, i := range topics {
		t := &meta.Topics[i]
		name := topicName(t)
		order = order[:0]
		for j := range t.Partitions {
			order = append(order, j)
		}
		slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(t.Partitions[a].Partition, t.Partitions[b].Partition) })
		for _, j := range order {
			p := &t.Partitions[j]
			parts = append(parts, Partition{
				Topic: name, Partition: p.Partition, Leader: p.Leader,
				Replicas: clone(p.Replicas), ISR: clone(p.ISR),
			})
		}
	}
	return parts, nil
}

func topicName(t *kmsg.MetadataResponseTopic) string {
	if t.Topic != nil {
		return *t.Topic
	}
	return ""
}

func sortPartitions(parts []Partition) { slices.SortFunc(parts, comparePartitions) }

// comparePartitions orders partitions by topic, then partition number.
func comparePartitions(a, b Partition) int {
	if c := strings.Compare(a.Topic, b.Topic); c != 0 {
		return c
	}
	return cmp.Compare(a.Partition, b.Partition)
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
//     topic override, MinISRCluster for the cluster-wide dynamic default,
//     MinISRDefault for Kafka's default, MinISRBroker otherwise;
//   - else the broker answered with the key: that value and its source (never
//     MinISRTopic: a broker resource has no topic-level source);
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
		case kmsg.ConfigSourceDynamicDefaultBrokerConfig:
			return n, MinISRCluster, true, nil
		case kmsg.ConfigSourceDefaultConfig:
			return n, MinISRDefault, true, nil
		default:
			return n, MinISRBroker, true, nil
		}
	}
	return 0, "", false, nil
}
