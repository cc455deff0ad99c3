package asgsim

import (
	"maps"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/lease"
)

// TestWantRecords pins the DNS the checker expects: a broker-N record per slot with
// an address, and a bootstrap of the bound slots on running instances, each address
// once. Seed 869 of the campaign had two ENIs of one subnet given the same address by
// moto, and the checker listed it twice where the product (rightly) lists it once.
func TestWantRecords(t *testing.T) {
	r := &run{
		cfg:   config.Config{DNS: config.DNSConfig{Name: "Sim.Kafka.Internal."}},
		insts: map[string]*instance{"i-a": {id: "i-a", ec2: ec2Running}, "i-b": {id: "i-b", ec2: ec2Running}, "i-c": {id: "i-c", ec2: ec2ShuttingDown}},
	}
	for _, tc := range []struct {
		name   string
		leases map[int]lease.Lease
		want   map[string]string
	}{
		{"two slots, one address", map[int]lease.Lease{
			2: {State: lease.Bound, Holder: "i-a", IP: "10.0.3.17"},
			5: {State: lease.Bound, Holder: "i-b", IP: "10.0.3.17"},
		}, map[string]string{
			"broker-2.sim.kafka.internal":  "10.0.3.17",
			"broker-5.sim.kafka.internal":  "10.0.3.17",
			"bootstrap.sim.kafka.internal": "10.0.3.17",
		}},
		{"only bound slots on running instances in bootstrap", map[int]lease.Lease{
			0: {State: lease.Bound, Holder: "i-b", IP: "10.0.2.9"},
			1: {State: lease.Bound, Holder: "i-a", IP: "10.0.1.7"},
			2: {State: lease.Bound, Holder: "i-c", IP: "10.0.3.5"},
			3: {State: lease.Free, IP: "10.0.1.8"},
			4: {State: lease.Free},
		}, map[string]string{
			"broker-0.sim.kafka.internal":  "10.0.2.9",
			"broker-1.sim.kafka.internal":  "10.0.1.7",
			"broker-2.sim.kafka.internal":  "10.0.3.5",
			"broker-3.sim.kafka.internal":  "10.0.1.8",
			"bootstrap.sim.kafka.internal": "10.0.1.7,10.0.2.9",
		}},
		{"no address, no records", map[int]lease.Lease{0: {State: lease.Free}}, map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.wantRecords(&snapshot{leases: tc.leases}); !maps.Equal(got, tc.want) {
				t.Errorf("wantRecords = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestOneAttachmentReading pins how the checker sees a volume's attachments in
// moto, which keeps one attachment per volume and lets an attach of an in-use volume
// replace it: the instances' block device mappings count too, a terminated instance
// does not, and a mapping that a second read of the instances no longer shows (a
// detach and attach elsewhere between the reads) does not.
func TestOneAttachmentReading(t *testing.T) {
	inst := func(id string, state ec2types.InstanceStateName, vols ...string) ec2types.Instance {
		i := ec2types.Instance{InstanceId: aws.String(id), State: &ec2types.InstanceState{Name: state}}
		for _, v := range vols {
			i.BlockDeviceMappings = append(i.BlockDeviceMappings, ec2types.InstanceBlockDeviceMapping{
				DeviceName: aws.String("/dev/sdf"), Ebs: &ec2types.EbsInstanceBlockDevice{VolumeId: aws.String(v)}})
		}
		return i
	}
	read := func(is ...ec2types.Instance) *ec2.DescribeInstancesOutput {
		return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{{Instances: is}}}
	}
	vol := func(on ...string) ec2types.Volume {
		v := ec2types.Volume{VolumeId: aws.String("vol-1")}
		for _, i := range on {
			v.Attachments = append(v.Attachments, ec2types.VolumeAttachment{InstanceId: aws.String(i), State: ec2types.VolumeAttachmentStateAttached})
		}
		return v
	}
	for _, tc := range []struct {
		name          string
		first, second *ec2.DescribeInstancesOutput // second nil: no second read
		v             ec2types.Volume
		want          []string
	}{
		{"attached to one", read(inst("i-a", "running", "vol-1")), nil, vol("i-a"), []string{"i-a"}},
		{"moto moved it: the first keeps it in its mappings",
			read(inst("i-a", "running", "vol-1"), inst("i-b", "running", "vol-1")), read(inst("i-a", "running", "vol-1"), inst("i-b", "running", "vol-1")),
			vol("i-b"), []string{"i-a", "i-b"}},
		{"moved between the reads: the second read no longer shows the first",
			read(inst("i-a", "running", "vol-1"), inst("i-b", "running")), read(inst("i-a", "running"), inst("i-b", "running", "vol-1")),
			vol("i-b"), []string{"i-b"}},
		{"attached to a terminated instance (AWS refuses that attach)",
			read(inst("i-a", "terminated", "vol-1"), inst("i-b", "running", "vol-1")), read(inst("i-a", "terminated", "vol-1"), inst("i-b", "running", "vol-1")),
			vol("i-a"), []string{"i-b"}},
		{"shutting down still counts",
			read(inst("i-a", "shutting-down", "vol-1"), inst("i-b", "running", "vol-1")), read(inst("i-a", "shutting-down", "vol-1"), inst("i-b", "running", "vol-1")),
			vol("i-b"), []string{"i-a", "i-b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sn := &snapshot{}
			sn.mapped, sn.terminated = instanceMappings(tc.first)
			if tc.second != nil {
				second, _ := instanceMappings(tc.second)
				sn.mapped = stillMapped(sn.mapped, second)
			}
			got := sn.liveAttachments("vol-1", tc.v)
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("attached to %v, want %v", got, tc.want)
			}
		})
	}
}
