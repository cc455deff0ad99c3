package lease

// Disk growth state, stored on the slot's lease item next to the lease itself, because
// it belongs to the slot (its data volume), not to whichever instance holds it.
//
// Attributes (part of the public contract, like the lease's own):
//
//	pending_growth  map: a growth that was asked for and is not finished yet (see
//	                PendingGrowth); absent when there is none. Whoever starts a
//	                modification first records it here with a conditional write, and
//	                only that writer calls ModifyVolume
//	growth_history  list of GrowthRecord, newest last, at most GrowthHistoryLimit
//	growth_seq      how many growths were ever recorded; every history write is
//	                conditioned on it, so two concurrent writers cannot lose an entry
//
// Every write here is an UpdateItem conditioned on the item existing, so a slot that
// was never claimed never gets an item from growth bookkeeping.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// GrowthHistoryLimit is how many growth records an item keeps; older ones are dropped.
const GrowthHistoryLimit = 20

// growthWriteAttempts bounds the read-modify-write retries of RecordGrowth; between
// them it backs off by a random growthWriteBackoff × attempt, so that concurrent
// writers (duplicate deliveries, a reconcile run) spread out.
const (
	growthWriteAttempts = 8
	growthWriteBackoff  = 50 * time.Millisecond
)

// PendingGrowth is a growth of the slot's volume that was decided and is not finished:
// ModifyVolume was refused for now (rate limit, a modification in progress), or the
// volume was modified and its filesystem is not grown yet. Whoever finds it later (the
// reconciler, or the next alarm) finishes it.
type PendingGrowth struct {
	VolumeID    string  `dynamodbav:"volume_id"`
	FromGiB     int32   `dynamodbav:"from_gib"`
	ToGiB       int32   `dynamodbav:"to_gib"`
	UsedPercent float64 `dynamodbav:"used_percent"`
	Reason      string  `dynamodbav:"reason"`
	// Since is when the growth was first recorded (RFC 3339).
	Since string `dynamodbav:"since"`
	// UpdatedAt changes with every write; clearing the record is conditioned on it.
	UpdatedAt string `dynamodbav:"updated_at"`
	// Attempts counts the tries that ended in "not now".
	Attempts  int    `dynamodbav:"attempts"`
	LastError string `dynamodbav:"last_error,omitempty"`
	Actor     string `dynamodbav:"actor,omitempty"`
	// Token identifies the invocation that wrote the record last (random per
	// invocation): a write whose response was lost and whose retry then failed its
	// condition is recognised as its own by it.
	Token string `dynamodbav:"token,omitempty"`
	// Until (RFC 3339), while in the future, says that the writer is working on the
	// growth (its ModifyVolume, its wait, its filesystem step) and nobody else may
	// start a modification of the slot's volume; it is the writer's deadline, after
	// which the writer is gone and the reconciler takes the growth over. Empty once
	// the growth was put off.
	Until string `dynamodbav:"until,omitempty"`
	// NotBefore (RFC 3339) is the earliest time the growth's modification may start
	// (EBS's rate rule: SLOTKEEPER_GROW_MAX_PER_DAY, SLOTKEEPER_GROW_MIN_INTERVAL);
	// empty when it may start at once.
	NotBefore string `dynamodbav:"not_before,omitempty"`
}

// InProgress reports whether the writer of p is still working on it at now.
func (p PendingGrowth) InProgress(now time.Time) bool { return after(p.Until, now) }

// Waiting reports whether p's modification may not start yet at now (rate rule).
func (p PendingGrowth) Waiting(now time.Time) bool { return after(p.NotBefore, now) }

// after reports whether the RFC 3339 time stamp is after now; an empty or unreadable
// one is not.
func after(stamp string, now time.Time) bool {
	t, err := time.Parse(time.RFC3339Nano, stamp)
	return err == nil && t.After(now)
}

// GrowthRecord is one entry of a slot's growth history: a growth that finished (the
// volume was modified and its filesystem grown).
type GrowthRecord struct {
	At          string  `dynamodbav:"at"`
	VolumeID    string  `dynamodbav:"volume_id"`
	FromGiB     int32   `dynamodbav:"from_gib"`
	ToGiB       int32   `dynamodbav:"to_gib"`
	UsedPercent float64 `dynamodbav:"used_percent,omitempty"`
	Instance    string  `dynamodbav:"instance,omitempty"` // whose filesystem was grown
	Actor       string  `dynamodbav:"actor,omitempty"`
	Reason      string  `dynamodbav:"reason"`
	// ModifiedAt (RFC 3339) is when EBS started the volume modification (its
	// StartTime): what EBS's rate rule counts.
	ModifiedAt string `dynamodbav:"modified_at,omitempty"`
}

