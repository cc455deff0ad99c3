// Package lease is the DynamoDB store of slot leases: who holds which broker slot.
//
// One item per (cluster, slot). Every transition is a conditional write. Claim
// increments the slot's version, the fencing token; every later mutation made on
// behalf of that claim (bind, drain, release) is conditioned on the version and holder
// it was given, so a late retry of an old invocation cannot act on a slot that has since
// moved on. Each item carries its recent transitions (who, when, why) for operators.
//
// Item layout (attribute names are part of the public contract):
//
//	cluster (S, partition key)   slot (N, sort key)
//	state      free | claimed | bound | draining
//	version    fencing token, incremented by every claim and release
//	holder     instance id holding the slot (absent when free)
//	holder_az  availability zone of the holder
//	last_holder  the previous holder, kept after release
//	eni_id, volume_id, ip  the slot's ENI (and its IP; in instance mode, the holder's
//	                       primary IP) and data volume: the authority on the slot's
//	                       identity. Recorded by the claimer as soon as each exists
//	                       (Record, a fenced write that never replaces a recorded id),
//	                       written again at bind, kept across release and claim, and
//	                       removed only by an operator (Forget: slotctl reset).
//	volume_claim, eni_claim  the version of the claim that recorded volume_id and
//	                       eni_id (absent for ids written by other means: at bind by
//	                       an earlier version, or by an operator adopting a broker)
//	claimed_at, updated_at RFC 3339 timestamps
//	history    list of {at, from, to, version, instance, actor, reason}, newest last
//
// Every path uses the recorded ids, never tags, to find a slot's resources; whoever
// writes a bound lease by other means (adopting a running broker) writes the same
// three attributes.
package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// State is a lease state.
type State string

// Lease states, in lifecycle order.
const (
	Free     State = "free"
	Claimed  State = "claimed"
	Bound    State = "bound"
	Draining State = "draining"
)

// HistoryLimit is how many transitions an item keeps; older ones are dropped at claim.
const HistoryLimit = 50

// ErrFenced means the lease changed since it was read (another claim, a release, a
// newer version): the caller's view is stale and it must not act on the slot.
var ErrFenced = errors.New("lease fenced: the slot changed since it was read")

// Lease is one slot's lease. A slot that has never been claimed is Free at version 0.
type Lease struct {
	Cluster    string       `dynamodbav:"cluster"`
	Slot       int          `dynamodbav:"slot"`
	State      State        `dynamodbav:"state"`
	Version    int64        `dynamodbav:"version"`
	Holder     string       `dynamodbav:"holder,omitempty"`
	HolderAZ   string       `dynamodbav:"holder_az,omitempty"`
	LastHolder string       `dynamodbav:"last_holder,omitempty"`
	ENIID      string       `dynamodbav:"eni_id,omitempty"`
	VolumeID   string       `dynamodbav:"volume_id,omitempty"`
	IP         string       `dynamodbav:"ip,omitempty"`
	ClaimedAt  string       `dynamodbav:"claimed_at,omitempty"`
	UpdatedAt  string       `dynamodbav:"updated_at,omitempty"`
	History    []Transition `dynamodbav:"history,omitempty"`

	// VolumeClaim and ENIClaim are the version of the claim that recorded VolumeID
	// and ENIID (0: unknown, e.g. written at bind by an earlier version or by hand).
	VolumeClaim int64 `dynamodbav:"volume_claim,omitempty"`
	ENIClaim    int64 `dynamodbav:"eni_claim,omitempty"`
}

// Transition is one entry of a slot's history.
type Transition struct {
	At       string `dynamodbav:"at"`
	From     State  `dynamodbav:"from"`
	To       State  `dynamodbav:"to"`
	Version  int64  `dynamodbav:"version"`
	Instance string `dynamodbav:"instance,omitempty"`
	Actor    string `dynamodbav:"actor,omitempty"`
	Reason   string `dynamodbav:"reason"`
}

// Exists reports whether the lease has ever been written.
func (l Lease) Exists() bool { return l.UpdatedAt != "" }

// HeldBy reports whether instance holds the lease in a non-free state.
func (l Lease) HeldBy(instance string) bool { return l.State != Free && l.Holder == instance }

