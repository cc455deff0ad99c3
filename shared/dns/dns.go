// Package dns keeps a cluster's Route 53 records equal to its slots, so that clients and
// the KRaft controller quorum find brokers by name, never by a hard-coded IP:
//
//	broker-<slot>.<SLOTKEEPER_DNS_NAME>  A  the slot's IP
//	bootstrap.<SLOTKEEPER_DNS_NAME>      A  the IPs of the bound slots whose holder runs
//
// Desired says what the records should be (and documents the rules); a Syncer reads
// the leases, the holders' EC2 state and the zone, and sends Route 53 only the
// difference, in one ChangeResourceRecordSets request per update. It serves every
// path that moves a slot: launch (SlotBound, after a bind), terminate (SlotDraining,
// or Sync, once the slot is draining), the dns function (Handler, on instance state
// changes) and reconcile (Reconcile, repairing drift).
//
// Only A records at the cluster's own names (Names) are read, changed or deleted.
// Every other record in the zone, and records of any other type at those names (a TXT
// at bootstrap.<name>, say), are never touched.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
)

// Syncer keeps one cluster's records in step with its slots. It holds no state between
// calls and is safe for concurrent use. Build it with New.
//
// When DNS is not managed (SLOTKEEPER_HOSTED_ZONE_ID empty) every method returns at
// once without calling AWS, so callers may wire a Syncer unconditionally.
type Syncer struct {
	cfg   config.Config
	names Names
	r53   awsapi.Route53
	ec2   awsapi.EC2
	store *lease.Store
	log   *slog.Logger

	// Rounds bounds the read-compare-write rounds of one sync (see Sync).
	Rounds int
	// Backoff is the pause before a round that follows throttling or a rejected
	// change batch; it doubles each time, up to MaxBackoff, with jitter.
	Backoff, MaxBackoff time.Duration
}

// A Syncer is the launch path's DNS follower.
var _ launch.Follower = (*Syncer)(nil)

// New returns a Syncer for cfg's cluster and zone. db is the lease table's DynamoDB.
func New(cfg config.Config, r53 awsapi.Route53, ec2 awsapi.EC2, db awsapi.DynamoDB, log *slog.Logger) *Syncer {
	return &Syncer{
		cfg: cfg, names: NewNames(cfg), r53: r53, ec2: ec2,
		store:  lease.NewStore(db, cfg.Table, cfg.Cluster),
		log:    log.With(obs.KeyCluster, cfg.Cluster),
		Rounds: 5, Backoff: time.Second, MaxBackoff: 10 * time.Second,
	}
}

// Name names the Syncer among launch followers, terminate drainers and reconcile
// repairers: "dns".
func (s *Syncer) Name() string { return "dns" }

// SlotBound makes the records follow a slot that has just been bound (launch.Follower):
// broker-<slot> takes the slot's address (ENI mode: the IP its lease records; instance
// mode: the new holder's primary IP) and the bootstrap record gains it. Only the
// slot's own address is added; nothing else is changed (see edit). A change that
// Route 53 rejects because the records moved since they were read falls back to a
// full sync (Sync).
func (s *Syncer) SlotBound(ctx context.Context, b launch.Bound) error {
	if !s.cfg.DNS.Enabled() {
		return nil
	}
	ip := b.Lease.IP
	if !s.cfg.ENI && b.Instance.PrivateIP != "" {
		ip = b.Instance.PrivateIP
	}
	if ip == "" {
		_, err := s.sync(ctx, nil)
		return wrapf(err, "updating DNS for slot %d bound to %s", b.Lease.Slot, b.Lease.Holder)
	}
	_, err := s.edit(ctx, func(have map[string]types.ResourceRecordSet) Records {
		broker := s.names.Broker(b.Lease.Slot)
		return Records{
			broker:              newRecord(broker, s.cfg.DNS.TTL, ip),
			s.names.Bootstrap(): newRecord(s.names.Bootstrap(), s.cfg.DNS.TTL, append(valuesOf(have, s.names.Bootstrap()), ip)...),
		}
	})
	return wrapf(err, "updating DNS for slot %d bound to %s", b.Lease.Slot, b.Lease.Holder)
}