// ModificationTimes returns when the modifications of volume in the history started
// (ModifiedAt, or At for records that predate it), oldest first.
func (g Growth) ModificationTimes(volume string) []time.Time {
	var out []time.Time
	for _, r := range g.History {
		if r.VolumeID != volume {
			continue
		}
		stamp := r.ModifiedAt
		if stamp == "" {
			stamp = r.At
		}
		if t, err := time.Parse(time.RFC3339Nano, stamp); err == nil {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, time.Time.Compare)
	return out
}

// LastGrown returns when the history last recorded a finished growth of volume (its
// filesystem grown), or the zero time.
func (g Growth) LastGrown(volume string) time.Time {
	var last time.Time
	for _, r := range g.History {
		if t, err := time.Parse(time.RFC3339Nano, r.At); err == nil && r.VolumeID == volume && t.After(last) {
			last = t
		}
	}
	return last
}

// Growth is the growth state of one slot.
type Growth struct {
	Slot    int            `dynamodbav:"slot"`
	Pending *PendingGrowth `dynamodbav:"pending_growth,omitempty"`
	History []GrowthRecord `dynamodbav:"growth_history,omitempty"`
	Seq     int64          `dynamodbav:"growth_seq,omitempty"`
	// Exists is false when the slot has no lease item (it was never claimed).
	Exists bool `dynamodbav:"-"`
}

// Grown reports whether the history holds a finished growth of volume to sizeGiB.
// Sizes only ever grow, so a volume reaches each size at most once.
func (g Growth) Grown(volumeID string, sizeGiB int32) bool {
	for _, r := range g.History {
		if r.VolumeID == volumeID && r.ToGiB == sizeGiB {
			return true
		}
	}
	return false
}

// Attribute names of the growth state.
const (
	attrPending = "pending_growth"
	attrHistory = "growth_history"
	attrSeq     = "growth_seq"
)

// Growth returns the growth state of slot, read consistently.
func (s *Store) Growth(ctx context.Context, slot int) (Growth, error) {
	out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: &s.table, Key: s.key(slot), ConsistentRead: aws.Bool(true),
		ProjectionExpression:     aws.String("#c, #s, #p, #gh, #gs"),
		ExpressionAttributeNames: map[string]string{"#c": "cluster", "#s": "slot", "#p": attrPending, "#gh": attrHistory, "#gs": attrSeq},
	})
	if err != nil {
		return Growth{}, fmt.Errorf("reading growth state of slot %d: %w", slot, err)
	}
	if out.Item == nil {
		return Growth{Slot: slot}, nil
	}
	return decodeGrowth(out.Item)
}

// LeaseAndGrowth returns slot's lease and growth state from one consistent read. A
// never-claimed slot is Free at version 0 with no growth state.
func (s *Store) LeaseAndGrowth(ctx context.Context, slot int) (Lease, Growth, error) {
	out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: &s.table, Key: s.key(slot), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return Lease{}, Growth{}, fmt.Errorf("reading lease of slot %d: %w", slot, err)
	}
	if out.Item == nil {
		return Lease{Cluster: s.cluster, Slot: slot, State: Free}, Growth{Slot: slot}, nil
	}
	l, err := decode(out.Item)
	if err != nil {
		return Lease{}, Growth{}, err
	}
	g, err := decodeGrowth(out.Item)
	return l, g, err
}

// PendingGrowths returns the pending growth of every slot that has one, by slot.
func (s *Store) PendingGrowths(ctx context.Context) (map[int]PendingGrowth, error) {
	in := &dynamodb.QueryInput{
		TableName:                 &s.table,
		KeyConditionExpression:    aws.String("#c = :c"),
		FilterExpression:          aws.String("attribute_exists(#p)"),
		ProjectionExpression:      aws.String("#c, #s, #p"),
		ExpressionAttributeNames:  map[string]string{"#c": "cluster", "#s": "slot", "#p": attrPending},
		ExpressionAttributeValues: map[string]types.AttributeValue{":c": str(s.cluster)},
		ConsistentRead:            aws.Bool(true),
	}
	pending := map[int]PendingGrowth{}
	for p := dynamodb.NewQueryPaginator(s.db, in); p.HasMorePages(); {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing pending growths of cluster %s: %w", s.cluster, err)
		}
		for _, item := range page.Items {
			g, err := decodeGrowth(item)
			if err != nil {
				return nil, err
			}
			if g.Pending != nil {
				pending[g.Slot] = *g.Pending
			}
		}
	}
	return pending, nil
}

