package dns

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// Record is one A record slotkeeper wants in the zone.
type Record struct {
	Name string   // fully qualified, lower case, with the trailing dot
	TTL  int64    // seconds
	IPs  []string // sorted, distinct
}

// Records are the records slotkeeper wants, by name.
type Records map[string]Record

// Holder is what EC2, and the event being handled if any, say about a slot's holder.
type Holder struct {
	// State is the instance state that counts: EC2's, unless the event says the
	// instance is on its way down (see effectiveState); slot.Gone when unknown.
	State string
	// IP is the instance's primary private IP as EC2 reports it; "" when unknown.
	IP string
}

// Names are the record names of one cluster.
type Names struct {
	zone      string          // the DNS name, lower case, with the trailing dot
	bootstrap string          // bootstrap.<zone>
	brokers   []string        // broker-<slot>.<zone>, by slot
	owned     map[string]bool // every name above
}

// NewNames returns the record names of cfg's cluster: broker-<slot>.<name>. for every
// slot below cfg.SlotCount, and bootstrap.<name>.
func NewNames(cfg config.Config) Names {
	n := Names{zone: fqdn(cfg.DNS.Name), owned: map[string]bool{}}
	n.bootstrap = "bootstrap." + n.zone
	n.owned[n.bootstrap] = true
	for s := 0; s < cfg.SlotCount; s++ {
		name := "broker-" + strconv.Itoa(s) + "." + n.zone
		n.brokers = append(n.brokers, name)
		n.owned[name] = true
	}
	return n
}

// Broker returns the name of slot s's record.
func (n Names) Broker(s int) string { return n.brokers[s] }

// Bootstrap returns the name of the bootstrap record.
func (n Names) Bootstrap() string { return n.bootstrap }

// Owns reports whether name (any case, with or without the trailing dot) is one of
// the cluster's record names. Only A records at these names are ever changed.
func (n Names) Owns(name string) bool { return n.owned[fqdn(name)] }

// fqdn returns name in lower case with exactly one trailing dot.
func fqdn(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) + "." }

// Desired returns the records the cluster should have, given its leases (absent slots
// were never claimed) and what EC2 says about the holders of bound slots (absent
// holder = unknown to EC2, slot.Gone).
//
// broker-<slot>: the slot's address, for as long as the slot has one.
//   - ENI mode: the IP of the slot's ENI (recorded in the lease at bind), fixed for
//     the slot's life, so the record stays whatever the lease state.
//   - Instance mode: for a bound slot, the holder's primary private IP as EC2 reports
//     it now (falling back to the one recorded at bind); for a slot that is not bound
//     (claimed, draining, free), the last holder's IP as recorded at bind, until the
//     next holder binds. The record is kept, not deleted, because a deleted name is
//     negatively cached by resolvers for up to the zone's SOA TTL (900 s by default),
//     which would keep the name unresolvable well after the replacement is bound,
//     whereas a changed record is picked up within its TTL. While no broker holds the
//     slot the old address answers nothing or (should EC2 have reused it) something
//     that is not that node, which Kafka clients and the controller quorum already
//     treat as an unreachable broker; new clients are not sent there, because the
//     slot has already left the bootstrap record.
//   - A slot that has never been bound has no address and no record.
//
// bootstrap: the addresses of the bound slots whose holder is running, at most
// MaxBootstrapValues of them (those of the lowest slots). A slot leaves it as soon as
// it is draining, free or claimed, or its holder is stopping, stopped, shutting down,
// terminated or gone, even while its lease is still bound. With no such slot there is
// no bootstrap record (Route 53 has no empty A record).
func Desired(cfg config.Config, leases []lease.Lease, holders map[string]Holder) Records {
	names := NewNames(cfg)
	want := Records{}
	type member struct {
		slot int
		ip   string
	}
	var members []member
	for _, l := range leases {
		if l.Slot < 0 || l.Slot >= cfg.SlotCount {
			continue // not a slot of this configuration
		}
		ip := l.IP
		h, known := holders[l.Holder]
		if !cfg.ENI && l.State == lease.Bound && known && h.IP != "" {
			ip = h.IP
		}
		if ip == "" {
			continue // never bound: no address yet
		}
		want[names.Broker(l.Slot)] = newRecord(names.Broker(l.Slot), cfg.DNS.TTL, ip)
		if l.State == lease.Bound && known && h.State == slot.Running {
			members = append(members, member{l.Slot, ip})
		}
	}
	slices.SortFunc(members, func(a, b member) int { return a.slot - b.slot })
	var bootstrap []string
	for _, m := range members[:min(len(members), MaxBootstrapValues)] {
		bootstrap = append(bootstrap, m.ip)
	}
	if len(bootstrap) > 0 {
		want[names.Bootstrap()] = newRecord(names.Bootstrap(), cfg.DNS.TTL, bootstrap...)
	}
	return want
}

