package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
//	                  until when it is taken as alive: a short stamp (about two
//	                  heartbeat intervals) that the invocation renews while it works
//	stopped           true once the removal's stop-and-unmount command confirmed that
//	                  its broker stopped and its volume is unmounted
//	displaced         the removals the token was taken from by force (past their
//	                  bound) while they were not over: each may still stop its broker,
//	                  so the token is handed to them in turn, not freed, when the
//	                  holder's removal ends (list of holder_slot, holder,
//	                  lease_version, stopped)
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
	Stopped         bool           `dynamodbav:"stopped,omitempty"`
	TakenAt         string         `dynamodbav:"taken_at,omitempty"`
	LastHolder      string         `dynamodbav:"last_holder,omitempty"`
	UpdatedAt       string         `dynamodbav:"updated_at,omitempty"`
	Displaced       []Displaced    `dynamodbav:"displaced,omitempty"`
	History         []RemovalEvent `dynamodbav:"history,omitempty"`
}

// Displaced is a removal the token was taken from by force while it was not over.
type Displaced struct {
	HolderSlot   int    `dynamodbav:"holder_slot"`
	Holder       string `dynamodbav:"holder"`
	LeaseVersion int64  `dynamodbav:"lease_version"`
	Stopped      bool   `dynamodbav:"stopped,omitempty"`
}

// Is reports whether d is m's removal.
func (d Displaced) Is(m Remover) bool {
	return d.HolderSlot == m.Slot && d.Holder == m.Instance && d.LeaseVersion == m.LeaseVersion
}

// DisplacedBy reports whether m's removal is one the token was taken from by force.
func (r Removal) DisplacedBy(m Remover) bool {
	return slices.ContainsFunc(r.Displaced, func(d Displaced) bool { return d.Is(m) })
}

