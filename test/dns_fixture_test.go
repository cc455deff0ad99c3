package test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// dnsZone is the private hosted zone every DNS test cluster's records live in; the
// cluster's DNS name is <cluster>.dnsZone.
const dnsZone = "example.internal"

// dnsCluster is a cluster whose slots have Route 53 records: its private hosted zone
// (associated with the world's VPC), the Syncer (a launch follower) and the dns
// function's handler, wired to the proxied endpoint, and a direct Route 53 client for
// set-up and assertions.
type dnsCluster struct {
	*cluster
	syncer  *dns.Syncer
	handler *dns.Handler
	r53     *route53.Client // direct to moto
}

// newDNSCluster is newCluster plus a private hosted zone and DNS records managed by
// the launch path (the Syncer is a launch follower).
//
// The zone must be associated with the world's VPC, which exists only once newCluster
// has run, so the DNS settings are set on the loaded configuration afterwards: what
// SLOTKEEPER_HOSTED_ZONE_ID=<zone id>, SLOTKEEPER_DNS_NAME=<cluster>.example.internal
// and SLOTKEEPER_DNS_TTL=60 load to.
func newDNSCluster(t testing.TB, h *harness.Harness, slots int, env map[string]string) *dnsCluster {
	t.Helper()
	c := newCluster(t, h, slots, env)
	d := &dnsCluster{cluster: c, r53: route53.NewFromConfig(h.DirectConfig())}
	ctx := context.Background()
	out, err := d.r53.CreateHostedZone(ctx, &route53.CreateHostedZoneInput{
		Name:             aws.String(dnsZone),
		CallerReference:  aws.String(c.cfg.Cluster + "-zone"),
		HostedZoneConfig: &r53types.HostedZoneConfig{PrivateZone: true, Comment: aws.String("slotkeeper test")},
		VPC:              &r53types.VPC{VPCId: aws.String(c.w.VPCID), VPCRegion: r53types.VPCRegion(h.Region)},
	})
	if err != nil {
		t.Fatalf("creating private hosted zone: %v", err)
	}
	c.cfg.DNS = config.DNSConfig{
		HostedZoneID: strings.TrimPrefix(aws.ToString(out.HostedZone.Id), "/hostedzone/"),
		Name:         c.cfg.Cluster + "." + dnsZone,
		TTL:          60,
	}
	d.syncer, d.handler = d.wire(c.cfg)
	c.launch.Followers = append(c.launch.Followers, d.syncer)
	return d
}

// wire builds a Syncer and a dns handler for cfg, talking to the proxy. Backoffs are
// short so retry tests finish quickly.
func (d *dnsCluster) wire(cfg config.Config) (*dns.Syncer, *dns.Handler) {
	awsCfg := d.h.AWSConfig()
	log := obs.NewLogger(d.logs, slog.LevelDebug)
	s := dns.New(cfg, route53.NewFromConfig(awsCfg), ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg), log)
	s.Backoff, s.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	return s, dns.NewHandler(cfg, s, log, d.metrics)
}

// name returns label.<cluster DNS name>. (fully qualified).
func (d *dnsCluster) name(label string) string { return label + "." + d.cfg.DNS.Name + "." }

// rr is one record set as read at moto, rendered comparably.
type rr struct {
	Name, Type string
	TTL        int64
	Values     []string // sorted
}

func (r rr) String() string { return fmt.Sprintf("%s %s %d %v", r.Name, r.Type, r.TTL, r.Values) }

// zone returns every record set of the zone, read directly at moto.
func (d *dnsCluster) zone() []rr {
	d.t.Helper()
	var out []rr
	in := &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(d.cfg.DNS.HostedZoneID), MaxItems: aws.Int32(100)}
	for {
		page, err := d.r53.ListResourceRecordSets(context.Background(), in)
		if err != nil {
			d.t.Fatalf("listing zone: %v", err)
		}
		for _, s := range page.ResourceRecordSets {
			r := rr{Name: aws.ToString(s.Name), Type: string(s.Type), TTL: aws.ToInt64(s.TTL)}
			for _, v := range s.ResourceRecords {
				r.Values = append(r.Values, aws.ToString(v.Value))
			}
			slices.Sort(r.Values)
			out = append(out, r)
		}
		if !page.IsTruncated {
			return out
		}
		in.StartRecordName, in.StartRecordType = page.NextRecordName, page.NextRecordType
	}
}

// a returns the values of the A record at name, or nil when there is none.
func (d *dnsCluster) a(name string) []string {
	d.t.Helper()
	for _, r := range d.zone() {
		if r.Name == name && r.Type == "A" {
			if r.TTL != d.cfg.DNS.TTL {
				d.t.Errorf("%s has TTL %d, want %d", name, r.TTL, d.cfg.DNS.TTL)
			}
			return r.Values
		}
	}
	return nil
}