// Binding is what Bind records about the slot's resources.
type Binding struct{ ENIID, VolumeID, IP string }

// Store reads and writes one cluster's leases.
type Store struct {
	db      awsapi.DynamoDB
	table   string
	cluster string
	// Actor names who writes (function name and request id) in the history.
	Actor string
	// Now is the clock; tests may replace it.
	Now func() time.Time
	// Writes counts conditional writes attempted, for benchmarks and metrics.
	Writes func()
}

// NewStore returns a store for cluster's leases in table.
func NewStore(db awsapi.DynamoDB, table, cluster string) *Store {
	return &Store{db: db, table: table, cluster: cluster, Now: time.Now}
}

func (s *Store) key(slot int) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{
		"cluster": &types.AttributeValueMemberS{Value: s.cluster},
		"slot":    &types.AttributeValueMemberN{Value: strconv.Itoa(slot)},
	}
}

// Get returns slot's lease, read consistently. A never-claimed slot is Free, version 0.
func (s *Store) Get(ctx context.Context, slot int) (Lease, error) {
	out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: &s.table, Key: s.key(slot), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return Lease{}, fmt.Errorf("reading lease of slot %d: %w", slot, err)
	}
	if out.Item == nil {
		return Lease{Cluster: s.cluster, Slot: slot, State: Free}, nil
	}
	return decode(out.Item)
}

// List returns every lease item of the cluster that exists, by slot, read consistently.
// Slots never claimed have no item and are absent. Items at negative sort keys (the
// removal token, removal.go) are not leases and are never listed.
func (s *Store) List(ctx context.Context) ([]Lease, error) {
	in := &dynamodb.QueryInput{
		TableName:                &s.table,
		KeyConditionExpression:   aws.String("#c = :c AND #s >= :first"),
		ExpressionAttributeNames: map[string]string{"#c": "cluster", "#s": "slot"},
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":c": &types.AttributeValueMemberS{Value: s.cluster}, ":first": num(0),
		},
		ConsistentRead: aws.Bool(true),
	}
	var leases []Lease
	for p := dynamodb.NewQueryPaginator(s.db, in); p.HasMorePages(); {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing leases of cluster %s: %w", s.cluster, err)
		}
		for _, item := range page.Items {
			l, err := decode(item)
			if err != nil {
				return nil, err
			}
			leases = append(leases, l)
		}
	}
	return leases, nil
}

// Claim makes instance the holder of the slot that cur describes, in state claimed,
// with version cur.Version+1. It succeeds only if the item is exactly as read (same
// version and update time, or still absent), so of two claimers of one slot exactly one
// wins; the loser gets ErrFenced.
func (s *Store) Claim(ctx context.Context, cur Lease, instance, az, reason string) (Lease, error) {
	now := s.stamp()
	next := cur
	next.Cluster, next.State, next.Version = s.cluster, Claimed, cur.Version+1
	next.Holder, next.HolderAZ, next.ClaimedAt, next.UpdatedAt = instance, az, now, now
	if cur.Holder != "" && cur.Holder != instance {
		next.LastHolder = cur.Holder
	}
	hist := cur.History
	if len(hist) >= HistoryLimit {
		hist = hist[len(hist)-HistoryLimit+1:]
	}
	next.History = append(append([]Transition(nil), hist...), s.transition(cur.State, Claimed, next.Version, instance, reason, now))

	// UpdateItem, not PutItem: attributes other paths keep on the item (pending disk
	// growth, growth history) must survive a change of holder.
	histAV, err := attributevalue.Marshal(next.History)
	if err != nil {
		return Lease{}, fmt.Errorf("encoding history of slot %d: %w", cur.Slot, err)
	}
	names := map[string]string{
		"#s": "state", "#v": "version", "#h": "holder", "#az": "holder_az", "#ca": "claimed_at", "#u": "updated_at", "#hist": "history",
	}
	values := map[string]types.AttributeValue{
		":s": str(string(Claimed)), ":nv": num(next.Version), ":h": str(instance), ":az": str(az),
		":now": str(now), ":hist": histAV,
	}
	update := "SET #s = :s, #v = :nv, #h = :h, #az = :az, #ca = :now, #u = :now, #hist = :hist"
	if next.LastHolder != "" {
		names["#lh"], values[":lh"] = "last_holder", str(next.LastHolder)
		update += ", #lh = :lh"
	}
	var cond string
	if cur.Exists() {
		cond = "#v = :v AND #u = :u"
		values[":v"], values[":u"] = num(cur.Version), str(cur.UpdatedAt)
	} else {
		cond = "attribute_not_exists(#c)"
		names["#c"] = "cluster"
	}
	if s.Writes != nil {
		s.Writes()
	}
	_, err = s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: &s.table, Key: s.key(cur.Slot), UpdateExpression: &update, ConditionExpression: &cond,
		ExpressionAttributeNames: names, ExpressionAttributeValues: values,
	})
	if awsapi.IsConditionFailed(err) {
		err = ErrFenced
	}
	if err != nil {
		return Lease{}, fmt.Errorf("claiming slot %d for %s at version %d: %w", cur.Slot, instance, next.Version, err)
	}
	return next, nil
}

