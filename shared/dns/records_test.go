package dns

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

func testConfig(eni bool) config.Config {
	return config.Config{
		Cluster: "kafka-prod", SlotCount: 3, ENI: eni,
		DNS: config.DNSConfig{HostedZoneID: "Z1", Name: "Kafka.Example.", TTL: 60},
	}
}

func bound(s int, holder, ip string) lease.Lease {
	return lease.Lease{Slot: s, State: lease.Bound, Holder: holder, IP: ip}
}

func withState(l lease.Lease, st lease.State) lease.Lease {
	l.State = st
	if st == lease.Free {
		l.LastHolder, l.Holder = l.Holder, ""
	}
	return l
}

func TestDesired(t *testing.T) {
	running := func(ip string) Holder { return Holder{State: slot.Running, IP: ip} }
	three := []lease.Lease{bound(0, "i-a", "10.0.1.10"), bound(1, "i-b", "10.0.2.10"), bound(2, "i-c", "10.0.3.10")}
	allRunning := map[string]Holder{"i-a": running("10.0.1.10"), "i-b": running("10.0.2.10"), "i-c": running("10.0.3.10")}
	tests := []struct {
		name      string
		eni       bool
		leases    []lease.Lease
		holders   map[string]Holder
		brokers   map[int]string // slot -> IP; absent = no record
		bootstrap []string       // nil = no record
	}{
		{"no leases", true, nil, nil, map[int]string{}, nil},
		{"three bound and running", true, three, allRunning,
			map[int]string{0: "10.0.1.10", 1: "10.0.2.10", 2: "10.0.3.10"}, []string{"10.0.1.10", "10.0.2.10", "10.0.3.10"}},
		{"draining slot leaves bootstrap, keeps its name", true,
			[]lease.Lease{three[0], withState(three[1], lease.Draining), three[2]}, allRunning,
			map[int]string{0: "10.0.1.10", 1: "10.0.2.10", 2: "10.0.3.10"}, []string{"10.0.1.10", "10.0.3.10"}},
		{"free slot keeps its ENI name", true,
			[]lease.Lease{three[0], withState(three[1], lease.Free), three[2]}, allRunning,
			map[int]string{0: "10.0.1.10", 1: "10.0.2.10", 2: "10.0.3.10"}, []string{"10.0.1.10", "10.0.3.10"}},
		{"claimed slot is not in bootstrap", true,
			[]lease.Lease{withState(three[0], lease.Claimed)}, allRunning, map[int]string{0: "10.0.1.10"}, nil},
		{"bound, holder stopping", true, three,
			map[string]Holder{"i-a": running("10.0.1.10"), "i-b": {State: slot.Stopping, IP: "10.0.2.10"}, "i-c": running("10.0.3.10")},
			map[int]string{0: "10.0.1.10", 1: "10.0.2.10", 2: "10.0.3.10"}, []string{"10.0.1.10", "10.0.3.10"}},
		{"bound, holder terminated or unknown", true, three,
			map[string]Holder{"i-a": {State: slot.Terminated}},
			map[int]string{0: "10.0.1.10", 1: "10.0.2.10", 2: "10.0.3.10"}, nil},
		{"bound, holder pending (restarting)", true, three[:1], map[string]Holder{"i-a": {State: slot.Pending, IP: "10.0.1.10"}},
			map[int]string{0: "10.0.1.10"}, nil},
		{"never bound: no name", true, []lease.Lease{{Slot: 2, State: lease.Claimed, Holder: "i-c"}}, allRunning, map[int]string{}, nil},
		{"slot beyond the slot count is not ours", true, []lease.Lease{bound(7, "i-a", "10.0.1.10")}, allRunning, map[int]string{}, nil},
		{"instance mode: bound slot follows the holder's current IP", false,
			[]lease.Lease{bound(0, "i-a", "10.0.1.99")}, map[string]Holder{"i-a": running("10.0.1.10")},
			map[int]string{0: "10.0.1.10"}, []string{"10.0.1.10"}},
		{"ENI mode: the lease's IP wins over the holder's primary IP", true,
			[]lease.Lease{bound(0, "i-a", "10.0.1.99")}, map[string]Holder{"i-a": running("10.0.1.10")},
			map[int]string{0: "10.0.1.99"}, []string{"10.0.1.99"}},
		{"instance mode: holder unknown to EC2 keeps the recorded IP", false,
			[]lease.Lease{bound(0, "i-a", "10.0.1.99")}, nil, map[int]string{0: "10.0.1.99"}, nil},
		{"instance mode: free slot keeps the last holder's IP", false,
			[]lease.Lease{withState(bound(0, "i-a", "10.0.1.99"), lease.Free)}, nil, map[int]string{0: "10.0.1.99"}, nil},
		{"instance mode: claimed by a new holder keeps the old IP until bind", false,
			[]lease.Lease{{Slot: 0, State: lease.Claimed, Holder: "i-new", IP: "10.0.1.99"}}, map[string]Holder{"i-new": running("10.0.1.50")},
			map[int]string{0: "10.0.1.99"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(tt.eni)
			got := Desired(cfg, tt.leases, tt.holders)
			want := Records{}
			for s, ip := range tt.brokers {
				name := fmt.Sprintf("broker-%d.kafka.example.", s)
				want[name] = Record{Name: name, TTL: 60, IPs: []string{ip}}
			}
			if tt.bootstrap != nil {
				want["bootstrap.kafka.example."] = Record{Name: "bootstrap.kafka.example.", TTL: 60, IPs: tt.bootstrap}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Desired =\n%v\nwant\n%v", got, want)
			}
		})
	}
}

