package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// The removal token serialises removals: at most one broker of a cluster leaves at a
// time, and the removal-safety verdict of a leaving broker is taken while it holds the
// token, on metadata read after the previous holder finished. It is one item in the
// lease table, in the cluster's partition, at sort key RemovalSlot. List never returns
// it (it lists slots from 0 up), so nothing that reads leases mistakes it for a slot.
//
// Item layout (attribute names are part of the public contract):
//
//	cluster (S)       the cluster, as for leases
//	slot (N)          -1 (RemovalSlot)
//	kind              "removal-token"
//	state             free | held
//	version           incremented by every write (the token's own fencing token)
//	holder_slot, holder, lease_version   the removal holding it: the slot, the
//	                  instance leaving it and the lease version it holds the slot at
//	invocation, invocation_until          the invocation working on that removal, and
//	                  until when it is taken as alive (its deadline)
//	taken_at, updated_at, last_holder, history (newest last, at most HistoryLimit)
//
// Every write is an UpdateItem conditioned on the version read, so of two writers
// exactly one wins; the loser re-reads, and a write of its own that took effect (a
// lost response the SDK retried) is recognised, not mistaken for a lost race.

// RemovalSlot is the sort key of the removal token item.
const RemovalSlot = -1

// RemovalKind is the kind attribute of the removal token item.
const RemovalKind = "removal-token"

// RemovalState is the state of the removal token.
type RemovalState string

// Removal token states.
const (
	RemovalFree RemovalState = "free"
	RemovalHeld RemovalState = "held"
)

// Remover names a removal: the slot leaving, the instance leaving it, the version of
// the lease it holds the slot at, and the invocation working on it.
type Remover struct {
	Slot         int
	Instance     string
	LeaseVersion int64
	// Invocation identifies one invocation of the terminate function; Until is its
	// deadline, after which it is certainly not working on the removal any more.
	Invocation string
	Until      time.Time
}

// Removal is the cluster's removal token as stored.
type Removal struct {
	Cluster         string         `dynamodbav:"cluster"`
	Slot            int            `dynamodbav:"slot"`
	Kind            string         `dynamodbav:"kind,omitempty"`
	State           RemovalState   `dynamodbav:"state"`
	Version         int64          `dynamodbav:"version"`
	HolderSlot      int            `dynamodbav:"holder_slot"`
	Holder          string         `dynamodbav:"holder,omitempty"`
	LeaseVersion    int64          `dynamodbav:"lease_version"`
	Invocation      string         `dynamodbav:"invocation,omitempty"`
	InvocationUntil string         `dynamodbav:"invocation_until,omitempty"`
	TakenAt         string         `dynamodbav:"taken_at,omitempty"`
	LastHolder      string         `dynamodbav:"last_holder,omitempty"`
	UpdatedAt       string         `dynamodbav:"updated_at,omitempty"`
	History         []RemovalEvent `dynamodbav:"history,omitempty"`
}

// RemovalEvent is one entry of the token's history.
type RemovalEvent struct {
	At           string `dynamodbav:"at"`
	Event        string `dynamodbav:"event"` // taken | given back | invocation ended
	Slot         int    `dynamodbav:"slot"`
	Instance     string `dynamodbav:"instance"`
	LeaseVersion int64  `dynamodbav:"lease_version"`
	Actor        string `dynamodbav:"actor,omitempty"`
	Reason       string `dynamodbav:"reason"`
}

// Held reports whether the token is held.
func (r Removal) Held() bool { return r.State == RemovalHeld }

// Exists reports whether the token item has ever been written.
func (r Removal) Exists() bool { return r.UpdatedAt != "" }

// HeldFor reports whether the token is held for the removal m names (slot, instance
// and lease version; whichever invocation).
func (r Removal) HeldFor(m Remover) bool {
	return r.Held() && r.HolderSlot == m.Slot && r.Holder == m.Instance && r.LeaseVersion == m.LeaseVersion
}

// HeldBy reports whether the token is held for m's removal by m's invocation.
func (r Removal) HeldBy(m Remover) bool { return r.HeldFor(m) && r.Invocation == m.Invocation }

// InvocationAlive reports whether the invocation stamped on the token may still be
// working on its removal at now.
func (r Removal) InvocationAlive(now time.Time) bool {
	if r.Invocation == "" || r.InvocationUntil == "" {
		return false
	}
	until, err := time.Parse(time.RFC3339Nano, r.InvocationUntil)
	return err == nil && now.Before(until)
}

// GetRemoval returns the removal token, read consistently. A token never written is
// free at version 0.
func (s *Store) GetRemoval(ctx context.Context) (Removal, error) {
	out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: &s.table, Key: s.key(RemovalSlot), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return Removal{}, fmt.Errorf("reading the removal token of cluster %s: %w", s.cluster, err)
	}
	if out.Item == nil {
		return Removal{Cluster: s.cluster, Slot: RemovalSlot, Kind: RemovalKind, State: RemovalFree}, nil
	}
	var r Removal
	if err := attributevalue.UnmarshalMap(out.Item, &r); err != nil {
		return Removal{}, fmt.Errorf("decoding the removal token: %w", err)
	}
	if r.State == "" {
		r.State = RemovalFree
	}
	return r, nil
}

