package slotctl

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// SlotRow is one slot as status and the demo show it.
type SlotRow struct {
	Slot        int    `json:"slot"`
	AZ          string `json:"az,omitempty"`
	NodeID      int    `json:"node_id"`
	State       string `json:"state"` // lease state; "free" for a slot never claimed
	Version     int64  `json:"version"`
	Holder      string `json:"holder,omitempty"`
	HolderState string `json:"holder_state,omitempty"` // EC2 state of the holder; "gone" if unknown
	LastHolder  string `json:"last_holder,omitempty"`
	IP          string `json:"ip,omitempty"`
	ENI         string `json:"eni,omitempty"`
	Volume      string `json:"volume,omitempty"`
	SizeGiB     int32  `json:"size_gib,omitempty"`
	VolumeState string `json:"volume_state,omitempty"` // EC2's; "gone" when the recorded volume no longer exists
	ENIState    string `json:"eni_state,omitempty"`    // EC2's; "gone" when the recorded ENI no longer exists
	// Refused is why the holder's user data refused to start Kafka (its
	// slotkeeper:refused tag); empty when it did not.
	Refused string `json:"refused,omitempty"`
	// DNSName is the slot's record name; DNSValues its A values as Route 53 has them.
	DNSName   string   `json:"dns_name,omitempty"`
	DNSValues []string `json:"dns_values,omitempty"`
	// Registered says whether Kafka lists the slot's broker; nil when Kafka is not asked.
	Registered *bool    `json:"kafka_registered,omitempty"`
	UpdatedAt  string   `json:"updated_at,omitempty"`
	Problems   []string `json:"problems,omitempty"`
}

// KafkaStatus is the cluster's health as Kafka reports it.
type KafkaStatus struct {
	Bootstrap       []string `json:"bootstrap"`
	Error           string   `json:"error,omitempty"`
	Brokers         []int32  `json:"brokers"`
	Partitions      int      `json:"partitions"`
	UnderReplicated int      `json:"under_replicated"`
	Offline         int      `json:"offline"`
}

// DNSStatus compares the zone's records with what the slots call for.
type DNSStatus struct {
	HostedZoneID string   `json:"hosted_zone_id"`
	Name         string   `json:"name"`
	Records      int      `json:"records"`             // the cluster's A records found
	Bootstrap    []string `json:"bootstrap,omitempty"` // the bootstrap record's values
	Drift        []string `json:"drift,omitempty"`     // the changes that would fix the zone
}

// Survey is a cluster's state: every slot, Kafka's health and the DNS records, with
// the problems found.
type Survey struct {
	Cluster   string       `json:"cluster"`
	Table     string       `json:"table"`
	SlotCount int          `json:"slot_count"`
	Slots     []SlotRow    `json:"slots"`
	Kafka     *KafkaStatus `json:"kafka,omitempty"`
	DNS       *DNSStatus   `json:"dns,omitempty"`
	Problems  []string     `json:"problems"`
}

// SurveyOptions tune Inspect.
type SurveyOptions struct {
	// KnownSubnets: cfg.Subnets are real (the AZ column comes from them); otherwise the
	// AZ is taken from the slot's volume or holder.
	KnownSubnets bool
	// Now is the clock, for the age of claims.
	Now time.Time
}

