package realkafka

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// ClusterID is the KRaft cluster id of clusters Start makes (kafka-storage random-uuid
// form).
const ClusterID = "c2xvdGtlZXBlci10ZXN0cw"

// Failure detection of a Start cluster, in seconds rather than Kafka's defaults (30 s
// lag, 9 s session): a hung follower leaves the ISRs after ReplicaLag, a dead or hung
// broker is fenced (and leaves every ISR) after SessionTimeout.
const (
	ReplicaLag     = 3 * time.Second
	SessionTimeout = 6 * time.Second
)

// Options configure Start.
type Options struct {
	// Nodes is the number of combined broker+controller nodes, ids 0..Nodes-1
	// (default 3); they are all controller voters.
	Nodes int
	// Dir keeps the cluster's files; "" means a new temporary directory, removed by
	// Close.
	Dir string
	// Heap is each node's maximum heap (default DefaultHeap).
	Heap string
	// Config overrides or adds server properties on every node.
	Config map[string]string
	// Format are extra arguments of the storage format, for example
	// []string{"--feature", "eligible.leader.replicas.version=0"}.
	Format []string
	// StartTimeout bounds the start (default 90 s).
	StartTimeout time.Duration
}

// Cluster is a KRaft cluster of combined nodes on loopback.
type Cluster struct {
	// Nodes are the servers, by node id.
	Nodes []*Server
	// Addrs are the brokers' host:port, by node id.
	Addrs []string
	// ControllerAddrs are the controllers' host:port, by node id.
	ControllerAddrs []string
	// Dir holds every node's files (node-<id>/).
	Dir string
	// Started is how long Start took (format included).
	Started time.Duration

	removeDir bool
	closeOnce sync.Once
}

// Properties returns the server properties Start gives node id of a cluster of n
// nodes whose brokers listen on brokerPorts and controllers on controllerPorts.
func Properties(id, n int, dir string, brokerPorts, controllerPorts []int) map[string]string {
	voters := make([]string, n)
	for i := range n {
		voters[i] = fmt.Sprintf("%d@127.0.0.1:%d", i, controllerPorts[i])
	}
	rf := min(3, n)
	return map[string]string{
		"process.roles":                            "broker,controller",
		"node.id":                                  strconv.Itoa(id),
		"controller.quorum.voters":                 strings.Join(voters, ","),
		"controller.listener.names":                "CONTROLLER",
		"listeners":                                fmt.Sprintf("PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d", brokerPorts[id], controllerPorts[id]),
		"advertised.listeners":                     fmt.Sprintf("PLAINTEXT://127.0.0.1:%d", brokerPorts[id]),
		"inter.broker.listener.name":               "PLAINTEXT",
		"listener.security.protocol.map":           "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
		"log.dirs":                                 filepath.Join(dir, "data"),
		"default.replication.factor":               strconv.Itoa(rf),
		"min.insync.replicas":                      strconv.Itoa(max(1, rf-1)),
		"offsets.topic.replication.factor":         strconv.Itoa(rf),
		"offsets.topic.num.partitions":             "3",
		"transaction.state.log.replication.factor": strconv.Itoa(rf),
		"transaction.state.log.min.isr":            strconv.Itoa(max(1, rf-1)),
		"auto.create.topics.enable":                "false",
		"group.initial.rebalance.delay.ms":         "0",
		"replica.lag.time.max.ms":                  strconv.Itoa(int(ReplicaLag.Milliseconds())),
		"broker.session.timeout.ms":                strconv.Itoa(int(SessionTimeout.Milliseconds())),
		"broker.heartbeat.interval.ms":             "500",
		"num.network.threads":                      "2",
		"num.io.threads":                           "2",
		"background.threads":                       "2",
		"num.recovery.threads.per.data.dir":        "1",
		"log.cleaner.threads":                      "1",
	}
}

// Start formats and starts a cluster and waits until every broker is registered.
// On error nothing is left running.
func Start(ctx context.Context, opt Options) (c *Cluster, err error) {
	began := time.Now()
	rt, err := Runtime()
	if err != nil {
		return nil, err
	}
	if opt.Nodes <= 0 {
		opt.Nodes = 3
	}
	if opt.StartTimeout <= 0 {
		opt.StartTimeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opt.StartTimeout)
	defer cancel()
	c = &Cluster{Dir: opt.Dir}
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "slotkeeper-kafka-"); err != nil {
			return nil, err
		}
		c.removeDir = true
	}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	ports, err := FreePorts(2 * opt.Nodes)
	if err != nil {
		return c, err
	}
	brokerPorts, controllerPorts := ports[:opt.Nodes], ports[opt.Nodes:]
	for id := range opt.Nodes {
		dir := filepath.Join(c.Dir, fmt.Sprintf("node-%d", id))
		props := Properties(id, opt.Nodes, dir, brokerPorts, controllerPorts)
		maps.Copy(props, opt.Config)
		s := NewServer(rt, dir, filepath.Join(dir, "server.properties"))
		s.Heap = opt.Heap
		if err := WriteProperties(s.Config, props); err != nil {
			return c, err
		}
		c.Nodes = append(c.Nodes, s)
		c.Addrs = append(c.Addrs, fmt.Sprintf("127.0.0.1:%d", brokerPorts[id]))
		c.ControllerAddrs = append(c.ControllerAddrs, fmt.Sprintf("127.0.0.1:%d", controllerPorts[id]))
	}
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, s := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Format(ctx, ClusterID, opt.Format...)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	for _, s := range c.Nodes {
		if err := s.Start(); err != nil {
			return c, err
		}
	}
	if err := c.WaitRegistered(ctx, c.IDs()...); err != nil {
		return c, err
	}
	c.Started = time.Since(began)
	return c, nil
}