// stampPending stamps p.UpdatedAt (and p.Since and p.Actor when empty) for a write
// of slot's pending growth, and encodes it.
func (s *Store) stampPending(slot int, p PendingGrowth) (PendingGrowth, types.AttributeValue, error) {
	now := s.stamp()
	if p.Since == "" {
		p.Since = now
	}
	p.UpdatedAt = now
	if p.Actor == "" {
		p.Actor = s.Actor
	}
	av, err := attributevalue.Marshal(p)
	if err != nil {
		return PendingGrowth{}, nil, fmt.Errorf("encoding pending growth of slot %d: %w", slot, err)
	}
	return p, av, nil
}

// SetPendingGrowth records p as slot's pending growth, replacing any earlier one (a
// newer decision supersedes an older one). It stamps p.UpdatedAt, and p.Since when it
// is empty, and returns p as written. It fails with ErrFenced when the slot has no
// lease item.
func (s *Store) SetPendingGrowth(ctx context.Context, slot int, p PendingGrowth) (PendingGrowth, error) {
	p, av, err := s.stampPending(slot, p)
	if err != nil {
		return PendingGrowth{}, err
	}
	err = s.update(ctx, slot, "SET #p = :p", "attribute_exists(#c)",
		map[string]string{"#p": attrPending, "#c": "cluster"},
		map[string]types.AttributeValue{":p": av})
	if err != nil {
		return PendingGrowth{}, fmt.Errorf("recording pending growth of slot %d (%s to %d GiB): %w", slot, p.VolumeID, p.ToGiB, err)
	}
	return p, nil
}

// WritePending records p as slot's pending growth if the pending growth is still
// prev, as read or last written by the caller (nil: there was none, and then also only
// if growth_seq is still seq, unless seq < 0), so that of two invocations deciding a
// growth at the same time exactly one records it, and only that one goes on to modify
// the volume, even when the other read the slot before the first had finished its
// whole growth and cleared its record. It stamps p.UpdatedAt (and p.Since and
// p.Actor when empty) and returns p as written. p.Token must identify the caller: a
// write whose response was lost, retried by the SDK and then refused by its own
// condition, is recognised by it and reported as done. Any other refusal is ErrFenced
// (someone else wrote in between, or the slot has no lease item).
func (s *Store) WritePending(ctx context.Context, slot int, prev *PendingGrowth, seq int64, p PendingGrowth) (PendingGrowth, error) {
	if p.Token == "" {
		return PendingGrowth{}, fmt.Errorf("recording pending growth of slot %d: no token", slot)
	}
	p, av, err := s.stampPending(slot, p)
	if err != nil {
		return PendingGrowth{}, err
	}
	names := map[string]string{"#p": attrPending}
	values := map[string]types.AttributeValue{":p": av}
	cond := "attribute_exists(#c) AND attribute_not_exists(#p)"
	names["#c"] = "cluster"
	switch {
	case prev == nil && seq == 0:
		names["#gs"] = attrSeq
		cond += " AND attribute_not_exists(#gs)"
	case prev == nil && seq > 0:
		names["#gs"] = attrSeq
		values[":seq"] = num(seq)
		cond += " AND #gs = :seq"
	}
	if prev != nil {
		delete(names, "#c")
		names["#pu"] = "updated_at"
		values[":pu"] = str(prev.UpdatedAt)
		cond = "#p.#pu = :pu"
	}
	err = s.update(ctx, slot, "SET #p = :p", cond, names, values)
	if errors.Is(err, ErrFenced) {
		// Our own earlier attempt may have taken effect (a lost response).
		g, gerr := s.Growth(ctx, slot)
		if gerr == nil && g.Pending != nil && g.Pending.Token == p.Token && g.Pending.UpdatedAt == p.UpdatedAt {
			return p, nil
		}
	}
	if err != nil {
		return PendingGrowth{}, fmt.Errorf("recording pending growth of slot %d (%s to %d GiB): %w", slot, p.VolumeID, p.ToGiB, err)
	}
	return p, nil
}

// ClearPendingGrowth removes slot's pending growth if it is still p (same UpdatedAt);
// a record that changed since it was read is left alone and ErrFenced returned.
func (s *Store) ClearPendingGrowth(ctx context.Context, slot int, p PendingGrowth) error {
	err := s.update(ctx, slot, "REMOVE #p", "#p.#pu = :pu",
		map[string]string{"#p": attrPending, "#pu": "updated_at"},
		map[string]types.AttributeValue{":pu": str(p.UpdatedAt)})
	if err != nil {
		return fmt.Errorf("clearing pending growth of slot %d: %w", slot, err)
	}
	return nil
}

