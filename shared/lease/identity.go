package lease

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// ErrRecordConflict means the lease already records another resource of the kind
// being recorded: the slot's identity is not what the caller found, and the caller
// must not go on with what it found.
var ErrRecordConflict = errors.New("the lease records another resource")

// Resource kinds a lease records.
const (
	KindVolume = "volume"
	KindENI    = "eni"
)

// Recorded returns the id the lease records for kind (KindVolume or KindENI).
func (l Lease) Recorded(kind string) string {
	if kind == KindENI {
		return l.ENIID
	}
	return l.VolumeID
}

// RecordedBy returns the version of the claim that recorded the id of kind (0 when
// unknown: written at bind by an earlier version, or by an operator).
func (l Lease) RecordedBy(kind string) int64 {
	if kind == KindENI {
		return l.ENIClaim
	}
	return l.VolumeClaim
}

// UnboundSince reports whether the lease proves that the slot has not been bound since
// the claim at version v: its history still holds an entry of that claim (to claimed,
// at version v; the history is trimmed from its oldest end, so everything after that
// entry is kept) and no bind at version v or later. A volume recorded by claim v that
// the slot was never bound with since has never been used by a broker: the broker user
// data waits for the bind before it touches the volume. Without proof (v unknown, the
// history trimmed, a lease written by hand) it returns false.
func (l Lease) UnboundSince(v int64) bool {
	if v <= 0 || l.State == Bound || l.State == Draining {
		return false
	}
	anchored := false
	for _, tr := range l.History {
		if tr.To == Bound && tr.Version >= v {
			return false
		}
		if tr.To == Claimed && tr.Version == v {
			anchored = true
		}
	}
	return anchored
}

// Record writes the id of the slot's volume (kind KindVolume) or ENI (kind KindENI,
// with its private ip) into the lease as soon as the resource exists: from then on
// every path uses the recorded id, and tags only cross-check it. It is RecordIDs for
// one kind.
func (s *Store) Record(ctx context.Context, l Lease, kind, id, ip, reason string) (Lease, error) {
	ids := IDs{VolumeID: id}
	if kind == KindENI {
		ids = IDs{ENIID: id, IP: ip}
	}
	return s.RecordIDs(ctx, l, ids, reason)
}

// IDs are the resource ids RecordIDs writes: the ENI's (with its IP) and the
// volume's; an empty id is left alone.
type IDs struct {
	ENIID, IP, VolumeID string
}

// kinds returns the kinds ids names, ENI first.
func (ids IDs) kinds() []string {
	var k []string
	if ids.ENIID != "" {
		k = append(k, KindENI)
	}
	if ids.VolumeID != "" {
		k = append(k, KindVolume)
	}
	return k
}

func (ids IDs) of(kind string) string {
	if kind == KindENI {
		return ids.ENIID
	}
	return ids.VolumeID
}