// Inspect reads the cluster's state. AWS failures are returned (as *Error); a Kafka
// that cannot be reached is reported in Survey.Kafka.Error and as a problem.
func Inspect(ctx context.Context, c *Clients, cfg config.Config, opt SurveyOptions) (Survey, error) {
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	sv := Survey{Cluster: cfg.Cluster, Table: cfg.Table, SlotCount: cfg.SlotCount, Problems: []string{}}
	leases, err := lease.NewStore(c.DynamoDB, cfg.Table, cfg.Cluster).List(ctx)
	if err != nil {
		return sv, awsError(err, "reading the lease table "+cfg.Table)
	}
	bySlot := map[int]lease.Lease{}
	for _, l := range leases {
		bySlot[l.Slot] = l
	}

	azOfSubnet := map[string]string{}
	if opt.KnownSubnets {
		m := &resources.Manager{EC2: c.EC2, Cluster: cfg.Cluster}
		if azOfSubnet, err = m.SubnetAZs(ctx, cfg.Subnets); err != nil {
			return sv, awsError(err, "describing the slot subnets")
		}
	}
	vols, err := slotVolumes(ctx, c, bySlot)
	if err != nil {
		return sv, err
	}
	enis, err := slotENIs(ctx, c, bySlot)
	if err != nil {
		return sv, err
	}
	holders, refused, err := describeHolders(ctx, c, leases)
	if err != nil {
		return sv, err
	}

	for s := 0; s < cfg.SlotCount; s++ {
		l, ok := bySlot[s]
		if !ok {
			l = lease.Lease{Slot: s, State: lease.Free}
		}
		row := SlotRow{Slot: s, NodeID: cfg.NodeID(s), State: string(l.State), Version: l.Version, Holder: l.Holder,
			LastHolder: l.LastHolder, IP: l.IP, ENI: l.ENIID, Volume: l.VolumeID, UpdatedAt: l.UpdatedAt}
		slotAZ, subnet := azOfSubnet[cfg.SubnetOf(s)], ""
		if opt.KnownSubnets {
			subnet = cfg.SubnetOf(s)
		}
		if v, ok := vols[s]; ok {
			row.SizeGiB, row.VolumeState, row.AZ = aws.ToInt32(v.Size), string(v.State), aws.ToString(v.AvailabilityZone)
			if c, sl := tagValue(v.Tags, resources.TagCluster), tagValue(v.Tags, resources.TagSlot); c != cfg.Cluster || sl != strconv.Itoa(s) {
				row.Problems = append(row.Problems, fmt.Sprintf("recorded volume %s is tagged %s=%q %s=%q: launches of the slot are refused until it is tagged again",
					l.VolumeID, resources.TagCluster, c, resources.TagSlot, sl))
			}
			switch {
			case slotAZ != "" && aws.ToString(v.AvailabilityZone) != slotAZ:
				row.Problems = append(row.Problems, fmt.Sprintf("recorded volume %s is in %s, not the slot's AZ %s: it can never be attached; launches of the slot abandon until 'slotctl reset %d' forgets it",
					l.VolumeID, aws.ToString(v.AvailabilityZone), slotAZ, s))
			case v.State == ec2types.VolumeStateError:
				row.Problems = append(row.Problems, fmt.Sprintf("recorded volume %s is in the error state: it can never be attached; launches of the slot abandon until 'slotctl reset %d' forgets it", l.VolumeID, s))
			}
		} else if l.VolumeID != "" {
			row.VolumeState = "gone"
			row.Problems = append(row.Problems, recordedGone(lease.KindVolume, l.VolumeID, s))
		}
		if e, ok := enis[s]; ok {
			row.ENIState = string(e.Status)
			if c, sl := tagValue(e.TagSet, resources.TagCluster), tagValue(e.TagSet, resources.TagSlot); c != cfg.Cluster || sl != strconv.Itoa(s) {
				row.Problems = append(row.Problems, fmt.Sprintf("recorded ENI %s is tagged %s=%q %s=%q: launches of the slot are refused until it is tagged again",
					l.ENIID, resources.TagCluster, c, resources.TagSlot, sl))
			}
			if subnet != "" && aws.ToString(e.SubnetId) != subnet {
				row.Problems = append(row.Problems, fmt.Sprintf("recorded ENI %s is in subnet %s, not the slot's subnet %s: it can never be attached; launches of the slot abandon until 'slotctl reset %d' forgets it",
					l.ENIID, aws.ToString(e.SubnetId), subnet, s))
			}
		} else if l.ENIID != "" {
			row.ENIState = "gone"
			row.Problems = append(row.Problems, recordedGone(lease.KindENI, l.ENIID, s))
		}
		if why := refused[l.Holder]; l.State != lease.Free && why != "" {
			row.Refused = why
			row.Problems = append(row.Problems, fmt.Sprintf("holder %s refused to start Kafka: %s", l.Holder, why))
		}
		if az := azOfSubnet[cfg.SubnetOf(s)]; az != "" {
			row.AZ = az
		} else if row.AZ == "" {
			row.AZ = l.HolderAZ
		}
		if l.State != lease.Free {
			row.HolderState = "gone"
			if h, ok := holders[l.Holder]; ok {
				row.HolderState = h.State
			}
		}
		switch {
		case l.State == lease.Bound && row.HolderState != slot.Running:
			row.Problems = append(row.Problems, fmt.Sprintf("holder %s is %s: the reconciler releases the slot on its next run", l.Holder, row.HolderState))
		case l.State == lease.Claimed:
			if at, err := time.Parse(time.RFC3339Nano, l.ClaimedAt); err == nil && opt.Now.Sub(at) > cfg.ClaimTTL {
				row.Problems = append(row.Problems, fmt.Sprintf("claimed %s ago by %s and not bound yet", opt.Now.Sub(at).Round(time.Second), l.Holder))
			}
		}
		sv.Slots = append(sv.Slots, row)
	}

	if cfg.DNS.Enabled() {
		if sv.DNS, err = inspectDNS(ctx, c, cfg, leases, holders, sv.Slots); err != nil {
			return sv, err
		}
	}
	if k, err := c.Kafka(); err != nil {
		return sv, err
	} else if k != nil {
		sv.Kafka = &KafkaStatus{Bootstrap: cfg.Kafka.Bootstrap, Brokers: []int32{}}
		if h, err := k.Health(ctx); err != nil {
			sv.Kafka.Error = err.Error()
		} else {
			sv.Kafka.Brokers, sv.Kafka.Partitions = h.Brokers, h.Partitions
			sv.Kafka.UnderReplicated, sv.Kafka.Offline = h.UnderReplicated, h.Offline
			for i := range sv.Slots {
				r := &sv.Slots[i]
				reg := slices.Contains(h.Brokers, int32(r.NodeID))
				r.Registered = &reg
				if r.State == string(lease.Bound) && !reg {
					r.Problems = append(r.Problems, fmt.Sprintf("broker %d is not registered in Kafka", r.NodeID))
				}
			}
		}
	}

	for _, r := range sv.Slots {
		for _, p := range r.Problems {
			sv.Problems = append(sv.Problems, fmt.Sprintf("slot %d: %s", r.Slot, p))
		}
	}
	if sv.DNS != nil {
		for _, d := range sv.DNS.Drift {
			sv.Problems = append(sv.Problems, "DNS: "+d)
		}
	}
	if k := sv.Kafka; k != nil {
		switch {
		case k.Error != "":
			sv.Problems = append(sv.Problems, "Kafka: "+k.Error)
		default:
			if k.UnderReplicated > 0 {
				sv.Problems = append(sv.Problems, fmt.Sprintf("Kafka: %d under-replicated partition(s)", k.UnderReplicated))
			}
			if k.Offline > 0 {
				sv.Problems = append(sv.Problems, fmt.Sprintf("Kafka: %d offline partition(s)", k.Offline))
			}
		}
	}
	return sv, nil
}