func newRecord(name string, ttl int64, ips ...string) Record {
	ips = slices.Clone(ips)
	slices.Sort(ips)
	return Record{Name: name, TTL: ttl, IPs: slices.Compact(ips)}
}

// effectiveState combines an instance's EC2 state with the state an event reported
// for it ("" when no event is being handled). An event saying the instance is going
// down wins over EC2, whose view can lag the event; otherwise EC2's state, which is
// never older than the event, counts. A late "stopping" delivered after a restart
// thus takes the slot out of bootstrap until the next "running" event or reconcile
// puts it back: the safe error.
func effectiveState(ec2State, eventState string) string {
	if eventState != "" && eventState != slot.Pending && eventState != slot.Running {
		return eventState
	}
	return ec2State
}

// Diff returns the changes that make the zone's records have (the A records at owned
// names, as read) equal to want: an UPSERT for a record missing or different, a
// DELETE, with the values as read, for a record not wanted. Records that already
// match get no change. Changes are ordered by name.
func Diff(want Records, have map[string]types.ResourceRecordSet) []types.Change {
	var changes []types.Change
	for name, w := range want {
		if h, ok := have[name]; ok && matches(w, h) {
			continue
		}
		changes = append(changes, types.Change{Action: types.ChangeActionUpsert, ResourceRecordSet: w.set()})
	}
	for name, h := range have {
		if _, ok := want[name]; !ok {
			rrs := h // Route 53 deletes only a record given exactly as it is
			changes = append(changes, types.Change{Action: types.ChangeActionDelete, ResourceRecordSet: &rrs})
		}
	}
	slices.SortFunc(changes, func(a, b types.Change) int {
		return strings.Compare(aws.ToString(a.ResourceRecordSet.Name), aws.ToString(b.ResourceRecordSet.Name))
	})
	return changes
}

// set returns the record as a Route 53 record set.
func (w Record) set() *types.ResourceRecordSet {
	rrs := make([]types.ResourceRecord, len(w.IPs))
	for i, ip := range w.IPs {
		rrs[i] = types.ResourceRecord{Value: aws.String(ip)}
	}
	return &types.ResourceRecordSet{Name: aws.String(w.Name), Type: types.RRTypeA, TTL: aws.Int64(w.TTL), ResourceRecords: rrs}
}

// matches reports whether the record as read is the wanted one: a plain (not alias)
// A record with the wanted TTL and the same set of values.
func matches(w Record, h types.ResourceRecordSet) bool {
	if h.AliasTarget != nil || aws.ToInt64(h.TTL) != w.TTL {
		return false
	}
	return slices.Equal(values(h), w.IPs)
}

// values returns the record's values, sorted and distinct.
func values(h types.ResourceRecordSet) []string {
	var v []string
	for _, r := range h.ResourceRecords {
		v = append(v, aws.ToString(r.Value))
	}
	slices.Sort(v)
	return slices.Compact(v)
}

// MaxBootstrapValues bounds the bootstrap record. Route 53 takes at most 1,000 record
// values in one change request, an UPSERT's counting twice, so one record of more than
// 500 values could never be written; clients need only a few addresses to bootstrap.
const MaxBootstrapValues = 400

// maxBatchValues is Route 53's limit on the record values in one change request,
// where an UPSERT's values count twice.
const maxBatchValues = 1000

// Batches splits changes into change requests within Route 53's size limit. Up to a
// few hundred slots that is always one request, so an update is atomic.
func Batches(changes []types.Change) [][]types.Change {
	var out [][]types.Change
	var cur []types.Change
	n := 0
	for _, c := range changes {
		cost := len(c.ResourceRecordSet.ResourceRecords)
		if c.Action == types.ChangeActionUpsert {
			cost *= 2
		}
		if len(cur) > 0 && n+cost > maxBatchValues {
			out, cur, n = append(out, cur), nil, 0
		}
		cur, n = append(cur, c), n+cost
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// describe renders a change for the log: "UPSERT broker-1.kafka.example. 60 [10.0.2.7]".
func describe(c types.Change) string {
	r := c.ResourceRecordSet
	if r.AliasTarget != nil {
		return fmt.Sprintf("%s %s alias %s", c.Action, aws.ToString(r.Name), aws.ToString(r.AliasTarget.DNSName))
	}
	return fmt.Sprintf("%s %s %d %v", c.Action, aws.ToString(r.Name), aws.ToInt64(r.TTL), values(*r))
}