func TestEffectiveState(t *testing.T) {
	tests := []struct{ ec2, event, want string }{
		{slot.Running, "", slot.Running},
		{slot.Running, slot.Stopping, slot.Stopping},         // EC2 lags the event
		{slot.Running, slot.ShuttingDown, slot.ShuttingDown}, // EC2 lags the event
		{slot.Running, slot.Terminated, slot.Terminated},
		{slot.Terminated, slot.Running, slot.Terminated}, // a late "running": EC2 is newer
		{slot.Stopped, slot.Running, slot.Stopped},
		{slot.Running, slot.Running, slot.Running},
	}
	for _, tt := range tests {
		if got := effectiveState(tt.ec2, tt.event); got != tt.want {
			t.Errorf("effectiveState(%q, %q) = %q, want %q", tt.ec2, tt.event, got, tt.want)
		}
	}
}

func TestNamesOwns(t *testing.T) {
	n := NewNames(testConfig(true))
	tests := []struct {
		name string
		want bool
	}{
		{"broker-0.kafka.example.", true},
		{"broker-2.kafka.example", true},
		{"BROKER-1.Kafka.Example.", true},
		{"bootstrap.kafka.example.", true},
		{"broker-3.kafka.example.", false}, // beyond SLOT_COUNT
		{"broker-01.kafka.example.", false},
		{"broker--1.kafka.example.", false},
		{"other.kafka.example.", false},
		{"kafka.example.", false},
		{"broker-0.kafka.example.com.", false},
		{"x.broker-0.kafka.example.", false},
	}
	for _, tt := range tests {
		if got := n.Owns(tt.name); got != tt.want {
			t.Errorf("Owns(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
	if n.Broker(1) != "broker-1.kafka.example." || n.Bootstrap() != "bootstrap.kafka.example." {
		t.Errorf("names %q %q", n.Broker(1), n.Bootstrap())
	}
}

func rrset(name string, ttl int64, ips ...string) types.ResourceRecordSet {
	r := types.ResourceRecordSet{Name: aws.String(name), Type: types.RRTypeA, TTL: aws.Int64(ttl)}
	for _, ip := range ips {
		r.ResourceRecords = append(r.ResourceRecords, types.ResourceRecord{Value: aws.String(ip)})
	}
	return r
}

func TestDiff(t *testing.T) {
	want := Records{
		"broker-0.k.":  {Name: "broker-0.k.", TTL: 60, IPs: []string{"10.0.0.1"}},
		"bootstrap.k.": {Name: "bootstrap.k.", TTL: 60, IPs: []string{"10.0.0.1", "10.0.0.2"}},
	}
	alias := rrset("broker-0.k.", 0)
	alias.TTL, alias.AliasTarget = nil, &types.AliasTarget{DNSName: aws.String("elb.example.")}
	tests := []struct {
		name string
		have map[string]types.ResourceRecordSet
		want []string // describe() of each change
	}{
		{"all missing", nil, []string{"UPSERT bootstrap.k. 60 [10.0.0.1 10.0.0.2]", "UPSERT broker-0.k. 60 [10.0.0.1]"}},
		{"in step, values in another order", map[string]types.ResourceRecordSet{
			"broker-0.k.": rrset("broker-0.k.", 60, "10.0.0.1"), "bootstrap.k.": rrset("bootstrap.k.", 60, "10.0.0.2", "10.0.0.1"),
		}, nil},
		{"wrong value, wrong TTL, stale record", map[string]types.ResourceRecordSet{
			"broker-0.k.": rrset("broker-0.k.", 60, "10.9.9.9"), "bootstrap.k.": rrset("bootstrap.k.", 300, "10.0.0.1", "10.0.0.2"),
			"broker-1.k.": rrset("broker-1.k.", 60, "10.0.0.7"),
		}, []string{"UPSERT bootstrap.k. 60 [10.0.0.1 10.0.0.2]", "UPSERT broker-0.k. 60 [10.0.0.1]", "DELETE broker-1.k. 60 [10.0.0.7]"}},
		{"an alias at our name is replaced", map[string]types.ResourceRecordSet{
			"broker-0.k.": alias, "bootstrap.k.": rrset("bootstrap.k.", 60, "10.0.0.1", "10.0.0.2"),
		}, []string{"UPSERT broker-0.k. 60 [10.0.0.1]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, c := range Diff(want, tt.have) {
				got = append(got, describe(c))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Diff = %q, want %q", got, tt.want)
			}
		})
	}
	// A DELETE carries the record exactly as read: Route 53 deletes nothing else.
	stale := rrset("broker-1.k.", 42, "10.0.0.7", "10.0.0.8")
	d := Diff(Records{}, map[string]types.ResourceRecordSet{"broker-1.k.": stale})
	if len(d) != 1 || d[0].Action != types.ChangeActionDelete || !reflect.DeepEqual(*d[0].ResourceRecordSet, stale) {
		t.Errorf("DELETE = %+v, want the record as read", d)
	}
}

func TestBatches(t *testing.T) {
	upsert := func(n int) types.Change {
		ips := make([]string, n)
		for i := range ips {
			ips[i] = fmt.Sprintf("10.0.%d.%d", i/250, i%250)
		}
		r := rrset("x.", 60, ips...)
		return types.Change{Action: types.ChangeActionUpsert, ResourceRecordSet: &r}
	}
	del := func() types.Change {
		r := rrset("y.", 60, "10.0.0.1")
		return types.Change{Action: types.ChangeActionDelete, ResourceRecordSet: &r}
	}
	repeat := func(c types.Change, n int) []types.Change {
		out := make([]types.Change, n)
		for i := range out {
			out[i] = c
		}
		return out
	}
	tests := []struct {
		name    string
		changes []types.Change
		sizes   []int
	}{
		{"none", nil, nil},
		{"a cluster's worth", append(repeat(upsert(1), 30), upsert(30)), []int{31}},
		{"500 upserts fill one request", repeat(upsert(1), 500), []int{500}},
		{"501 upserts need two", repeat(upsert(1), 501), []int{500, 1}},
		{"deletes count once", repeat(del(), 1000), []int{1000}},
		{"cut where the next change would pass the limit", []types.Change{upsert(2), upsert(499), upsert(1)}, []int{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sizes []int
			total := 0
			for _, b := range Batches(tt.changes) {
				sizes = append(sizes, len(b))
				total += len(b)
			}
			if !slices.Equal(sizes, tt.sizes) || total != len(tt.changes) {
				t.Errorf("batch sizes %v, want %v", sizes, tt.sizes)
			}
		})
	}
}

func TestSortKey(t *testing.T) {
	// The listing stops at the first name whose key is past the DNS name's subtree;
	// names inside it, or sorted before it by either ordering, must not stop it.
	prefix := sortKey("kafka.example.")
	tests := []struct {
		name string
		past bool
	}{
		{"kafka.example.", false},
		{"broker-0.kafka.example.", false},
		{"bootstrap.kafka.example.", false},
		{"a.b.broker-0.kafka.example.", false},
		{"kafka-other.example.", false}, // '-' sorts before '.'
		{"example.", false},
		{"kafka0.example.", true},
		{"kafkb.example.", true},
		{"zz.example.", true},
		{"examplez.", true},
	}
	for _, tt := range tests {
		k := sortKey(tt.name)
		if past := k > prefix && !strings.HasPrefix(k, prefix); past != tt.past {
			t.Errorf("%s (key %s): past = %v, want %v", tt.name, k, past, tt.past)
		}
	}
}

// At 1,000 bound slots the bootstrap record holds the addresses of the lowest
// MaxBootstrapValues slots, and every change request the full sync needs stays within
// Route 53's 1,000 values (an UPSERT's counting twice): one record of more than 500
// values could never be written.
func TestBootstrapAtAThousandSlots(t *testing.T) {
	cfg := testConfig(true)
	cfg.SlotCount = 1000
	var leases []lease.Lease
	holders := map[string]Holder{}
	for s := 999; s >= 0; s-- { // any order: the lowest slots are kept
		ip := fmt.Sprintf("10.%d.%d.%d", s%3, s/250, s%250+1)
		id := fmt.Sprintf("i-%04d", s)
		leases = append(leases, bound(s, id, ip))
		holders[id] = Holder{State: slot.Running, IP: ip}
	}
	want := Desired(cfg, leases, holders)
	boot := want["bootstrap.kafka.example."]
	if len(boot.IPs) != MaxBootstrapValues {
		t.Fatalf("bootstrap has %d values, want %d", len(boot.IPs), MaxBootstrapValues)
	}
	for s := range MaxBootstrapValues {
		if ip := fmt.Sprintf("10.%d.%d.%d", s%3, s/250, s%250+1); !slices.Contains(boot.IPs, ip) {
			t.Fatalf("bootstrap lacks slot %d's %s", s, ip)
		}
	}
	changes := Diff(want, nil)
	for i, b := range Batches(changes) {
		n := 0
		for _, c := range b {
			k := len(c.ResourceRecordSet.ResourceRecords)
			if c.Action == types.ChangeActionUpsert {
				k *= 2
			}
			n += k
		}
		if n > maxBatchValues {
			t.Errorf("request %d carries %d values, Route 53 takes %d", i, n, maxBatchValues)
		}
	}
	t.Logf("1000 bound slots: bootstrap %d values, %d changes in %d requests", len(boot.IPs), len(changes), len(Batches(changes)))
}