// RecordGrowth appends rec to slot's growth history (dropping the oldest entries beyond
// GrowthHistoryLimit) and, in the same write, clears the pending growth if rec
// fulfils it (same volume, at least its size). Recording a growth that the history
// already holds (same volume and size) writes nothing but still clears a pending growth
// it fulfils, so it is safe to repeat. It stamps rec.At when empty and reports whether
// a pending growth was cleared.
func (s *Store) RecordGrowth(ctx context.Context, slot int, rec GrowthRecord) (cleared bool, err error) {
	if rec.At == "" {
		rec.At = s.stamp()
	}
	if rec.Actor == "" {
		rec.Actor = s.Actor
	}
	for attempt := 1; ; attempt++ {
		g, err := s.Growth(ctx, slot)
		if err != nil {
			return false, err
		}
		if !g.Exists {
			return false, fmt.Errorf("recording growth of slot %d: no lease item: %w", slot, ErrFenced)
		}
		fulfils := g.Pending != nil && g.Pending.VolumeID == rec.VolumeID && g.Pending.ToGiB <= rec.ToGiB
		known := g.Grown(rec.VolumeID, rec.ToGiB)
		if known && !fulfils {
			return false, nil
		}
		err = s.writeGrowth(ctx, slot, g, rec, !known, fulfils)
		if err == nil {
			return fulfils, nil
		}
		if !errors.Is(err, ErrFenced) || attempt == growthWriteAttempts {
			return false, fmt.Errorf("recording growth of slot %d (%s %d -> %d GiB): %w", slot, rec.VolumeID, rec.FromGiB, rec.ToGiB, err)
		}
		// Someone else wrote the growth state since it was read: read it again.
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("recording growth of slot %d: %w", slot, ctx.Err())
		case <-time.After(rand.N(growthWriteBackoff * time.Duration(attempt))):
		}
	}
}

// writeGrowth appends rec (when add) and removes the pending growth (when clear), both
// conditioned on the state being as g describes it.
func (s *Store) writeGrowth(ctx context.Context, slot int, g Growth, rec GrowthRecord, add, clearPending bool) error {
	names := map[string]string{"#c": "cluster"}
	values := map[string]types.AttributeValue{}
	cond := "attribute_exists(#c)"
	var update string
	if add {
		hist := append(append([]GrowthRecord(nil), g.History...), rec)
		if len(hist) > GrowthHistoryLimit {
			hist = hist[len(hist)-GrowthHistoryLimit:]
		}
		av, err := attributevalue.Marshal(hist)
		if err != nil {
			return fmt.Errorf("encoding growth history: %w", err)
		}
		names["#gh"], names["#gs"] = attrHistory, attrSeq
		values[":gh"], values[":next"] = av, num(g.Seq+1)
		update = "SET #gh = :gh, #gs = :next"
		if g.Seq == 0 {
			cond += " AND attribute_not_exists(#gs)"
		} else {
			values[":seq"] = num(g.Seq)
			cond += " AND #gs = :seq"
		}
	}
	if clearPending {
		names["#p"], names["#pu"] = attrPending, "updated_at"
		values[":pu"] = str(g.Pending.UpdatedAt)
		update += " REMOVE #p"
		cond += " AND #p.#pu = :pu"
	}
	return s.update(ctx, slot, strings.TrimSpace(update), cond, names, values)
}

// update runs one conditioned UpdateItem on slot's item; a failed condition is ErrFenced.
func (s *Store) update(ctx context.Context, slot int, update, cond string, names map[string]string, values map[string]types.AttributeValue) error {
	if s.Writes != nil {
		s.Writes()
	}
	in := &dynamodb.UpdateItemInput{
		TableName: &s.table, Key: s.key(slot),
		UpdateExpression: &update, ConditionExpression: &cond,
		ExpressionAttributeNames: names,
	}
	if len(values) > 0 {
		in.ExpressionAttributeValues = values
	}
	_, err := s.db.UpdateItem(ctx, in)
	if awsapi.IsConditionFailed(err) {
		return ErrFenced
	}
	return err
}

func decodeGrowth(item map[string]types.AttributeValue) (Growth, error) {
	var g Growth
	if err := attributevalue.UnmarshalMap(item, &g); err != nil {
		return Growth{}, fmt.Errorf("decoding growth state: %w", err)
	}
	g.Exists = item["cluster"] != nil
	return g, nil
}
