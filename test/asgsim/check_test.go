package asgsim

import (
	"maps"
	"testing"

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