// RecordIDs writes the ids of the slot's ENI (with its private IP) and volume that
// ids names into the lease, in one write, as soon as the resources exist: from then on
// every path uses the recorded ids, and tags only cross-check them.
//
// The write is fenced (the version and holder l has, state claimed: only the claimer
// records) and never replaces a recorded id: it succeeds only while the lease records
// none of the kinds written. It also records the claim (l.Version) that recorded each
// id (volume_claim, eni_claim). A retry of a write that took effect (a lost response)
// finds the same ids recorded and returns the lease as stored; another id recorded
// for a kind is ErrRecordConflict, returned with the lease as stored (the caller uses
// the ids it records). The history gets one entry, reason.
func (s *Store) RecordIDs(ctx context.Context, l Lease, ids IDs, reason string) (Lease, error) {
	kinds := ids.kinds()
	if len(kinds) == 0 {
		return Lease{}, fmt.Errorf("recording resources of slot %d: no id to record", l.Slot)
	}
	what := fmt.Sprintf("%v %s/%s", kinds, ids.ENIID, ids.VolumeID)
	if l.State != Claimed {
		return Lease{}, fmt.Errorf("recording %s for slot %d: the lease is %s, not claimed: %w", what, l.Slot, l.State, ErrFenced)
	}
	now := s.stamp()
	entry, err := attributevalue.Marshal([]Transition{s.transition(l.State, l.State, l.Version, l.Holder, reason, now)})
	if err != nil {
		return Lease{}, fmt.Errorf("encoding history entry: %w", err)
	}
	names := map[string]string{"#v": "version", "#h": "holder", "#s": "state", "#hist": "history", "#u": "updated_at"}
	values := map[string]types.AttributeValue{
		":v": num(l.Version), ":h": str(l.Holder), ":s": str(string(Claimed)), ":now": str(now),
		":entry": entry, ":empty": &types.AttributeValueMemberL{Value: []types.AttributeValue{}}, ":blank": str(""),
	}
	update := "SET #u = :now, #hist = list_append(if_not_exists(#hist, :empty), :entry)"
	cond := "#v = :v AND #h = :h AND #s = :s"
	for _, kind := range kinds {
		attr, claimAttr, p := "volume_id", "volume_claim", "vol"
		if kind == KindENI {
			attr, claimAttr, p = "eni_id", "eni_claim", "eni"
		}
		names["#"+p], names["#"+p+"c"] = attr, claimAttr
		values[":"+p] = str(ids.of(kind))
		update += fmt.Sprintf(", #%s = :%s, #%sc = :v", p, p, p)
		cond += fmt.Sprintf(" AND (attribute_not_exists(#%s) OR #%s = :blank)", p, p)
	}
	if ids.ENIID != "" {
		names["#ip"], values[":ip"] = "ip", str(ids.IP)
		update += ", #ip = :ip"
	}
	if s.Writes != nil {
		s.Writes()
	}
	out, err := s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: &s.table, Key: s.key(l.Slot), UpdateExpression: &update, ConditionExpression: &cond,
		ExpressionAttributeNames: names, ExpressionAttributeValues: values, ReturnValues: types.ReturnValueAllNew,
	})
	if err == nil {
		return decode(out.Attributes)
	}
	if !awsapi.IsConditionFailed(err) {
		return Lease{}, fmt.Errorf("recording %s for slot %d: %w", what, l.Slot, err)
	}
	// Our own earlier attempt, or someone else: read what is there.
	cur, gerr := s.Get(ctx, l.Slot)
	if gerr != nil {
		return Lease{}, fmt.Errorf("recording %s for slot %d: condition failed, and reading it back: %w", what, l.Slot, gerr)
	}
	if cur.Version != l.Version || cur.Holder != l.Holder || cur.State != Claimed {
		return Lease{}, fmt.Errorf("recording %s for slot %d (holder %s, version %d): %w", what, l.Slot, l.Holder, l.Version, ErrFenced)
	}
	for _, kind := range kinds {
		if cur.Recorded(kind) != ids.of(kind) {
			return cur, fmt.Errorf("recording %s for slot %d: it records %s %s: %w", what, l.Slot, kind, cur.Recorded(kind), ErrRecordConflict)
		}
	}
	return cur, nil
}

// Forget removes the recorded ids of kinds (KindVolume; KindENI also removes ip) from
// a slot whose recorded resources are gone, so that the next launch gives the slot new
// ones. It is the operator's explicit act (slotctl reset): it does not change the
// state, holder or version, and it succeeds only if the item is exactly as l was read
// (same version and update time). The history gets one entry with the reason.
func (s *Store) Forget(ctx context.Context, l Lease, kinds []string, reason string) (Lease, error) {
	if !l.Exists() {
		return Lease{}, fmt.Errorf("slot %d has no lease item: nothing is recorded", l.Slot)
	}
	now := s.stamp()
	entry, err := attributevalue.Marshal([]Transition{s.transition(l.State, l.State, l.Version, l.Holder, reason, now)})
	if err != nil {
		return Lease{}, fmt.Errorf("encoding history entry: %w", err)
	}
	names := map[string]string{"#v": "version", "#u": "updated_at", "#hist": "history"}
	values := map[string]types.AttributeValue{
		":v": num(l.Version), ":u": str(l.UpdatedAt), ":now": str(now),
		":entry": entry, ":empty": &types.AttributeValueMemberL{Value: []types.AttributeValue{}},
	}
	update := "SET #u = :now, #hist = list_append(if_not_exists(#hist, :empty), :entry) REMOVE "
	var removes []string
	for _, k := range kinds {
		switch k {
		case KindVolume:
			removes = append(removes, "volume_id", "volume_claim")
		case KindENI:
			removes = append(removes, "eni_id", "eni_claim", "ip")
		default:
			return Lease{}, fmt.Errorf("unknown resource kind %q", k)
		}
	}
	if len(removes) == 0 {
		return Lease{}, errors.New("nothing to forget")
	}
	for i, a := range removes {
		k := fmt.Sprintf("#r%d", i)
		names[k] = a
		if i > 0 {
			update += ", "
		}
		update += k
	}
	cond := "#v = :v AND #u = :u"
	if s.Writes != nil {
		s.Writes()
	}
	out, err := s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: &s.table, Key: s.key(l.Slot), UpdateExpression: &update, ConditionExpression: &cond,
		ExpressionAttributeNames: names, ExpressionAttributeValues: values, ReturnValues: types.ReturnValueAllNew,
	})
	if awsapi.IsConditionFailed(err) {
		return Lease{}, fmt.Errorf("forgetting the resources of slot %d: %w", l.Slot, ErrFenced)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("forgetting the resources of slot %d: %w", l.Slot, err)
	}
	return decode(out.Attributes)
}