// SlotDraining takes a slot that has started draining out of the bootstrap record, so
// that new clients are no longer sent to the leaving broker. l is the draining lease:
// its address leaves the record (the record goes when it was the last one); nothing
// else is changed (see edit). A change that Route 53 rejects because the records
// moved since they were read falls back to a full sync (Sync).
func (s *Syncer) SlotDraining(ctx context.Context, l lease.Lease) error {
	if !s.cfg.DNS.Enabled() {
		return nil
	}
	if l.IP == "" {
		_, err := s.sync(ctx, nil)
		return wrapf(err, "updating DNS for draining slot %d", l.Slot)
	}
	_, err := s.edit(ctx, func(have map[string]types.ResourceRecordSet) Records {
		ips := slices.DeleteFunc(valuesOf(have, s.names.Bootstrap()), func(v string) bool { return v == l.IP })
		if len(ips) == 0 {
			return Records{s.names.Bootstrap(): Record{Name: s.names.Bootstrap()}} // no values: delete it
		}
		return Records{s.names.Bootstrap(): newRecord(s.names.Bootstrap(), s.cfg.DNS.TTL, ips...)}
	})
	return wrapf(err, "updating DNS for draining slot %d", l.Slot)
}

func wrapf(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

// valuesOf returns the values of the record name in have, sorted (nil if absent).
func valuesOf(have map[string]types.ResourceRecordSet, name string) []string {
	if r, ok := have[name]; ok && r.AliasTarget == nil {
		return values(r)
	}
	return nil
}

// edit is the update of one slot's own records after a move that the caller knows
// (launch's bind, terminate's drain): read the cluster's records (one listing), let
// target say what the records it touches should be, and send only what differs, in
// one change conditional on the records being exactly as read: a record that exists
// is replaced by a DELETE with the values read and a CREATE, a missing one by a
// CREATE, and one target leaves without values by a DELETE. Route 53 applies a batch
// atomically and rejects it (InvalidChangeBatch) when a DELETE does not match the
// record as it is or a CREATE finds the record there: so no concurrent update made
// between the read and the change is lost, and a rejected change falls back to a full
// sync, which reads the leases again. The caller's change only adds or removes its
// own slot's address, which commutes with every other slot's; a concurrent full sync
// whose write lands after it goes round again after its write (Sync) and restores it.
// It returns the number of records changed.
func (s *Syncer) edit(ctx context.Context, target func(have map[string]types.ResourceRecordSet) Records) (int, error) {
	have, err := s.current(ctx)
	if err != nil {
		return 0, err
	}
	var changes []types.Change
	for name, w := range target(have) {
		h, exists := have[name]
		if len(w.IPs) == 0 {
			if exists {
				rrs := h
				changes = append(changes, types.Change{Action: types.ChangeActionDelete, ResourceRecordSet: &rrs})
			}
			continue
		}
		if exists && matches(w, h) {
			continue
		}
		if exists {
			rrs := h // Route 53 deletes only a record given exactly as it is
			changes = append(changes, types.Change{Action: types.ChangeActionDelete, ResourceRecordSet: &rrs})
		}
		changes = append(changes, types.Change{Action: types.ChangeActionCreate, ResourceRecordSet: w.set()})
	}
	if len(changes) == 0 {
		return 0, nil
	}
	slices.SortStableFunc(changes, func(a, b types.Change) int {
		return strings.Compare(aws.ToString(a.ResourceRecordSet.Name), aws.ToString(b.ResourceRecordSet.Name))
	})
	n, err := s.apply(ctx, changes)
	if isConflict(err) {
		s.log.InfoContext(ctx, "the records changed since they were read; syncing them in full", obs.KeyErr, err.Error())
		return s.sync(ctx, nil)
	}
	return n, err
}

// Sync makes the records match the leases as stored and the holders' EC2 state. It is
// idempotent: when the records already match it makes no change at all.
//
// A sync is a loop of rounds: read the leases, the bound holders' state and the
// cluster's records; compute Desired; send the difference, if any. After a change it
// goes round once more. UPSERT has no condition, so of two concurrent syncs the one
// that writes last wins, even when it read the leases first; because every write is
// followed by its writer's re-check, whichever write lands last is checked against
// the leases as they are after it, and a stale one is undone. Throttling that outlasted
// the SDK's retries, and a batch Route 53 rejects because the zone changed since it
// was read (a DELETE of a record someone already removed), are answered by backing
// off and going round again. After Rounds rounds without converging it gives up.
func (s *Syncer) Sync(ctx context.Context) error {
	_, err := s.sync(ctx, nil)
	return err
}

// Reconcile repairs drift (reconcile.Repairer): records deleted or changed by hand, a
// missed event. It returns the number of records changed.
//
// The leases the caller passes are not used: the sync reads them again right before
// comparing. The caller read them before its other repairs, which can take minutes
// (detach waits), and a write computed from leases that predate a bind would undo
// that bind's records until the re-check (see Sync) restored them; resolvers that
// asked in between would cache the wrong answer.
func (s *Syncer) Reconcile(ctx context.Context, _ []lease.Lease) (repairs int, err error) {
	return s.sync(ctx, nil)
}

// InstanceChanged syncs after instance changed to state (an EC2 state-change event).
// The event's state counts even where EC2 does not show it yet: a holder reported
// stopping, shutting down or terminated leaves the bootstrap record at once, though
// its lease is bound until terminate or reconcile releases it. It returns the number
// of records changed.
func (s *Syncer) InstanceChanged(ctx context.Context, instance, state string) (int, error) {
	return s.sync(ctx, map[string]string{instance: state})
}

// sync runs the rounds described at Sync. events are instance states reported by the
// event being handled. It returns the number of records changed.
func (s *Syncer) sync(ctx context.Context, events map[string]string) (int, error) {
	if !s.cfg.DNS.Enabled() {
		return 0, nil
	}
	changed, delay := 0, s.Backoff
	var last error
	// Failed rounds (throttling, a rejected batch) are bounded by Rounds. Rounds that
	// wrote something are bounded separately and more loosely: each one means the
	// leases moved under concurrent binds, and there are only so many slots to bind;
	// a short random pause between them lets concurrent syncs fall out of step.
	failures, writes := 0, 0
	for round := 1; ; round++ {
		if round > 1 {
			pause := rand.N(s.Backoff/4 + 1)
			if last != nil {
				s.log.WarnContext(ctx, "DNS round failed; backing off", "round", round-1, obs.KeyErr, last.Error())
				pause = delay
				delay = min(2*delay, s.MaxBackoff)
			}
			if err := sleep(ctx, pause); err != nil {
				return changed, fmt.Errorf("syncing DNS records: %w (after: %w)", err, last)
			}
		}
		n, err := s.round(ctx, events)
		changed += n
		switch {
		case err == nil && n == 0:
			return changed, nil // converged
		case err == nil:
			last = nil // changed: go round once more to check
			if writes++; writes > s.Rounds+s.cfg.SlotCount {
				return changed, fmt.Errorf("DNS records of cluster %s not in step after %d rounds: the records kept changing under concurrent updates", s.cfg.Cluster, round)
			}
		case awsapi.IsThrottled(err) || isConflict(err):
			last = err
			if failures++; failures >= s.Rounds {
				return changed, fmt.Errorf("DNS records of cluster %s not in step after %d rounds: %w", s.cfg.Cluster, round, last)
			}
		default:
			return changed, err
		}
	}
}

// round reads, compares and, if anything differs, writes once. It returns the number
// of records it changed.
func (s *Syncer) round(ctx context.Context, events map[string]string) (int, error) {
	leases, err := s.store.List(ctx)
	if err != nil {
		return 0, err
	}
	holders, err := s.holders(ctx, leases, events)
	if err != nil {
		return 0, err
	}
	have, err := s.current(ctx)
	if err != nil {
		return 0, err
	}
	changes := Diff(Desired(s.cfg, leases, holders), have)
	if len(changes) == 0 {
		return 0, nil
	}
	return s.apply(ctx, changes)
}

// describeChunk is how many instance ids go in one DescribeInstances filter.
const describeChunk = 200

// holders returns what EC2 says about the holders of bound slots (the only ones whose
// state or current IP matter), with the states events report applied.
func (s *Syncer) holders(ctx context.Context, leases []lease.Lease, events map[string]string) (map[string]Holder, error) {
	var ids []string
	for _, l := range leases {
		if l.State == lease.Bound && l.Holder != "" {
			ids = append(ids, l.Holder)
		}
	}
	holders := make(map[string]Holder, len(ids))
	for start := 0; start < len(ids); start += describeChunk {
		chunk := ids[start:min(start+describeChunk, len(ids))]
		p := ec2.NewDescribeInstancesPaginator(s.ec2, &ec2.DescribeInstancesInput{
			Filters: []ec2types.Filter{{Name: aws.String("instance-id"), Values: chunk}},
		})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return nil, fmt.Errorf("describing slot holders %v: %w", chunk, err)
			}
			for _, r := range page.Reservations {
				for _, i := range r.Instances {
					h := Holder{IP: aws.ToString(i.PrivateIpAddress)}
					if i.State != nil {
						h.State = string(i.State.Name)
					}
					holders[aws.ToString(i.InstanceId)] = h
				}
			}
		}
	}
	for id, state := range events {
		if h, ok := holders[id]; ok {
			h.State = effectiveState(h.State, state)
			holders[id] = h
		}
	}
	return holders, nil
}