// TakeRemoval makes m the token's holder, provided the token is still as cur describes
// (same version, or still never written). Whether cur may be taken (free, or held by a
// removal that is over) is the caller's decision. The loser of a race gets ErrFenced.
func (s *Store) TakeRemoval(ctx context.Context, cur Removal, m Remover, reason string) (Removal, error) {
	now := s.stamp()
	next := cur
	next.Cluster, next.Slot, next.Kind, next.State, next.Version = s.cluster, RemovalSlot, RemovalKind, RemovalHeld, cur.Version+1
	if !cur.HeldFor(m) {
		next.TakenAt = now
		if cur.Held() {
			next.LastHolder = cur.Holder
		}
	}
	next.HolderSlot, next.Holder, next.LeaseVersion = m.Slot, m.Instance, m.LeaseVersion
	next.Invocation, next.InvocationUntil, next.UpdatedAt = m.Invocation, m.Until.UTC().Format(time.RFC3339Nano), now
	next.History = s.removalHistory(cur.History, RemovalEvent{At: now, Event: "taken", Slot: m.Slot, Instance: m.Instance, LeaseVersion: m.LeaseVersion, Reason: reason})
	err := s.writeRemoval(ctx, cur, next, nil)
	if errors.Is(err, ErrFenced) {
		if again, gerr := s.GetRemoval(ctx); gerr == nil && again.HeldBy(m) {
			return again, nil // our own write landed; its response was lost
		}
	}
	if err != nil {
		return Removal{}, fmt.Errorf("taking the removal token for slot %d (%s): %w", m.Slot, m.Instance, err)
	}
	return next, nil
}

// GiveBackRemoval frees the token cur describes, provided it is still as read. A give
// back that already happened (free, one version on, with cur's holder as the last
// holder) returns the freed token; a token that changed otherwise returns ErrFenced.
func (s *Store) GiveBackRemoval(ctx context.Context, cur Removal, reason string) (Removal, error) {
	if !cur.Held() {
		return cur, nil
	}
	now := s.stamp()
	next := cur
	next.State, next.Version, next.UpdatedAt, next.LastHolder = RemovalFree, cur.Version+1, now, cur.Holder
	next.HolderSlot, next.Holder, next.LeaseVersion, next.Invocation, next.InvocationUntil, next.TakenAt = 0, "", 0, "", "", ""
	next.History = s.removalHistory(cur.History, RemovalEvent{At: now, Event: "given back", Slot: cur.HolderSlot, Instance: cur.Holder, LeaseVersion: cur.LeaseVersion, Reason: reason})
	err := s.writeRemoval(ctx, cur, next, []string{"holder_slot", "holder", "lease_version", "invocation", "invocation_until", "taken_at"})
	if errors.Is(err, ErrFenced) {
		if again, gerr := s.GetRemoval(ctx); gerr == nil && !again.Held() && again.Version == cur.Version+1 && again.LastHolder == cur.Holder {
			return again, nil
		}
	}
	if err != nil {
		return Removal{}, fmt.Errorf("giving back the removal token held for slot %d (%s): %w", cur.HolderSlot, cur.Holder, err)
	}
	return next, nil
}

// EndRemovalInvocation records that the invocation stamped on cur stopped working on
// its removal (it failed and the event will be delivered again), so that the next
// delivery takes over at once instead of waiting for the invocation's deadline. The
// token stays held for the removal.
func (s *Store) EndRemovalInvocation(ctx context.Context, cur Removal, reason string) (Removal, error) {
	now := s.stamp()
	next := cur
	next.Version, next.InvocationUntil, next.UpdatedAt = cur.Version+1, now, now
	next.History = s.removalHistory(cur.History, RemovalEvent{At: now, Event: "invocation ended", Slot: cur.HolderSlot, Instance: cur.Holder, LeaseVersion: cur.LeaseVersion, Reason: reason})
	if err := s.writeRemoval(ctx, cur, next, nil); err != nil {
		return Removal{}, fmt.Errorf("ending the invocation on the removal token: %w", err)
	}
	return next, nil
}

func (s *Store) removalHistory(hist []RemovalEvent, e RemovalEvent) []RemovalEvent {
	e.Actor = s.Actor
	if len(hist) >= HistoryLimit {
		hist = hist[len(hist)-HistoryLimit+1:]
	}
	return append(append([]RemovalEvent(nil), hist...), e)
}

// writeRemoval writes next over cur, conditioned on cur's version (or on the item's
// absence when cur was never written), and removes the attributes in removes.
func (s *Store) writeRemoval(ctx context.Context, cur, next Removal, removes []string) error {
	item, err := attributevalue.MarshalMap(next)
	if err != nil {
		return fmt.Errorf("encoding the removal token: %w", err)
	}
	delete(item, "cluster")
	delete(item, "slot")
	for _, k := range removes {
		delete(item, k)
	}
	names := map[string]string{}
	values := map[string]types.AttributeValue{}
	update := "SET "
	i := 0
	for k, v := range item {
		nk, vk := fmt.Sprintf("#a%d", i), fmt.Sprintf(":a%d", i)
		names[nk], values[vk] = k, v
		if i > 0 {
			update += ", "
		}
		update += nk + " = " + vk
		i++
	}
	for j, k := range removes {
		nk := fmt.Sprintf("#r%d", j)
		names[nk] = k
		if j == 0 {
			update += " REMOVE "
		} else {
			update += ", "
		}
		update += nk
	}
	var cond string
	if cur.Exists() {
		cond = "#v = :v"
		names["#v"], values[":v"] = "version", num(cur.Version)
	} else {
		cond = "attribute_not_exists(#c)"
		names["#c"] = "cluster"
	}
	if s.Writes != nil {
		s.Writes()
	}
	_, err = s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: &s.table, Key: s.key(RemovalSlot), UpdateExpression: &update, ConditionExpression: &cond,
		ExpressionAttributeNames: names, ExpressionAttributeValues: values,
	})
	if awsapi.IsConditionFailed(err) {
		return ErrFenced
	}
	return err
}