// recordedGone is the problem of a slot whose recorded volume or ENI EC2 does not know.
func recordedGone(kind, id string, s int) string {
	if !resources.WellFormed(kind, id) {
		return fmt.Sprintf("recorded %s %q is not a well-formed %s id: launches of the slot abandon until the lease records the right one or 'slotctl reset %d' forgets it",
			kindLabel(kind), id, kindLabel(kind), s)
	}
	return fmt.Sprintf("recorded %s %s is gone: launches of the slot abandon until 'slotctl reset %d' gives it a new one", kindLabel(kind), id, s)
}

// recordedIDs returns the well-formed ids of kind the leases record, and the slot of
// each (a malformed id is left out: EC2 knows no such resource).
func recordedIDs(leases map[int]lease.Lease, kind string) ([]string, map[string]int) {
	bySlot := map[string]int{}
	var ids []string
	for s, l := range leases {
		if id := l.Recorded(kind); id != "" && resources.WellFormed(kind, id) {
			bySlot[id] = s
			ids = append(ids, id)
		}
	}
	return ids, bySlot
}

// slotENIs returns the ENI each lease records, described by their ids in requests of
// at most 200 (a network-interface-id filter: an id EC2 does not know is simply absent).
func slotENIs(ctx context.Context, c *Clients, leases map[int]lease.Lease) (map[int]ec2types.NetworkInterface, error) {
	out := map[int]ec2types.NetworkInterface{}
	ids, bySlot := recordedIDs(leases, lease.KindENI)
	err := resources.EachNetworkInterface(ctx, c.EC2, ids, func(n ec2types.NetworkInterface) {
		if s, ok := bySlot[aws.ToString(n.NetworkInterfaceId)]; ok {
			out[s] = n
		}
	})
	if err != nil {
		return nil, awsError(err, "describing the slots' recorded ENIs")
	}
	return out, nil
}

// slotVolumes returns the data volume each lease records, described by their ids in
// requests of at most 200 (a volume-id filter: an id EC2 does not know is simply absent).
func slotVolumes(ctx context.Context, c *Clients, leases map[int]lease.Lease) (map[int]ec2types.Volume, error) {
	out := map[int]ec2types.Volume{}
	ids, bySlot := recordedIDs(leases, lease.KindVolume)
	err := resources.EachVolume(ctx, c.EC2, ids, func(v ec2types.Volume) {
		if s, ok := bySlot[aws.ToString(v.VolumeId)]; ok {
			out[s] = v
		}
	})
	if err != nil {
		return nil, awsError(err, "describing the slots' recorded volumes")
	}
	return out, nil
}