// current returns the A records at the cluster's names, as Route 53 has them now.
//
// Route 53 lists a zone sorted by name with the labels reversed (com.example.kafka.
// broker-0.), so the names under the DNS name follow one another from the DNS name
// on: the listing starts there and stops at the first name past them, instead of
// reading the whole zone.
func (s *Syncer) current(ctx context.Context) (map[string]types.ResourceRecordSet, error) {
	have := map[string]types.ResourceRecordSet{}
	prefix := sortKey(s.names.zone)
	in := &route53.ListResourceRecordSetsInput{
		HostedZoneId: aws.String(s.cfg.DNS.HostedZoneID), StartRecordName: aws.String(s.names.zone),
	}
	for {
		out, err := s.r53.ListResourceRecordSets(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("listing records under %s in zone %s: %w", s.names.zone, s.cfg.DNS.HostedZoneID, err)
		}
		for _, r := range out.ResourceRecordSets {
			name := fqdn(aws.ToString(r.Name))
			if k := sortKey(name); k > prefix && !strings.HasPrefix(k, prefix) {
				return have, nil // past the names under the DNS name
			}
			// Ours: A records at our names with simple routing. Weighted, latency or
			// other routed sets (SetIdentifier) were made by someone else.
			if r.Type == types.RRTypeA && r.SetIdentifier == nil && s.names.Owns(name) {
				have[name] = r
			}
		}
		if !out.IsTruncated {
			return have, nil
		}
		in.StartRecordName, in.StartRecordType, in.StartRecordIdentifier = out.NextRecordName, out.NextRecordType, out.NextRecordIdentifier
	}
}

