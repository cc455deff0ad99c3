package test

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// TestMotoRoute53Semantics pins how moto 5.2.5's Route 53 differs from AWS where the
// DNS tests depend on it:
//
//   - DELETE is checked against moto's journal of past changes, not against the
//     records the zone has now. A DELETE of a record that once existed with those
//     values succeeds even when the record is already gone (AWS: InvalidChangeBatch
//     "... but it was not found"); a DELETE of a record never created fails with
//     InvalidInput (AWS: InvalidChangeBatch). A DELETE removes every record set of
//     that name and type, whatever values it gives, if the journal ever saw them
//     (AWS: InvalidChangeBatch "... the values provided do not match the current
//     values").
//   - UPSERT creates, or replaces the set of that name and type, as on AWS.
//   - ListResourceRecordSets sorts by the reversed name without the trailing dot, so a
//     listing from kafka1.example.internal. returns kafka1-other.example.internal.
//     before the names under kafka1 (on AWS, which sorts with the trailing dot, it
//     comes before kafka1.example.internal. and is not returned). The Syncer's
//     listing skips such names and stops only at a name past the subtree under
//     either order.
//
// So moto never produces the "already gone" rejection on its own: the tests inject it
// (TestDNSRoute53ThrottlingAndRejections).
func TestMotoRoute53Semantics(t *testing.T) {
	h := harness.Start(t)
	c := newDNSCluster(t, h, 1, nil)
	ctx := context.Background()
	zone := aws.String(c.cfg.DNS.HostedZoneID)
	change := func(action r53types.ChangeAction, name string, values ...string) error {
		set := &r53types.ResourceRecordSet{Name: aws.String(name), Type: r53types.RRTypeA, TTL: aws.Int64(60)}
		for _, v := range values {
			set.ResourceRecords = append(set.ResourceRecords, r53types.ResourceRecord{Value: aws.String(v)})
		}
		_, err := c.r53.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{
			HostedZoneId: zone, ChangeBatch: &r53types.ChangeBatch{Changes: []r53types.Change{{Action: action, ResourceRecordSet: set}}},
		})
		return err
	}
	x, y := c.name("x"), c.name("y")
	steps := []struct {
		name     string
		action   r53types.ChangeAction
		record   string
		values   []string
		wantCode string   // "" = success
		wantX    []string // x's values afterwards (nil = no record)
	}{
		{"upsert creates", r53types.ChangeActionUpsert, x, []string{"10.0.0.1"}, "", []string{"10.0.0.1"}},
		{"upsert replaces", r53types.ChangeActionUpsert, x, []string{"10.0.0.2", "10.0.0.3"}, "", []string{"10.0.0.2", "10.0.0.3"}},
		{"delete with values seen once, not current, deletes", r53types.ChangeActionDelete, x, []string{"10.0.0.1"}, "", nil},
		{"delete of the record already gone succeeds", r53types.ChangeActionDelete, x, []string{"10.0.0.1"}, "", nil},
		{"delete of a record never created fails", r53types.ChangeActionDelete, y, []string{"10.0.0.9"}, "InvalidInput", nil},
	}
	for _, st := range steps {
		err := change(st.action, st.record, st.values...)
		if code := awsapi.Code(err); code != st.wantCode || (st.wantCode == "" && err != nil) {
			t.Errorf("%s: error %v, want code %q", st.name, err, st.wantCode)
		}
		if got := c.a(x); !equalStrings(got, st.wantX) {
			t.Errorf("%s: x = %v, want %v", st.name, got, st.wantX)
		}
		t.Logf("%s: error code %q", st.name, awsapi.Code(err))
	}

	// Listing order, from the cluster's DNS name on (as the Syncer lists).
	other := c.cfg.Cluster + "-other." + dnsZone + "."
	for _, name := range []string{"aaa." + dnsZone + ".", other, c.name("broker-0"), "zz." + dnsZone + "."} {
		if err := change(r53types.ChangeActionUpsert, name, "10.0.0.5"); err != nil {
			t.Fatal(err)
		}
	}
	out, err := c.r53.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{
		HostedZoneId: zone, StartRecordName: aws.String(c.cfg.DNS.Name + "."),
	})
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, r := range out.ResourceRecordSets {
		order = append(order, aws.ToString(r.Name))
	}
	if want := []string{other, c.name("broker-0"), "zz." + dnsZone + "."}; !equalStrings(order, want) {
		t.Errorf("listing from %s: %v, want %v", c.cfg.DNS.Name, order, want)
	}
	t.Logf("listing from %s. returns %v", c.cfg.DNS.Name, order)
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