// Bind marks a claimed lease bound and records the slot's resources. Repeating a bind
// that already happened (same holder and version) returns the bound lease unchanged.
func (s *Store) Bind(ctx context.Context, l Lease, b Binding, reason string) (Lease, error) {
	if l.State == Bound {
		return l, nil
	}
	sets := map[string]types.AttributeValue{
		"eni_id": str(b.ENIID), "volume_id": str(b.VolumeID), "ip": str(b.IP),
	}
	out, err := s.transit(ctx, l, Bound, []State{Claimed}, sets, nil, reason, s.stamp())
	if errors.Is(err, ErrFenced) {
		cur, gerr := s.Get(ctx, l.Slot)
		if gerr == nil && cur.State == Bound && cur.Version == l.Version && cur.Holder == l.Holder {
			return cur, nil
		}
	}
	return out, err
}

// Drain marks a bound lease draining: a termination is in progress. Repeating a drain
// that already happened (same holder and version) returns the draining lease: a
// condition that fails because this very drain took effect earlier (a lost response
// the SDK retried, a concurrent delivery of the same event) is recognised by reading
// the lease again, not taken for "the slot moved on"; so is a claimed view of a lease
// that the same holder has bound since, at the same version (a termination that
// began while the instance's launch was still binding).
func (s *Store) Drain(ctx context.Context, l Lease, reason string) (Lease, error) {
	if l.State == Draining {
		return l, nil
	}
	out, err := s.transit(ctx, l, Draining, []State{Claimed, Bound}, nil, nil, reason, s.stamp())
	if errors.Is(err, ErrFenced) {
		cur, gerr := s.Get(ctx, l.Slot)
		if gerr == nil && cur.Version == l.Version && cur.Holder == l.Holder {
			switch {
			case cur.State == Draining:
				return cur, nil
			case cur.State == Bound && l.State == Claimed:
				// The holder's own launch bound the lease since it was read: the slot is
				// still this holder's, at this version; drain what is stored.
				return s.Drain(ctx, cur, reason)
			}
		}
	}
	return out, err
}

// Release frees the lease held at l.Version by l.Holder: state free, holder moved to
// last_holder, version incremented so that anything still acting on the old version is
// fenced off. Releasing a lease that has already moved on returns ErrFenced. A retry of
// this very release whose first attempt took effect (a lost response the SDK retried)
// finds the lease free at l.Version+1 with l.Holder as last holder and its own history
// entry last, and returns the released lease; a release made by another writer (a
// concurrent delivery, a reconcile) is ErrFenced: this caller did not release it.
func (s *Store) Release(ctx context.Context, l Lease, reason string) (Lease, error) {
	sets := map[string]types.AttributeValue{
		"last_holder": str(l.Holder),
		"version":     num(l.Version + 1),
	}
	now := s.stamp()
	out, err := s.transit(ctx, l, Free, []State{Claimed, Bound, Draining}, sets, []string{"holder", "holder_az"}, reason, now)
	if errors.Is(err, ErrFenced) {
		cur, gerr := s.Get(ctx, l.Slot)
		if gerr == nil && Released(l, cur) && len(cur.History) > 0 && cur.History[len(cur.History)-1].At == now {
			return cur, nil
		}
	}
	return out, err
}