// RemovalEvent is one entry of the token's history.
type RemovalEvent struct {
	At           string `dynamodbav:"at"`
	Event        string `dynamodbav:"event"` // taken | stopped | given back | invocation ended
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
// The token's displaced removals stay displaced (m's own is taken off the list).
func (s *Store) TakeRemoval(ctx context.Context, cur Removal, m Remover, reason string) (Removal, error) {
	return s.takeRemoval(ctx, cur, m, reason, false)
}

// TakeOverRemoval is TakeRemoval for a token taken by force from a removal that is not
// over (past the taker's bound): that removal joins the displaced ones, and the token
// is handed back to it when m's removal ends (GiveBackRemoval).
func (s *Store) TakeOverRemoval(ctx context.Context, cur Removal, m Remover, reason string) (Removal, error) {
	return s.takeRemoval(ctx, cur, m, reason, true)
}

func (s *Store) takeRemoval(ctx context.Context, cur Removal, m Remover, reason string, displace bool) (Removal, error) {
	now := s.stamp()
	next := cur
	next.Cluster, next.Slot, next.Kind, next.State, next.Version = s.cluster, RemovalSlot, RemovalKind, RemovalHeld, cur.Version+1
	if !cur.HeldFor(m) {
		next.TakenAt, next.Stopped = now, false
		if cur.Held() {
			next.LastHolder = cur.Holder
		}
		var displaced []Displaced
		if displace && cur.Held() {
			displaced = append(displaced, Displaced{HolderSlot: cur.HolderSlot, Holder: cur.Holder, LeaseVersion: cur.LeaseVersion, Stopped: cur.Stopped})
		}
		for _, d := range cur.Displaced {
			if !d.Is(m) {
				displaced = append(displaced, d)
			}
		}
		next.Displaced = displaced
	}
	next.HolderSlot, next.Holder, next.LeaseVersion = m.Slot, m.Instance, m.LeaseVersion
	next.Invocation, next.InvocationUntil, next.UpdatedAt = m.Invocation, m.Until.UTC().Format(time.RFC3339Nano), now
	next.History = s.removalHistory(cur.History, RemovalEvent{At: now, Event: "taken", Slot: m.Slot, Instance: m.Instance, LeaseVersion: m.LeaseVersion, Reason: reason})
	var removes []string
	if len(next.Displaced) == 0 {
		removes = []string{"displaced"}
	}
	err := s.writeRemoval(ctx, cur, next, removes)
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

// GiveBackRemoval ends the holding of the token cur describes, provided it is still as
// read: it frees the token, or, while removals are displaced, hands it to the first of
// them (held for it, with no invocation stamped: the next one working on that removal
// carries it on, and others wait until that removal is over). A give back that already
// happened (one version on, with cur's holder as the last holder) returns the token as
// it left it; a token that changed otherwise returns ErrFenced.
func (s *Store) GiveBackRemoval(ctx context.Context, cur Removal, reason string) (Removal, error) {
	if !cur.Held() {
		return cur, nil
	}
	now := s.stamp()
	next := cur
	next.State, next.Version, next.UpdatedAt, next.LastHolder = RemovalFree, cur.Version+1, now, cur.Holder
	next.HolderSlot, next.Holder, next.LeaseVersion, next.Invocation, next.InvocationUntil, next.TakenAt = 0, "", 0, "", "", ""
	next.Stopped, next.Displaced = false, nil
	removes := []string{"holder_slot", "holder", "lease_version", "invocation", "invocation_until", "taken_at", "displaced"}
	event := RemovalEvent{At: now, Event: "given back", Slot: cur.HolderSlot, Instance: cur.Holder, LeaseVersion: cur.LeaseVersion, Reason: reason}
	if len(cur.Displaced) > 0 {
		d := cur.Displaced[0]
		next.State, next.HolderSlot, next.Holder, next.LeaseVersion, next.Stopped, next.TakenAt = RemovalHeld, d.HolderSlot, d.Holder, d.LeaseVersion, d.Stopped, now
		next.Displaced = slices.Clone(cur.Displaced[1:])
		removes = []string{"invocation", "invocation_until"}
		if len(next.Displaced) == 0 {
			removes = append(removes, "displaced")
		}
		event.Reason = fmt.Sprintf("%s; handed back to the removal of slot %d (%s), whose token was taken by force while it was not over", reason, d.HolderSlot, d.Holder)
	}
	next.History = s.removalHistory(cur.History, event)
	err := s.writeRemoval(ctx, cur, next, removes)
	if errors.Is(err, ErrFenced) {
		if again, gerr := s.GetRemoval(ctx); gerr == nil && again.Version == cur.Version+1 && again.LastHolder == cur.Holder &&
			again.Held() == next.Held() && again.Holder == next.Holder {
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

// MarkRemovalStopped records on the token cur describes (held) that its removal's
// broker was seen stopped and its volume unmounted: from then on the removal counts
// as over once its slot is released, even while the instance still runs. A mark that
// already took effect (a lost response the SDK retried) is recognised.
func (s *Store) MarkRemovalStopped(ctx context.Context, cur Removal, reason string) (Removal, error) {
	if !cur.Held() {
		return Removal{}, fmt.Errorf("marking the removal token stopped: it is not held: %w", ErrFenced)
	}
	if cur.Stopped {
		return cur, nil
	}
	now := s.stamp()
	next := cur
	next.Version, next.Stopped, next.UpdatedAt = cur.Version+1, true, now
	next.History = s.removalHistory(cur.History, RemovalEvent{At: now, Event: "stopped", Slot: cur.HolderSlot, Instance: cur.Holder, LeaseVersion: cur.LeaseVersion, Reason: reason})
	err := s.writeRemoval(ctx, cur, next, nil)
	if errors.Is(err, ErrFenced) {
		if again, gerr := s.GetRemoval(ctx); gerr == nil && again.Held() && again.Stopped && again.HolderSlot == cur.HolderSlot &&
			again.Holder == cur.Holder && again.LeaseVersion == cur.LeaseVersion {
			return again, nil
		}
	}
	if err != nil {
		return Removal{}, fmt.Errorf("marking the removal of slot %d (%s) stopped on the removal token: %w", cur.HolderSlot, cur.Holder, err)
	}
	return next, nil
}

// MarkDisplacedStopped records on the token cur describes that m's removal, one of its
// displaced removals, saw its broker stopped and its volume unmounted (as
// MarkRemovalStopped does for the holder's). It is a no-op when m's removal is not
// displaced or already marked.
func (s *Store) MarkDisplacedStopped(ctx context.Context, cur Removal, m Remover, reason string) (Removal, error) {
	i := slices.IndexFunc(cur.Displaced, func(d Displaced) bool { return d.Is(m) })
	if i < 0 || cur.Displaced[i].Stopped {
		return cur, nil
	}
	now := s.stamp()
	next := cur
	next.Displaced = slices.Clone(cur.Displaced)
	next.Displaced[i].Stopped = true
	next.Version, next.UpdatedAt = cur.Version+1, now
	next.History = s.removalHistory(cur.History, RemovalEvent{At: now, Event: "stopped", Slot: m.Slot, Instance: m.Instance, LeaseVersion: m.LeaseVersion, Reason: reason + " (a displaced removal)"})
	err := s.writeRemoval(ctx, cur, next, nil)
	if errors.Is(err, ErrFenced) {
		if again, gerr := s.GetRemoval(ctx); gerr == nil {
			if j := slices.IndexFunc(again.Displaced, func(d Displaced) bool { return d.Is(m) }); j >= 0 && again.Displaced[j].Stopped {
				return again, nil
			}
		}
	}
	if err != nil {
		return Removal{}, fmt.Errorf("marking the displaced removal of slot %d (%s) stopped on the removal token: %w", m.Slot, m.Instance, err)
	}
	return next, nil
}

// DropDisplaced takes d, a displaced removal that is over (its broker was seen stopped,
// or its instance no longer runs), off the token cur describes, so that the token is
// not handed back to a removal that nobody will give it back for. A drop that already
// took effect (a lost response) is recognised; a token that changed otherwise returns
// ErrFenced.
func (s *Store) DropDisplaced(ctx context.Context, cur Removal, d Displaced, reason string) (Removal, error) {
	m := Remover{Slot: d.HolderSlot, Instance: d.Holder, LeaseVersion: d.LeaseVersion}
	if !cur.DisplacedBy(m) {
		return cur, nil
	}
	now := s.stamp()
	next := cur
	next.Displaced = slices.DeleteFunc(slices.Clone(cur.Displaced), func(x Displaced) bool { return x.Is(m) })
	next.Version, next.UpdatedAt = cur.Version+1, now
	next.History = s.removalHistory(cur.History, RemovalEvent{At: now, Event: "given back", Slot: d.HolderSlot, Instance: d.Holder, LeaseVersion: d.LeaseVersion, Reason: reason + " (a displaced removal, over)"})
	var removes []string
	if len(next.Displaced) == 0 {
		next.Displaced, removes = nil, []string{"displaced"}
	}
	err := s.writeRemoval(ctx, cur, next, removes)
	if errors.Is(err, ErrFenced) {
		if again, gerr := s.GetRemoval(ctx); gerr == nil && again.Version == cur.Version+1 && !again.DisplacedBy(m) &&
			again.Held() && again.HolderSlot == cur.HolderSlot && again.Holder == cur.Holder && again.LeaseVersion == cur.LeaseVersion {
			return again, nil
		}
	}
	if err != nil {
		return Removal{}, fmt.Errorf("taking the displaced removal of slot %d (%s) off the removal token: %w", d.HolderSlot, d.Holder, err)
	}
	return next, nil
}

// RenewRemoval moves the stamp of the invocation on cur (held) on to until: the
// invocation is still working on its removal. It writes no history. A renewal that
// already took effect (a lost response) is recognised.
func (s *Store) RenewRemoval(ctx context.Context, cur Removal, until time.Time) (Removal, error) {
	next := cur
	next.Version, next.InvocationUntil, next.UpdatedAt = cur.Version+1, until.UTC().Format(time.RFC3339Nano), s.stamp()
	err := s.writeRemoval(ctx, cur, next, nil)
	if errors.Is(err, ErrFenced) {
		if again, gerr := s.GetRemoval(ctx); gerr == nil && again.Held() && again.Invocation == cur.Invocation && again.InvocationUntil == next.InvocationUntil {
			return again, nil
		}
	}
	if err != nil {
		return Removal{}, fmt.Errorf("renewing the removal token's stamp of %s: %w", cur.Invocation, err)
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
	if !next.Stopped {
		removes = append(slices.Clone(removes), "stopped")
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

// A removal's start is recorded on the slot's lease item, so that the bound of its
// removal gate (the wait for the removal token and for removal safety) counts from
// the first delivery of its lifecycle event and survives redeliveries: a delivery
// that dies or fails does not give the next one a fresh bound. Two attributes, part
// of the public contract, hold it:
//
//	removal_started_at     RFC 3339 time the removal first asked for the token
//	removal_lease_version  the lease version (holder's claim) that removal is of
//
// They are written once per claim (a later claim's removal writes them anew) and are
// ignored unless removal_lease_version is the lease's current version.

// RemovalStarted returns when the removal of l (its holder leaving the slot at its
// version) started: the time recorded on the lease item for this version, or now,
// recorded if none is. The record is a conditional write on the holder and version;
// a lease that has moved on records nothing and returns now (the removal's later
// fenced writes find out).
func (s *Store) RemovalStarted(ctx context.Context, l Lease) (time.Time, error) {
	now := s.Now().UTC()
	names := map[string]string{"#at": "removal_started_at", "#rv": "removal_lease_version", "#v": "version", "#h": "holder"}
	values := map[string]types.AttributeValue{":at": str(now.Format(time.RFC3339Nano)), ":v": num(l.Version), ":h": str(l.Holder)}
	update := "SET #at = :at, #rv = :v"
	cond := "#v = :v AND #h = :h AND (attribute_not_exists(#rv) OR #rv <> :v)"
	if s.Writes != nil {
		s.Writes()
	}
	_, err := s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: &s.table, Key: s.key(l.Slot), UpdateExpression: &update, ConditionExpression: &cond,
		ExpressionAttributeNames: names, ExpressionAttributeValues: values,
	})
	if err == nil {
		return now, nil
	}
	if !awsapi.IsConditionFailed(err) {
		return time.Time{}, fmt.Errorf("recording the start of the removal of slot %d (%s): %w", l.Slot, l.Holder, err)
	}
	// Recorded already (an earlier delivery, or this very write whose response was
	// lost), or the lease moved on.
	out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: &s.table, Key: s.key(l.Slot), ConsistentRead: aws.Bool(true),
		ProjectionExpression: aws.String("#at, #rv, #v, #h"), ExpressionAttributeNames: names,
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("reading the start of the removal of slot %d (%s): %w", l.Slot, l.Holder, err)
	}
	var rec struct {
		At      string `dynamodbav:"removal_started_at"`
		Of      int64  `dynamodbav:"removal_lease_version"`
		Version int64  `dynamodbav:"version"`
		Holder  string `dynamodbav:"holder"`
	}
	if err := attributevalue.UnmarshalMap(out.Item, &rec); err != nil {
		return time.Time{}, fmt.Errorf("decoding the start of the removal of slot %d: %w", l.Slot, err)
	}
	if rec.Holder != l.Holder || rec.Version != l.Version || rec.Of != l.Version {
		return now, nil
	}
	at, err := time.Parse(time.RFC3339Nano, rec.At)
	if err != nil || at.After(now) {
		return now, nil
	}
	return at, nil
}
