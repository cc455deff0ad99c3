package deploy_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/slotkeeper/slotkeeper/test/realkafka"
	"github.com/slotkeeper/slotkeeper/test/realkafka/realkafkatest"
)

// userDataSlot is one slot of a cluster run from the bootstrap's own configuration.
type userDataSlot struct {
	slot, node int
	az         string
	mount      string            // SLOTKEEPER_DATA_MOUNT
	generated  string            // kafka_properties' output, verbatim
	props      map[string]string // as Kafka runs it
	server     *realkafka.Server
}

// The broker user data on Apache Kafka itself: four slots (three combined
// controller+broker, one broker only) get their server.properties from
// broker-bootstrap.sh (instance metadata emulated as in the other tests), formatted
// as the script formats them (kafka-storage format --ignore-formatted with the
// script's cluster id), with one change: the addresses. The script's slots listen
// on 9092/9093 of their own hosts, named broker-<slot>.<dns name>; here they share
// 127.0.0.1, so listeners, advertised.listeners and controller.quorum.voters get
// free loopback ports. Every other line is the script's.
//
// They form one cluster: the first three slots are the controller quorum, every
// broker registers with its slot's AZ as rack, a topic created with the cluster's
// defaults is spread over three racks with the user data's min ISR; a restart with
// the same data directory keeps the node id; a data directory of another node is
// refused, by Kafka and by the script; Kafka warns about none of the settings.
func TestUserDataOnRealKafka(t *testing.T) {
	rt := realkafkatest.Need(t)
	realkafkatest.Lock(t)
	const slots, controllers, base = 4, 3, 100
	azs := []string{"us-east-1a", "us-east-1b", "us-east-1c", "us-east-1a"}
	root := t.TempDir()

	ports, err := realkafka.FreePorts(2 * slots)
	if err != nil {
		t.Fatal(err)
	}
	brokerPort := func(slot int) int { return ports[slot] }
	controllerPort := func(slot int) int { return ports[slots+slot] }
	dnsName := "kafka-prod.internal"
	loopback := func(value string) string {
		for s := range slots {
			host := fmt.Sprintf("broker-%d.%s", s, dnsName)
			value = strings.ReplaceAll(value, host+":9092", fmt.Sprintf("127.0.0.1:%d", brokerPort(s)))
			value = strings.ReplaceAll(value, host+":9093", fmt.Sprintf("127.0.0.1:%d", controllerPort(s)))
		}
		return value
	}

	env := settings(slots, controllers, base)
	clusterID, stderr, err := run(t, env, "", "cluster_id")
	if err != nil {
		t.Fatalf("cluster_id: %v %s", err, stderr)
	}
	clusterID = strings.TrimSpace(clusterID)

	var us []*userDataSlot
	for s := range slots {
		u := &userDataSlot{slot: s, node: base + s, az: azs[s], mount: filepath.Join(root, fmt.Sprintf("slot-%d", s))}
		e := withIMDS(t, env, &imds{items: instance("kafka-prod", s, u.node, u.az)})
		e["SLOTKEEPER_DATA_MOUNT"] = u.mount
		out, stderr, err := run(t, e, "", "check_settings; imds_login; wait_for_slot; kafka_properties")
		if err != nil {
			t.Fatalf("slot %d: %v\n%s", s, err, stderr)
		}
		u.generated = out
		// The only change: the addresses, on the three lines that hold them.
		var lines []string
		for _, line := range strings.Split(out, "\n") {
			k, v, _ := strings.Cut(line, "=")
			switch k {
			case "listeners":
				if s < controllers {
					v = fmt.Sprintf("PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d", brokerPort(s), controllerPort(s))
				} else {
					v = fmt.Sprintf("PLAINTEXT://127.0.0.1:%d", brokerPort(s))
				}
				line = k + "=" + v
			case "advertised.listeners", "controller.quorum.voters":
				line = k + "=" + loopback(v)
			}
			lines = append(lines, line)
		}
		text := strings.Join(lines, "\n")
		u.props = properties(t, text)
		gen := properties(t, out)
		for k := range merged(gen, u.props) {
			if gen[k] != u.props[k] && !slices.Contains([]string{"listeners", "advertised.listeners", "controller.quorum.voters"}, k) {
				t.Fatalf("slot %d: %s changed from %q to %q", s, k, gen[k], u.props[k])
			}
		}
		if strings.Contains(text, dnsName) {
			t.Fatalf("slot %d: a DNS name is left after the loopback rewrite:\n%s", s, text)
		}
		config := filepath.Join(u.mount, "server.properties")
		if err := os.MkdirAll(u.mount, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		u.server = realkafka.NewServer(rt, filepath.Join(u.mount, "logs"), config)
		us = append(us, u)
	}
	t.Logf("slot 3 (broker only), as the script writes it:\n%s", us[3].generated)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, slots)
	for i, u := range us {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = u.server.Format(ctx, clusterID, "--ignore-formatted")
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("slot %d: %v", i, err)
		}
	}
	for _, u := range us {
		if err := u.server.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = u.server.Kill() })
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(fmt.Sprintf("127.0.0.1:%d", brokerPort(0)), fmt.Sprintf("127.0.0.1:%d", brokerPort(3))), kgo.RequestRetries(2))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	meta := waitBrokers(t, ctx, cl, us, []int32{100, 101, 102, 103})
	t.Logf("the %d slots formed a cluster in %s", slots, time.Since(began).Round(time.Millisecond))

	// The controller quorum is the first three slots; the broker-only slot observes.
	q := describeQuorum(t, ctx, cl)
	var voters, observers []int32
	for _, v := range q.CurrentVoters {
		voters = append(voters, v.ReplicaID)
	}
	for _, o := range q.Observers {
		observers = append(observers, o.ReplicaID)
	}
	slices.Sort(voters)
	t.Logf("quorum: leader %d, voters %v, observers %v", q.LeaderID, voters, observers)
	if !slices.Equal(voters, []int32{100, 101, 102}) || !slices.Contains(observers, 103) {
		t.Errorf("voters %v observers %v; want voters [100 101 102] and 103 observing", voters, observers)
	}

	// broker.rack = the slot's AZ.
	for _, b := range meta.Brokers {
		want := azs[b.NodeID-base]
		rack := ""
		if b.Rack != nil {
			rack = *b.Rack
		}
		t.Logf("broker %d at %s:%d, rack %s", b.NodeID, b.Host, b.Port, rack)
		if rack != want {
			t.Errorf("broker %d: rack %q, want its slot's AZ %s", b.NodeID, rack, want)
		}
	}

	// A topic with the cluster's defaults: replication factor and rack spread.
	adm := kadm.NewClient(cl)
	created, err := adm.CreateTopic(ctx, 8, -1, nil, "defaults")
	if err == nil {
		err = created.Err
	}
	if err != nil {
		t.Fatalf("creating a topic with the defaults: %v", err)
	}
	rackOf := map[int32]string{}
	for _, b := range meta.Brokers {
		rackOf[b.NodeID] = *b.Rack
	}
	tds, err := adm.ListTopics(ctx, "defaults")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range tds["defaults"].Partitions.Sorted() {
		racks := map[string]bool{}
		for _, r := range p.Replicas {
			racks[rackOf[r]] = true
		}
		t.Logf("defaults/%d: replicas %v in racks %v", p.Partition, p.Replicas, slices.Sorted(maps.Keys(racks)))
		if len(p.Replicas) != 3 || len(racks) != 3 {
			t.Errorf("defaults/%d: replicas %v over %d racks; want replication factor 3 over 3 racks", p.Partition, p.Replicas, len(racks))
		}
	}
	rc, err := adm.DescribeTopicConfigs(ctx, "defaults")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rc[0].Configs {
		if c.Key == "min.insync.replicas" {
			t.Logf("defaults: min.insync.replicas %s from %s (the user data sets %s)", *c.Value, c.Source, us[0].props["min.insync.replicas"])
			if *c.Value != us[0].props["min.insync.replicas"] {
				t.Errorf("min.insync.replicas %s, want the user data's %s", *c.Value, us[0].props["min.insync.replicas"])
			}
		}
	}

	// Restart with the same data directory: the node id is kept (meta.properties).
	for _, s := range []int{3, 1} {
		u := us[s]
		metaBefore := readMeta(t, u)
		if err := u.server.Stop(2 * time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := u.server.Start(); err != nil {
			t.Fatal(err)
		}
		waitBrokers(t, ctx, cl, us, []int32{100, 101, 102, 103})
		metaAfter := readMeta(t, u)
		t.Logf("slot %d restarted with its data directory: meta.properties node.id %s -> %s, directory.id %s -> %s",
			s, metaBefore["node.id"], metaAfter["node.id"], metaBefore["directory.id"], metaAfter["directory.id"])
		if metaBefore["node.id"] != fmt.Sprint(u.node) || metaAfter["node.id"] != metaBefore["node.id"] || metaAfter["directory.id"] != metaBefore["directory.id"] {
			t.Errorf("slot %d: meta.properties %v before, %v after the restart", s, metaBefore, metaAfter)
		}
	}

	// Another node's data directory: slot 3's volume (node 103) on an instance that
	// is node 104 (a fifth broker-only slot).
	foreign := us[3]
	if err := foreign.server.Stop(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	wrong := maps.Clone(foreign.props)
	wrong["node.id"] = "104"
	wrongConfig := filepath.Join(root, "foreign.properties")
	if err := realkafka.WriteProperties(wrongConfig, wrong); err != nil {
		t.Fatal(err)
	}
	impostor := realkafka.NewServer(rt, filepath.Join(root, "foreign-logs"), wrongConfig)
	if err := impostor.Start(); err != nil {
		t.Fatal(err)
	}
	done, exitErr := impostor.Exited()
	select {
	case <-done:
	case <-time.After(time.Minute):
		_ = impostor.Kill()
		t.Fatalf("Kafka started as node 104 on node 103's data directory")
	}
	refusal := regexp.MustCompile(`(?i)[^\n]*node[^\n]*(103[^\n]*104|104[^\n]*103)[^\n]*`).FindString(impostor.LogTail(200))
	t.Logf("Kafka as node 104 on node 103's data directory: exit %v; %s", exitErr(), strings.TrimSpace(refusal))
	if exitErr() == nil || refusal == "" {
		t.Errorf("Kafka did not refuse another node's data directory (exit %v):\n%s", exitErr(), impostor.LogTail(40))
	}
	e := settings(slots, controllers, base)
	e["SLOTKEEPER_DATA_MOUNT"] = foreign.mount
	_, stderr, err = run(t, e, "", "SLOT=4 NODE_ID=104; check_volume_identity")
	t.Logf("the script on the same volume as slot 4: %v, %s", err, strings.TrimSpace(stderr))
	if err == nil || !strings.Contains(stderr, "node.id=103, but slot 4 is node 104") {
		t.Errorf("check_volume_identity accepted node 103's volume for slot 4: %v %s", err, stderr)
	}

	// Kafka's warnings about the configuration.
	var keys []string
	for k := range us[0].props {
		keys = append(keys, k)
	}
	for k := range us[3].props {
		keys = append(keys, k)
	}
	total := 0
	for _, u := range us {
		all, err := u.server.Warnings()
		if err != nil {
			t.Fatal(err)
		}
		about, _ := u.server.Warnings(append(slices.Clone(keys), "config", "Config")...)
		// A transient error of the controller registration while the quorum forms dumps
		// the registration record, whose listeners=… matches a key: not a warning
		// about the configuration.
		about = slices.DeleteFunc(about, func(l string) bool {
			return strings.Contains(l, "CONTROLLER_REGISTRATION") || strings.Contains(l, "ControllerRegistration")
		})
		total += len(about)
		kinds := map[string]int{} // the other warnings, by message without time and numbers
		for _, l := range all {
			_, msg, _ := strings.Cut(l, "] ")
			kinds[regexp.MustCompile(`[0-9]+`).ReplaceAllString(msg, "N")]++
		}
		t.Logf("slot %d: %d WARN/ERROR lines, %d about the configuration; all of them, by kind: %v", u.slot, len(all), len(about), kinds)
		for _, l := range about {
			t.Errorf("slot %d: Kafka warns: %s", u.slot, l)
		}
	}
	t.Logf("Kafka warnings about the user data's configuration: %d", total)
}

// waitBrokers waits until Metadata lists ids, failing with the logs of a slot whose
// Kafka exited.
func waitBrokers(t *testing.T, ctx context.Context, cl *kgo.Client, us []*userDataSlot, ids []int32) *kmsg.MetadataResponse {
	t.Helper()
	for {
		for _, u := range us {
			done, exit := u.server.Exited()
			select {
			case <-done:
				if exit() != nil || u.server.PID() == 0 {
					t.Fatalf("slot %d's Kafka exited: %v\n%s", u.slot, exit(), u.server.LogTail(40))
				}
			default:
			}
		}
		req := kmsg.NewPtrMetadataRequest()
		req.Topics = []kmsg.MetadataRequestTopic{}
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := req.RequestWith(rctx, cl)
		cancel()
		if err == nil {
			var got []int32
			for _, b := range resp.Brokers {
				got = append(got, b.NodeID)
			}
			slices.Sort(got)
			if slices.Equal(got, ids) {
				return resp
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("brokers %v not registered: %v", ids, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func describeQuorum(t *testing.T, ctx context.Context, cl *kgo.Client) kmsg.DescribeQuorumResponseTopicPartition {
	t.Helper()
	req := kmsg.NewPtrDescribeQuorumRequest()
	tp := kmsg.NewDescribeQuorumRequestTopic()
	tp.Topic = "__cluster_metadata"
	tp.Partitions = append(tp.Partitions, kmsg.NewDescribeQuorumRequestTopicPartition())
	req.Topics = append(req.Topics, tp)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil || len(resp.Topics) == 0 || len(resp.Topics[0].Partitions) == 0 {
		t.Fatalf("DescribeQuorum: %v %+v", err, resp)
	}
	return resp.Topics[0].Partitions[0]
}

// readMeta reads the slot's meta.properties.
func readMeta(t *testing.T, u *userDataSlot) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(u.props["log.dirs"], "meta.properties"))
	if err != nil {
		t.Fatal(err)
	}
	return properties(t, string(b))
}