// bootstrap returns the values of the bootstrap record.
func (d *dnsCluster) bootstrap() []string { return d.a(d.name("bootstrap")) }

// broker returns the values of slot s's record.
func (d *dnsCluster) broker(s int) []string { return d.a(d.name(fmt.Sprintf("broker-%d", s))) }

// change applies one change directly at moto, as an operator's hand would.
func (d *dnsCluster) change(action r53types.ChangeAction, name string, typ r53types.RRType, ttl int64, values ...string) {
	d.t.Helper()
	set := &r53types.ResourceRecordSet{Name: aws.String(name), Type: typ, TTL: aws.Int64(ttl)}
	for _, v := range values {
		set.ResourceRecords = append(set.ResourceRecords, r53types.ResourceRecord{Value: aws.String(v)})
	}
	_, err := d.r53.ChangeResourceRecordSets(context.Background(), &route53.ChangeResourceRecordSetsInput{
		HostedZoneId: aws.String(d.cfg.DNS.HostedZoneID),
		ChangeBatch:  &r53types.ChangeBatch{Changes: []r53types.Change{{Action: action, ResourceRecordSet: set}}},
	})
	if err != nil {
		d.t.Fatalf("%s %s %s by hand: %v", action, name, typ, err)
	}
}

// fill creates n A records named fmt.Sprintf(format, i) under the cluster's name,
// directly at moto, in one request.
func (d *dnsCluster) fill(n int, format string) {
	d.t.Helper()
	var changes []r53types.Change
	for i := range n {
		changes = append(changes, r53types.Change{Action: r53types.ChangeActionUpsert, ResourceRecordSet: &r53types.ResourceRecordSet{
			Name: aws.String(d.name(fmt.Sprintf(format, i))), Type: r53types.RRTypeA, TTL: aws.Int64(300),
			ResourceRecords: []r53types.ResourceRecord{{Value: aws.String(fmt.Sprintf("10.2.%d.%d", i/250, i%250+1))}},
		}})
	}
	_, err := d.r53.ChangeResourceRecordSets(context.Background(), &route53.ChangeResourceRecordSetsInput{
		HostedZoneId: aws.String(d.cfg.DNS.HostedZoneID), ChangeBatch: &r53types.ChangeBatch{Changes: changes},
	})
	if err != nil {
		d.t.Fatalf("creating %d filler records: %v", n, err)
	}
}

// primaryIP returns an instance's primary private IP as moto has it.
func (d *dnsCluster) primaryIP(id string) string {
	d.t.Helper()
	out, err := d.ec2.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		d.t.Fatal(err)
	}
	return aws.ToString(out.Reservations[0].Instances[0].PrivateIpAddress)
}

// leases returns the cluster's leases as stored.
func (d *dnsCluster) leases() []lease.Lease {
	d.t.Helper()
	ls, err := d.store.List(context.Background())
	if err != nil {
		d.t.Fatal(err)
	}
	return ls
}

// stateEvent is events/state-change-<state>.json for instance (any state: the sample
// of "running" is used for states that have no sample).
func (d *dnsCluster) stateEvent(instance, state string) []byte {
	file := "state-change-" + state + ".json"
	if !slices.Contains([]string{"running", "stopping", "shutting-down", "terminated"}, state) {
		file = "state-change-running.json"
	}
	return d.event(file, func(m map[string]any) {
		det := m["detail"].(map[string]any)
		det["instance-id"], det["state"] = instance, state
	})
}

// deliver hands payload to the dns handler exactly as the Lambda runtime does and
// returns what the handler answered.
func (d *dnsCluster) deliver(payload []byte) (dns.Result, error) {
	requestSeq.Lock()
	requestSeq.n++
	id := fmt.Sprintf("req-%04d", requestSeq.n)
	requestSeq.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: id})
	out, err := lambda.NewHandler(d.handler).Invoke(ctx, payload)
	if err != nil {
		return dns.Result{}, err
	}
	var res dns.Result
	if err := json.Unmarshal(out, &res); err != nil {
		d.t.Fatalf("dns handler answered %s: %v", out, err)
	}
	return res, nil
}

// ips returns the distinct lease IPs of slots, sorted: what the bootstrap record
// should hold. (moto picks private IPs at random without checking that they are free,
// so in a busy subnet two slots can get the same one; AWS never does that.)
func (d *dnsCluster) ips(slots ...int) []string {
	d.t.Helper()
	var out []string
	for _, s := range slots {
		out = append(out, d.lease(s).IP)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