func tagValue(tags []ec2types.Tag, key string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

// describeHolders returns EC2's view of every lease holder (absent: unknown to EC2), and
// the reason each holder's user data refused to start Kafka (its slotkeeper:refused
// tag), if any.
func describeHolders(ctx context.Context, c *Clients, leases []lease.Lease) (map[string]dns.Holder, map[string]string, error) {
	var ids []string
	for _, l := range leases {
		if l.State != lease.Free && l.Holder != "" {
			ids = append(ids, l.Holder)
		}
	}
	holders, refused := map[string]dns.Holder{}, map[string]string{}
	err := resources.EachInstance(ctx, c.EC2, ids, func(i ec2types.Instance) { // at most 200 ids a request
		h := dns.Holder{IP: aws.ToString(i.PrivateIpAddress), State: slot.Gone}
		if i.State != nil {
			h.State = string(i.State.Name)
		}
		holders[aws.ToString(i.InstanceId)] = h
		if why := tagValue(i.Tags, resources.TagRefused); why != "" {
			refused[aws.ToString(i.InstanceId)] = why
		}
	})
	if err != nil {
		return nil, nil, awsError(err, "describing the slot holders")
	}
	return holders, refused, nil
}

// inspectDNS reads the cluster's A records and compares them with dns.Desired.
func inspectDNS(ctx context.Context, c *Clients, cfg config.Config, leases []lease.Lease, holders map[string]dns.Holder, rows []SlotRow) (*DNSStatus, error) {
	names := dns.NewNames(cfg)
	have, err := clusterRecords(ctx, c, cfg, names)
	if err != nil {
		return nil, err
	}
	st := &DNSStatus{HostedZoneID: cfg.DNS.HostedZoneID, Name: cfg.DNS.Name, Records: len(have)}
	for i := range rows {
		rows[i].DNSName = strings.TrimSuffix(names.Broker(rows[i].Slot), ".")
		if r, ok := have[names.Broker(rows[i].Slot)]; ok {
			rows[i].DNSValues = recordValues(r)
		}
	}
	if r, ok := have[names.Bootstrap()]; ok {
		st.Bootstrap = recordValues(r)
	}
	for _, ch := range dns.Diff(dns.Desired(cfg, leases, holders), have) {
		r := ch.ResourceRecordSet
		name := strings.TrimSuffix(aws.ToString(r.Name), ".")
		if ch.Action == r53types.ChangeActionDelete {
			st.Drift = append(st.Drift, fmt.Sprintf("%s should not exist (has %v)", name, recordValues(*r)))
			continue
		}
		now := "missing"
		if h, ok := have[strings.ToLower(aws.ToString(r.Name))]; ok {
			now = fmt.Sprintf("%v (TTL %d)", recordValues(h), aws.ToInt64(h.TTL))
		}
		st.Drift = append(st.Drift, fmt.Sprintf("%s is %s, want %v (TTL %d)", name, now, recordValues(*r), aws.ToInt64(r.TTL)))
	}
	return st, nil
}

// clusterRecords returns the A records at the cluster's names, keyed by lower-case
// name with the trailing dot, as dns.Diff expects.
func clusterRecords(ctx context.Context, c *Clients, cfg config.Config, names dns.Names) (map[string]r53types.ResourceRecordSet, error) {
	have := map[string]r53types.ResourceRecordSet{}
	in := &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(cfg.DNS.HostedZoneID)}
	for {
		out, err := c.Route53.ListResourceRecordSets(ctx, in)
		if err != nil {
			return nil, awsError(err, "listing the records of hosted zone "+cfg.DNS.HostedZoneID)
		}
		for _, r := range out.ResourceRecordSets {
			name := strings.ToLower(strings.TrimSuffix(aws.ToString(r.Name), ".")) + "."
			if r.Type == r53types.RRTypeA && r.SetIdentifier == nil && names.Owns(name) {
				have[name] = r
			}
		}
		if !out.IsTruncated {
			return have, nil
		}
		in.StartRecordName, in.StartRecordType, in.StartRecordIdentifier = out.NextRecordName, out.NextRecordType, out.NextRecordIdentifier
	}
}

func recordValues(r r53types.ResourceRecordSet) []string {
	var v []string
	for _, rr := range r.ResourceRecords {
		v = append(v, aws.ToString(rr.Value))
	}
	slices.Sort(v)
	return v
}