// sortKey is the key Route 53 sorts a listing by: the labels reversed, with a
// trailing dot ("broker-0.kafka.example." -> "example.kafka.broker-0.").
func sortKey(name string) string {
	labels := strings.Split(strings.TrimSuffix(name, "."), ".")
	for i, j := 0, len(labels)-1; i < j; i, j = i+1, j-1 {
		labels[i], labels[j] = labels[j], labels[i]
	}
	return strings.Join(labels, ".") + "."
}

// apply sends changes, one ChangeResourceRecordSets request per batch (one for any
// cluster of up to a few hundred slots), and returns how many it applied.
func (s *Syncer) apply(ctx context.Context, changes []types.Change) (applied int, err error) {
	for _, batch := range Batches(changes) {
		_, err := s.r53.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{
			HostedZoneId: aws.String(s.cfg.DNS.HostedZoneID),
			ChangeBatch: &types.ChangeBatch{
				Comment: aws.String("slotkeeper: records of cluster " + s.cfg.Cluster),
				Changes: batch,
			},
		})
		if err != nil {
			return applied, fmt.Errorf("changing %d records in zone %s: %w", len(batch), s.cfg.DNS.HostedZoneID, withMessages(err))
		}
		for _, c := range batch {
			s.log.InfoContext(ctx, "changed DNS record", "change", describe(c))
		}
		applied += len(batch)
	}
	return applied, nil
}

// isConflict reports whether Route 53 rejected a change batch: for a batch computed
// from a fresh read, because the zone changed in between (a record to delete is
// already gone, or no longer has the values read). The next round re-reads and
// computes the batch again, without what is already done. A rejection that persists
// (the DNS name outside the zone, say) ends the sync after Rounds rounds, with
// Route 53's messages in the error.
func isConflict(err error) bool { return awsapi.Code(err) == "InvalidChangeBatch" }

// withMessages adds the per-change messages of an InvalidChangeBatch, which its Error
// string leaves out, to err.
func withMessages(err error) error {
	var icb *types.InvalidChangeBatch
	if errors.As(err, &icb) && len(icb.Messages) > 0 {
		return fmt.Errorf("%w: %s", err, strings.Join(icb.Messages, "; "))
	}
	return err
}

// sleep waits for about d (jittered down to half) or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d/2 + rand.N(d/2+1))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