// IDs are the node ids, ascending.
func (c *Cluster) IDs() []int32 {
	ids := make([]int32, len(c.Nodes))
	for i := range c.Nodes {
		ids[i] = int32(i)
	}
	return ids
}

// Bootstrap is the brokers' addresses, comma-separated.
func (c *Cluster) Bootstrap() string { return strings.Join(c.Addrs, ",") }

// Client returns a franz-go client of the cluster for test setup (the caller closes
// it). opts are added to the defaults.
func (c *Cluster) Client(opts ...kgo.Opt) (*kgo.Client, error) {
	return kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.Addrs...), kgo.RequestRetries(2),
		kgo.RetryTimeout(5 * time.Second), kgo.DialTimeout(2 * time.Second)}, opts...)...)
}

// Registered returns the node ids in a fresh Metadata answer of the first broker
// among want (or any) that answers, ascending.
func (c *Cluster) Registered(ctx context.Context) ([]int32, error) {
	var firstErr error
	for i, addr := range c.Addrs {
		if !c.Nodes[i].Running() {
			continue
		}
		ids, err := registered(ctx, addr)
		if err == nil {
			return ids, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = errors.New("no node runs")
	}
	return nil, firstErr
}

// registered asks the broker at addr alone for its broker list.
func registered(ctx context.Context, addr string) ([]int32, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.RequestRetries(0), kgo.DialTimeout(time.Second))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req := kmsg.NewPtrMetadataRequest()
	req.Topics = []kmsg.MetadataRequestTopic{}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return nil, err
	}
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return nil, err
	}
	ids := make([]int32, 0, len(resp.Brokers))
	for _, b := range resp.Brokers {
		ids = append(ids, b.NodeID)
	}
	slices.Sort(ids)
	return ids, nil
}

// WaitRegistered waits until every running broker's Metadata answer lists ids, or
// ctx ends. A node that exits while waited for is an error, with its log.
func (c *Cluster) WaitRegistered(ctx context.Context, ids ...int32) error {
	return c.waitFor(ctx, fmt.Sprintf("brokers %v registered", ids), func(got []int32) bool {
		for _, id := range ids {
			if !slices.Contains(got, id) {
				return false
			}
		}
		return true
	}, ids)
}

// WaitUnregistered waits until no running broker's Metadata answer lists id.
func (c *Cluster) WaitUnregistered(ctx context.Context, id int32) error {
	return c.waitFor(ctx, fmt.Sprintf("broker %d gone from the metadata", id), func(got []int32) bool {
		return !slices.Contains(got, id)
	}, nil)
}

func (c *Cluster) waitFor(ctx context.Context, what string, ok func([]int32) bool, watch []int32) error {
	var last []int32
	var lastErr error
	for {
		for _, id := range watch {
			if int(id) < len(c.Nodes) {
				if s := c.Nodes[id]; !s.Running() {
					_, exit := s.Exited()
					return fmt.Errorf("waiting for %s: node %d is not running (exit: %v)\n%s", what, id, exitText(exit()), s.LogTail(30))
				}
			}
		}
		all := true
		answered := 0
		for i, addr := range c.Addrs {
			if !c.Nodes[i].Running() {
				continue
			}
			got, err := registered(ctx, addr)
			if err != nil {
				lastErr = err
				all = false
				break
			}
			answered++
			last = got
			if !ok(got) {
				all = false
				break
			}
		}
		if all && answered > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s (last broker list %v): %w", what, last, errors.Join(ctx.Err(), lastErr))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Restart starts a stopped or killed node again with its data and waits until it is
// registered.
func (c *Cluster) Restart(ctx context.Context, id int32) error {
	if err := c.Nodes[id].Start(); err != nil {
		return err
	}
	return c.WaitRegistered(ctx, id)
}

// RSS returns every running node's resident set size in bytes, by node id.
func (c *Cluster) RSS() []int64 {
	out := make([]int64, len(c.Nodes))
	for i, s := range c.Nodes {
		out[i] = s.RSS()
	}
	return out
}

// Close kills every node and removes the cluster's directory if Start made it. It is
// safe to call more than once.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		var wg sync.WaitGroup
		for _, s := range c.Nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if s.PID() != 0 {
					_ = s.Signal(syscall.SIGCONT)
					_ = s.Kill()
				}
			}()
		}
		wg.Wait()
		if c.removeDir {
			_ = os.RemoveAll(c.Dir)
		}
	})
}

// The lock of this process: held once, counted per holder.
var held struct {
	sync.Mutex
	f *os.File
	n int
}

// Lock takes an exclusive lock shared by every program that uses the runtime of
// this checkout (a file lock next to the cache), so that test packages running in
// parallel start their clusters one after another rather than crowding the CPU. It
// waits until the lock is free or ctx ends; the returned function releases it.
// Within one process the lock is shared: a second holder does not wait.
func Lock(ctx context.Context) (func(), error) {
	rt, err := Runtime()
	if err != nil {
		return nil, err
	}
	release := func() {
		held.Lock()
		defer held.Unlock()
		if held.n--; held.n == 0 {
			_ = syscall.Flock(int(held.f.Fd()), syscall.LOCK_UN)
			held.f.Close()
			held.f = nil
		}
	}
	held.Lock()
	if held.n > 0 {
		held.n++
		held.Unlock()
		return sync.OnceFunc(release), nil
	}
	held.Unlock()

	path := filepath.Join(filepath.Dir(rt), ".cluster.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	held.Lock()
	defer held.Unlock()
	if held.n > 0 { // another goroutine of this process got there first
		f.Close()
	} else {
		held.f = f
	}
	held.n++
	return sync.OnceFunc(release), nil
}

// exitText describes a process's exit error (nil: status 0).
func exitText(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}