// Released reports whether cur is what releasing l made of the slot: free, one version
// on, with l's holder as the last holder.
func Released(l, cur Lease) bool {
	return cur.State == Free && cur.Version == l.Version+1 && cur.LastHolder == l.Holder && l.Holder != ""
}

// transit moves l to state `to`, conditioned on the version, holder and state l has,
// which must be one of `from`, and appends a history entry stamped now. It returns the
// item as written.
func (s *Store) transit(ctx context.Context, l Lease, to State, from []State, sets map[string]types.AttributeValue, removes []string, reason, now string) (Lease, error) {
	if !slices.Contains(from, l.State) {
		return Lease{}, fmt.Errorf("slot %d cannot move from %s to %s", l.Slot, l.State, to)
	}
	version := l.Version
	if v, ok := sets["version"]; ok {
		version, _ = strconv.ParseInt(v.(*types.AttributeValueMemberN).Value, 10, 64)
	}
	entry, err := attributevalue.Marshal([]Transition{s.transition(l.State, to, version, l.Holder, reason, now)})
	if err != nil {
		return Lease{}, fmt.Errorf("encoding history entry: %w", err)
	}
	names := map[string]string{"#v": "version", "#h": "holder", "#s": "state", "#hist": "history", "#u": "updated_at"}
	values := map[string]types.AttributeValue{
		":v": num(l.Version), ":h": str(l.Holder), ":to": str(string(to)), ":now": str(now),
		":entry": entry, ":empty": &types.AttributeValueMemberL{Value: []types.AttributeValue{}},
	}
	update := "SET #s = :to, #u = :now, #hist = list_append(if_not_exists(#hist, :empty), :entry)"
	i := 0
	for k, v := range sets {
		i++
		nk, vk := fmt.Sprintf("#x%d", i), fmt.Sprintf(":x%d", i)
		names[nk], values[vk] = k, v
		update += fmt.Sprintf(", %s = %s", nk, vk)
	}
	if len(removes) > 0 {
		update += " REMOVE "
		for j, k := range removes {
			nk := fmt.Sprintf("#r%d", j)
			names[nk] = k
			if j > 0 {
				update += ", "
			}
			update += nk
		}
	}
	// The condition pins the state the caller saw, not just an allowed one, so the
	// history entry's "from" is what the item really was.
	cond := "#v = :v AND #h = :h AND #s = :from"
	values[":from"] = str(string(l.State))
	if s.Writes != nil {
		s.Writes()
	}
	out, err := s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: &s.table, Key: s.key(l.Slot),
		UpdateExpression: &update, ConditionExpression: &cond,
		ExpressionAttributeNames: names, ExpressionAttributeValues: values,
		ReturnValues: types.ReturnValueAllNew,
	})
	if awsapi.IsConditionFailed(err) {
		return Lease{}, fmt.Errorf("moving slot %d (holder %s, version %d) to %s: %w", l.Slot, l.Holder, l.Version, to, ErrFenced)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("moving slot %d (holder %s, version %d) to %s: %w", l.Slot, l.Holder, l.Version, to, err)
	}
	return decode(out.Attributes)
}

func (s *Store) transition(from, to State, version int64, instance, reason, at string) Transition {
	if from == "" {
		from = Free
	}
	return Transition{At: at, From: from, To: to, Version: version, Instance: instance, Actor: s.Actor, Reason: reason}
}

func (s *Store) stamp() string { return s.Now().UTC().Format(time.RFC3339Nano) }

func decode(item map[string]types.AttributeValue) (Lease, error) {
	var l Lease
	if err := attributevalue.UnmarshalMap(item, &l); err != nil {
		return Lease{}, fmt.Errorf("decoding lease item: %w", err)
	}
	if l.State == "" {
		l.State = Free
	}
	return l, nil
}

func str(s string) types.AttributeValue { return &types.AttributeValueMemberS{Value: s} }
func num(n int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(n, 10)}
}
