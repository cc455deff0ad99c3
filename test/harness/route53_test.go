package harness

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// The proxy answers a Route 53 change batch as Route 53 does: atomically, and only if
// every DELETE gives its record exactly as it is and no CREATE finds its record there.
func TestRoute53ChangeBatches(t *testing.T) {
	t.Parallel()
	h := Start(t)
	w := h.NewWorld(t, "r53")
	ctx := context.Background()
	direct, proxied := route53.NewFromConfig(h.DirectConfig()), route53.NewFromConfig(h.AWSConfig())
	zone, err := direct.CreateHostedZone(ctx, &route53.CreateHostedZoneInput{
		Name: aws.String("kafka.internal"), CallerReference: aws.String("r53-test"),
		HostedZoneConfig: &r53types.HostedZoneConfig{PrivateZone: true},
		VPC:              &r53types.VPC{VPCId: aws.String(w.VPCID), VPCRegion: r53types.VPCRegionUsEast1},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(zone.HostedZone.Id)
	set := func(name string, ttl int64, ips ...string) *r53types.ResourceRecordSet {
		rrs := &r53types.ResourceRecordSet{Name: aws.String(name), Type: r53types.RRTypeA, TTL: aws.Int64(ttl)}
		for _, ip := range ips {
			rrs.ResourceRecords = append(rrs.ResourceRecords, r53types.ResourceRecord{Value: aws.String(ip)})
		}
		return rrs
	}
	change := func(changes ...r53types.Change) error {
		_, err := proxied.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{
			HostedZoneId: aws.String(id), ChangeBatch: &r53types.ChangeBatch{Changes: changes}})
		return err
	}
	values := func(name string) []string {
		out, err := direct.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(id),
			StartRecordName: aws.String(name), StartRecordType: r53types.RRTypeA, MaxItems: aws.Int32(1)})
		if err != nil {
			t.Fatal(err)
		}
		var v []string
		for _, r := range out.ResourceRecordSets {
			if strings.TrimSuffix(aws.ToString(r.Name), ".") == strings.TrimSuffix(name, ".") && r.Type == r53types.RRTypeA {
				for _, rr := range r.ResourceRecords {
					v = append(v, aws.ToString(rr.Value))
				}
			}
		}
		return v
	}
	const name = "bootstrap.kafka.internal."
	del := func(s *r53types.ResourceRecordSet) r53types.Change {
		return r53types.Change{Action: r53types.ChangeActionDelete, ResourceRecordSet: s}
	}
	create := func(s *r53types.ResourceRecordSet) r53types.Change {
		return r53types.Change{Action: r53types.ChangeActionCreate, ResourceRecordSet: s}
	}

	if err := change(create(set(name, 30, "10.0.1.1"))); err != nil {
		t.Fatalf("CREATE of a new record: %v", err)
	}
	steps := []struct {
		name    string
		changes []r53types.Change
		wantErr string // "" = applied
		want    []string
	}{
		{"CREATE of a record that exists", []r53types.Change{create(set(name, 30, "10.0.1.9"))}, "already exists", []string{"10.0.1.1"}},
		{"DELETE with other values", []r53types.Change{del(set(name, 30, "10.0.1.2")), create(set(name, 30, "10.0.1.2"))},
			"do not match", []string{"10.0.1.1"}},
		{"DELETE with another TTL", []r53types.Change{del(set(name, 60, "10.0.1.1"))}, "do not match", []string{"10.0.1.1"}},
		{"DELETE of a missing record", []r53types.Change{del(set("broker-0.kafka.internal.", 30, "10.0.1.1"))}, "not found", []string{"10.0.1.1"}},
		{"DELETE as it is, then CREATE", []r53types.Change{del(set(name, 30, "10.0.1.1")), create(set(name, 30, "10.0.1.1", "10.0.2.1"))},
			"", []string{"10.0.1.1", "10.0.2.1"}},
		{"a stale DELETE of the record as it was", []r53types.Change{del(set(name, 30, "10.0.1.1")), create(set(name, 30, "10.0.1.1", "10.0.3.1"))},
			"do not match", []string{"10.0.1.1", "10.0.2.1"}},
		{"UPSERT", []r53types.Change{{Action: r53types.ChangeActionUpsert, ResourceRecordSet: set(name, 30, "10.0.3.1")}}, "", []string{"10.0.3.1"}},
	}
	for _, st := range steps {
		err := change(st.changes...)
		switch {
		case st.wantErr == "" && err != nil:
			t.Errorf("%s: %v", st.name, err)
		case st.wantErr != "" && (awsapi.Code(err) != "InvalidChangeBatch" || !strings.Contains(err.Error(), st.wantErr)):
			t.Errorf("%s: error %v (code %q), want InvalidChangeBatch %q", st.name, err, awsapi.Code(err), st.wantErr)
		}
		if got := values(name); strings.Join(got, ",") != strings.Join(st.want, ",") {
			t.Errorf("%s: the record holds %v, want %v", st.name, got, st.want)
		}
	}
}
