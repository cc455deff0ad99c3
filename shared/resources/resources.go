// Package resources finds, creates, frees and attaches a slot's EC2 resources: its
// network interface (ENI) and its data volume.
//
// The lease is the authority on which resources are the slot's: a volume or ENI is
// recorded in the slot's lease right after it is created, and from then on it is
// described by its recorded id, never found by its tags. Tags serve two purposes only:
// finding, on the slot's first use, a resource whose creation a crash separated from
// its record (creation sets them atomically, with a client token, so a retry finds
// what the crashed attempt created instead of creating a second one); and
// cross-checking a recorded resource, which is refused when its tags name another
// cluster or slot (ErrIdentity). A recorded resource that is gone is ErrMissing: the
// slot is not given a new one (an operator does that, with slotctl reset).
//
// A volume slotkeeper creates carries TagNeverFormatted, whose value is the lease
// version of the claim it is meant for, until the broker's user data has made its
// filesystem. The user data formats a device only while that value is its own claim's
// version; EnsureVolume re-stamps the mark for a new claim only when the lease proves
// the slot was never bound since the volume was recorded, and removes it otherwise (a
// broker may have used the volume). Only such a marked volume, created blank and never
// attached, may be taken by its tags on a slot's first use.
//
// Nothing here deletes a volume or a network interface: a broker's data outlives every
// instance and every mistake.
package resources

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// Tag keys (public contract).
const (
	TagCluster = "slotkeeper:cluster"
	TagSlot    = "slotkeeper:slot"
	TagNodeID  = "slotkeeper:node-id"
	TagLease   = "slotkeeper:lease"
	// TagNeverFormatted marks a data volume slotkeeper created blank; its value is
	// the lease version (slotkeeper:lease) of the claim the volume is meant for. Set
	// at CreateVolume, re-stamped or removed by launch for a later claim (see
	// EnsureVolume), removed by the broker's user data once the volume has a
	// filesystem. The user data formats a device only while its volume's mark is its
	// own claim's version.
	TagNeverFormatted = "slotkeeper:never-formatted"
	// TagRefused is set on an instance whose user data refused to start Kafka; its
	// value says why (slotctl status shows it).
	TagRefused = "slotkeeper:refused"
)

// ENIDeviceIndex is where a slot ENI is attached: index 0 is the primary interface.
const ENIDeviceIndex = 1

// ErrPermanent marks an error that no retry can fix (wrong AZ, a live instance still
// using the slot's volume, a device name taken): the caller gives up on this instance.
var ErrPermanent = errors.New("permanent")

// Poll is the backoff for waits on one resource. DESIGN: never poll one resource faster
// than once a second in production.
type Poll struct {
	Initial, Max time.Duration
	Timeout      time.Duration
}

// Manager manages one cluster's slot resources.
type Manager struct {
	EC2     awsapi.EC2
	Cluster string
	Volume  config.VolumeConfig
	SGs     []string
	Poll    Poll
	Log     *slog.Logger
	// Detach is the policy for freeing a resource attached to another instance
	// (attach.go); its zero value never forces a detach from an instance that may
	// still run Kafka.
	Detach DetachPolicy
	// Recheck, when set, is called right before an attach that follows a wait inside
	// the Manager (for the resource to be free, or created): the caller checks there
	// that it may still attach (the launch re-reads its lease). An error stops the
	// attach.
	Recheck func(ctx context.Context) error
}

// ENI is the part of a network interface slotkeeper looks at.
type ENI struct {
	ID, SubnetID, AZ, IP string
	AttachedTo           string // instance id, "" when not attached
	AttachmentID         string
	Status               string // available, in-use, attaching, detaching
	AttachmentStatus     string // attaching, attached, detaching, detached
	Tags                 map[string]string
}

// Volume is the part of a volume slotkeeper looks at.
type Volume struct {
	ID, AZ, State   string
	Type            string // EBS volume type (gp3, ...)
	SizeGiB         int32
	AttachedTo      string
	AttachmentState string
	Device          string
	SnapshotID      string // "" for a volume created blank
	Tags            map[string]string
}

func slotTags(cluster string, s int) []types.Tag {
	return []types.Tag{
		{Key: aws.String(TagCluster), Value: aws.String(cluster)},
		{Key: aws.String(TagSlot), Value: aws.String(strconv.Itoa(s))},
		{Key: aws.String("Name"), Value: aws.String(fmt.Sprintf("slotkeeper-%s-%d", cluster, s))},
	}
}

func (m *Manager) slotFilters(s int) []types.Filter {
	return []types.Filter{
		{Name: aws.String("tag:" + TagCluster), Values: []string{m.Cluster}},
		{Name: aws.String("tag:" + TagSlot), Values: []string{strconv.Itoa(s)}},
	}
}

// clientToken makes creation idempotent in AWS across SDK retries of one request:
// the same cluster, slot, kind and lease version give the same token.
func (m *Manager) clientToken(kind string, s int, version int64) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%d/%s/%d", m.Cluster, s, kind, version)))
	return "slotkeeper-" + hex.EncodeToString(sum[:])[:40]
}

// Identity errors: the lease records a resource that is gone, whose tags say it is not
// the slot's, or that can never be attached to the slot's instances. All are permanent
// (a retry finds the same) and call for an operator: the launch abandons with an ALERT
// instead of giving the slot a new, blank identity.
var (
	// ErrMissing: the lease records a volume or ENI that EC2 does not know (gone, or
	// an id that is not one).
	ErrMissing = fmt.Errorf("%w: the slot's recorded resource is gone", ErrPermanent)
	// ErrIdentity: the recorded resource's tags do not name this cluster and slot.
	ErrIdentity = fmt.Errorf("%w: the slot's recorded resource is tagged for another slot", ErrPermanent)
	// ErrUnusable: the recorded resource exists but can never be attached to the
	// slot's instances (another AZ or subnet, a volume in the error state).
	ErrUnusable = fmt.Errorf("%w: the slot's recorded resource cannot be attached to the slot's instances", ErrPermanent)
)

// Identity problems (IdentityError.Problem; the IdentityAlerts metric's Problem).
const (
	ProblemMissing   = "missing"   // EC2 does not know the recorded id
	ProblemMalformed = "malformed" // the recorded id is not an id of its kind
	ProblemTags      = "tags"      // its tags name another cluster or slot
	ProblemUnusable  = "unusable"  // it exists but can never be attached to the slot's instances
)

// IdentityError is an identity problem of one recorded resource.
type IdentityError struct {
	Kind    string // lease.KindVolume or lease.KindENI
	ID      string
	Slot    int
	Problem string // ProblemMissing, ProblemMalformed, ProblemTags or ProblemUnusable
	Msg     string
}

func (e *IdentityError) Error() string { return e.Msg }

// Unwrap returns ErrMissing, ErrIdentity or ErrUnusable (each wraps ErrPermanent).
func (e *IdentityError) Unwrap() error {
	switch e.Problem {
	case ProblemMissing, ProblemMalformed:
		return ErrMissing
	case ProblemUnusable:
		return ErrUnusable
	}
	return ErrIdentity
}

// idPattern is the form of EC2's volume and network interface ids: the prefix, then 8
// or 17 hexadecimal digits.
var idPattern = map[string]*regexp.Regexp{
	lease.KindVolume: regexp.MustCompile(`^vol-([0-9a-f]{8}|[0-9a-f]{17})$`),
	lease.KindENI:    regexp.MustCompile(`^eni-([0-9a-f]{8}|[0-9a-f]{17})$`),
}

// WellFormed reports whether id has the form of an EC2 id of kind. An id typed by hand
// into a lease (adoption) may not; EC2 then rejects every call naming it.
func WellFormed(kind, id string) bool { return idPattern[kind].MatchString(id) }

// malformed is the identity problem of a recorded id that is not an id of its kind.
func malformed(kind, id string, s int) *IdentityError {
	return &IdentityError{Kind: kind, ID: id, Slot: s, Problem: ProblemMalformed, Msg: fmt.Sprintf(
		"slot %d's lease records %s %q, which is not a well-formed %s id: fix the lease (if the slot has a %s, record its id) "+
			"or forget it with 'slotctl reset %d'", s, kindName(kind), id, kindName(kind), kindName(kind), s)}
}

// isMalformed reports whether err is EC2 rejecting an id as malformed.
func isMalformed(err error) bool {
	switch awsapi.Code(err) {
	case "InvalidVolumeID.Malformed", "InvalidNetworkInterfaceID.Malformed":
		return true
	}
	return false
}

// checkTags cross-checks a recorded resource's tags against the slot that records it.
func (m *Manager) checkTags(kind, id string, tags map[string]string, s int) error {
	cluster, slot := tags[TagCluster], tags[TagSlot]
	if cluster == m.Cluster && slot == strconv.Itoa(s) {
		return nil
	}
	return &IdentityError{Kind: kind, ID: id, Slot: s, Problem: ProblemTags, Msg: fmt.Sprintf("slot %d's lease records %s %s, but its tags say %s=%q %s=%q, "+
		"not %q and \"%d\": refusing to use it (if it is the slot's, tag it again; if not, find the slot's own)",
		s, kindName(kind), id, TagCluster, cluster, TagSlot, slot, m.Cluster, s)}
}

func kindName(kind string) string {
	if kind == lease.KindENI {
		return "ENI"
	}
	return kind
}

// VolumeByID describes one volume by id; nil when EC2 does not know it (or rejects the
// id as malformed: no such volume can exist).
func (m *Manager) VolumeByID(ctx context.Context, id string) (*Volume, error) {
	if !WellFormed(lease.KindVolume, id) {
		return nil, nil
	}
	out, err := m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
	if awsapi.IsNotFound(err) || isMalformed(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("describing volume %s: %w", id, err)
	}
	if len(out.Volumes) == 0 {
		return nil, nil
	}
	v := toVolume(out.Volumes[0])
	return &v, nil
}

// ENIByID describes one network interface by id; nil when EC2 does not know it (or
// rejects the id as malformed).
func (m *Manager) ENIByID(ctx context.Context, id string) (*ENI, error) {
	if !WellFormed(lease.KindENI, id) {
		return nil, nil
	}
	out, err := m.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	if awsapi.IsNotFound(err) || isMalformed(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("describing ENI %s: %w", id, err)
	}
	if len(out.NetworkInterfaces) == 0 {
		return nil, nil
	}
	e := toENI(out.NetworkInterfaces[0])
	return &e, nil
}

// RecordedVolume returns the volume l records, described by its id: nil when l records
// none; an IdentityError when the id is malformed, EC2 does not know it
// (ProblemMissing) or its tags name another cluster or slot. Tags are never used to
// find it.
//
// EC2 is eventually consistent: a volume created moments ago may not be visible yet
// (two deliveries of one event milliseconds apart). So while the id was recorded by
// the current claim (l.VolumeClaim == l.Version), "not found" is waited out (see
// visible) and, if it lasts, retried by redelivery: never ErrMissing.
func (m *Manager) RecordedVolume(ctx context.Context, l lease.Lease) (*Volume, error) {
	if l.VolumeID == "" {
		return nil, nil
	}
	if !WellFormed(lease.KindVolume, l.VolumeID) {
		return nil, malformed(lease.KindVolume, l.VolumeID, l.Slot)
	}
	v, err := m.VolumeByID(ctx, l.VolumeID)
	if err == nil && v == nil && l.VolumeClaim == l.Version && l.Version > 0 {
		v, err = visible(ctx, m, "volume "+l.VolumeID, func(ctx context.Context) (*Volume, error) { return m.VolumeByID(ctx, l.VolumeID) })
	}
	switch {
	case err != nil:
		return nil, err
	case v == nil:
		return nil, &IdentityError{Kind: lease.KindVolume, ID: l.VolumeID, Slot: l.Slot, Problem: ProblemMissing, Msg: fmt.Sprintf(
			"slot %d's lease records volume %s, which no longer exists: slotkeeper never gives a slot that had a volume "+
				"a new blank one by itself (an operator does, with 'slotctl reset %d')", l.Slot, l.VolumeID, l.Slot)}
	}
	if err := m.checkTags(lease.KindVolume, v.ID, v.Tags, l.Slot); err != nil {
		return v, err
	}
	return v, nil
}

// RecordedENI is RecordedVolume for the slot's ENI.
func (m *Manager) RecordedENI(ctx context.Context, l lease.Lease) (*ENI, error) {
	if l.ENIID == "" {
		return nil, nil
	}
	if !WellFormed(lease.KindENI, l.ENIID) {
		return nil, malformed(lease.KindENI, l.ENIID, l.Slot)
	}
	e, err := m.ENIByID(ctx, l.ENIID)
	if err == nil && e == nil && l.ENIClaim == l.Version && l.Version > 0 {
		e, err = visible(ctx, m, "ENI "+l.ENIID, func(ctx context.Context) (*ENI, error) { return m.ENIByID(ctx, l.ENIID) })
	}
	switch {
	case err != nil:
		return nil, err
	case e == nil:
		return nil, &IdentityError{Kind: lease.KindENI, ID: l.ENIID, Slot: l.Slot, Problem: ProblemMissing, Msg: fmt.Sprintf(
			"slot %d's lease records ENI %s (%s), which no longer exists: slotkeeper never gives a slot a new address "+
				"by itself (an operator does, with 'slotctl reset %d')", l.Slot, l.ENIID, l.IP, l.Slot)}
	}
	if err := m.checkTags(lease.KindENI, e.ID, e.Tags, l.Slot); err != nil {
		return e, err
	}
	return e, nil
}

// VisibleTimeout bounds, per invocation, the wait for a resource the current claim
// created and recorded to become visible (EC2's eventual consistency lasts seconds).
const VisibleTimeout = 15 * time.Second

// visible polls describe until it finds the resource, for at most VisibleTimeout (or
// Poll.Timeout if shorter). A resource still not found is not taken for gone (this
// claim created it): the error is one a retry may fix, so the event is delivered again
// and the hook's timeout bounds the whole; a later claim that finds it still missing
// reports it (ErrMissing).
func visible[T any](ctx context.Context, m *Manager, what string, describe func(context.Context) (*T, error)) (*T, error) {
	var found *T
	m.Log.InfoContext(ctx, "the slot's resource, recorded by this claim, is not visible yet; waiting for it", "resource", what)
	short := *m
	short.Poll.Timeout = min(m.Poll.Timeout, VisibleTimeout)
	err := short.wait(ctx, what+", recorded by this claim, to be visible (EC2 is eventually consistent)", func(ctx context.Context) (bool, error) {
		var err error
		found, err = describe(ctx)
		return found != nil, err
	})
	return found, err
}

// unrecordedENI finds, by its tags, an ENI created for slot s whose id the lease does
// not record yet (creation and record are two calls: a crash may fall in between). It
// takes only an ENI the slot can use: in the slot's subnet, and available (or attached
// to an instance that is gone or on its way out); any other ENI with the slot's tags
// (another subnet, attached to a live instance, as during a manual adoption) is left
// alone, and the reconciler reports it. Should there be several, the lowest id is
// taken and the others are logged.
func (m *Manager) unrecordedENI(ctx context.Context, s int, subnet string) (*ENI, error) {
	filters := append(m.slotFilters(s), types.Filter{Name: aws.String("subnet-id"), Values: []string{subnet}})
	out, err := m.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: filters})
	if err != nil {
		return nil, fmt.Errorf("finding an unrecorded ENI of slot %d: %w", s, err)
	}
	var enis []ENI
	for _, n := range out.NetworkInterfaces {
		e := toENI(n)
		ok, err := m.free(ctx, e.Status == "available", e.AttachedTo)
		if err != nil {
			return nil, err
		}
		if !ok {
			m.Log.WarnContext(ctx, "an ENI with the slot's tags is in use: not taking it", "slot", s, "eni", e.ID, "attached_to", e.AttachedTo)
			continue
		}
		enis = append(enis, e)
	}
	return lowest(ctx, m, "ENI", s, enis, func(e ENI) string { return e.ID }), nil
}

// unrecordedVolume finds a volume slotkeeper created for slot s whose id the lease l
// does not record yet: tagged with the slot, in az, and still carrying
// TagNeverFormatted with the version of one of the slot's claims up to l's; created
// blank (not from a snapshot) and not in use (available, or attached to an instance
// that is gone). A volume that lost that mark has been formatted (it holds a broker's
// data) and is never taken by its tags alone: a restored snapshot or a copy with the
// slot's tags must not become the slot's volume.
func (m *Manager) unrecordedVolume(ctx context.Context, l lease.Lease, az string) (*Volume, error) {
	s := l.Slot
	filters := append(m.slotFilters(s),
		types.Filter{Name: aws.String("tag-key"), Values: []string{TagNeverFormatted}},
		types.Filter{Name: aws.String("availability-zone"), Values: []string{az}})
	out, err := m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: filters})
	if err != nil {
		return nil, fmt.Errorf("finding an unrecorded volume of slot %d: %w", s, err)
	}
	var vols []Volume
	for _, ov := range out.Volumes {
		v := toVolume(ov)
		claim, err := strconv.ParseInt(v.Tags[TagNeverFormatted], 10, 64)
		if err != nil || claim < 1 || claim > l.Version || v.SnapshotID != "" {
			m.Log.WarnContext(ctx, "a volume with the slot's tags was not made blank by one of the slot's claims: not taking it",
				"slot", s, "volume", v.ID, "mark", v.Tags[TagNeverFormatted], "snapshot", v.SnapshotID)
			continue
		}
		ok, err := m.free(ctx, v.State == "available" || v.State == "creating", v.AttachedTo)
		if err != nil {
			return nil, err
		}
		if !ok {
			m.Log.WarnContext(ctx, "a never-formatted volume with the slot's tags is in use: not taking it", "slot", s, "volume", v.ID, "state", v.State, "attached_to", v.AttachedTo)
			continue
		}
		vols = append(vols, v)
	}
	return lowest(ctx, m, "never-formatted volume", s, vols, func(v Volume) string { return v.ID }), nil
}

// free reports whether a resource found by its tags may be taken: it is available, or
// attached to an instance that is shutting down, terminated or gone.
func (m *Manager) free(ctx context.Context, available bool, attachedTo string) (bool, error) {
	if available {
		return true, nil
	}
	if attachedTo == "" {
		return false, nil // attaching, detaching, deleting, error: not now
	}
	states, err := m.InstanceStates(ctx, []string{attachedTo})
	if err != nil {
		return false, err
	}
	return slot.Dead(states[attachedTo]), nil
}

// lowest returns the item with the lowest id, or nil when there is none, and warns
// when a slot has several of a kind (the others are for the operator to look at).
func lowest[T any](ctx context.Context, m *Manager, kind string, s int, items []T, id func(T) string) *T {
	if len(items) == 0 {
		return nil
	}
	slices.SortFunc(items, func(a, b T) int { return strings.Compare(id(a), id(b)) })
	if len(items) > 1 {
		m.Log.WarnContext(ctx, "slot has several unrecorded "+kind+"s; taking the lowest id", "slot", s, "id", id(items[0]), "extra", len(items)-1)
	}
	return &items[0]
}

// Record records a slot's volume or ENI (ip: the ENI's) in its lease
// (lease.Store.Record, fenced) and returns the lease as stored; on
// lease.ErrRecordConflict, the lease as stored too (it records another id).
type Record func(ctx context.Context, id, ip string) (lease.Lease, error)

// unusableENI returns the identity problem of a recorded ENI outside the slot's subnet
// (it can never be attached to the slot's instances), or nil.
func unusableENI(l lease.Lease, e *ENI, subnet string) error {
	if e.SubnetID == subnet {
		return nil
	}
	return &IdentityError{Kind: lease.KindENI, ID: e.ID, Slot: l.Slot, Problem: ProblemUnusable, Msg: fmt.Sprintf(
		"slot %d's lease records ENI %s, which is in subnet %s (%s), not the slot's subnet %s: it can never be attached to "+
			"the slot's instances (if the slot has an ENI in its subnet, record that one; else forget this one with 'slotctl reset %d')",
		l.Slot, e.ID, e.SubnetID, e.AZ, subnet, l.Slot)}
}

// unusableVolume returns the identity problem of a recorded volume outside the slot's
// AZ, or in the error state, or nil.
func unusableVolume(l lease.Lease, v *Volume, az string) error {
	var why string
	switch {
	case v.AZ != az:
		why = fmt.Sprintf("is in %s, not the slot's AZ %s", v.AZ, az)
	case v.State == "error":
		why = "is in the error state"
	default:
		return nil
	}
	return &IdentityError{Kind: lease.KindVolume, ID: v.ID, Slot: l.Slot, Problem: ProblemUnusable, Msg: fmt.Sprintf(
		"slot %d's lease records volume %s, which %s: it can never be attached to the slot's instances "+
			"(if the slot's data is on another volume in %s, record that one; else forget this one with 'slotctl reset %d')",
		l.Slot, v.ID, why, az, l.Slot)}
}

// EnsureENI returns the slot's ENI: the one l records (described by id, its tags
// cross-checked, and refused unless it is in subnet, the slot's); else, on the slot's
// first use, one created for it whose record a crash interrupted (found by its tags,
// in subnet and free); else a new one in subnet. A found or created ENI is recorded
// (record) before it is returned, so from then on it is the slot's by id; should
// another delivery have recorded another one meanwhile, that one is used. Its private
// IP is fixed for the ENI's life, which is the slot's life.
func (m *Manager) EnsureENI(ctx context.Context, l lease.Lease, subnet string, record Record) (ENI, bool, error) {
	e, unrecorded, created, err := m.FindENI(ctx, l, subnet)
	if err != nil || !unrecorded {
		return e, false, err
	}
	if cur, err := record(ctx, e.ID, e.IP); errors.Is(err, lease.ErrRecordConflict) && cur.ENIID != "" {
		m.Log.InfoContext(ctx, "another delivery recorded the slot's ENI first: using it", "slot", l.Slot, "recorded", cur.ENIID, "found", e.ID)
		return m.EnsureENI(ctx, cur, subnet, record)
	} else if err != nil {
		return ENI{}, false, err
	}
	return e, created, nil
}

// FindENI returns the slot's ENI without recording it: the one l records (described by
// id, its tags cross-checked, refused unless it is in subnet; unrecorded is false);
// else, on the slot's first use, one created for it whose record a crash interrupted
// (found by its tags, in subnet and free), else a new one in subnet (created true): for
// these unrecorded is true, and the caller records the id (lease.Store.RecordIDs)
// before it attaches the ENI.
func (m *Manager) FindENI(ctx context.Context, l lease.Lease, subnet string) (e ENI, unrecorded, created bool, err error) {
	s := l.Slot
	if l.ENIID != "" {
		e, err := m.RecordedENI(ctx, l)
		if err != nil {
			return ENI{}, false, false, err
		}
		if err := unusableENI(l, e, subnet); err != nil {
			return ENI{}, false, false, err
		}
		return *e, false, false, nil
	}
	found, err := m.unrecordedENI(ctx, s, subnet)
	if err != nil {
		return ENI{}, false, false, err
	}
	if found != nil {
		return *found, true, false, nil
	}
	out, err := m.EC2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId:    &subnet,
		Groups:      m.SGs,
		Description: aws.String(fmt.Sprintf("slotkeeper %s slot %d", m.Cluster, s)),
		ClientToken: aws.String(m.clientToken("eni", s, l.Version)),
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeNetworkInterface, Tags: slotTags(m.Cluster, s),
		}},
	})
	if err != nil {
		return ENI{}, false, false, fmt.Errorf("creating ENI of slot %d in %s: %w", s, subnet, permanentIf(err))
	}
	e = toENI(*out.NetworkInterface)
	m.Log.InfoContext(ctx, "created slot ENI", "slot", s, "eni", e.ID, "ip", e.IP, "subnet", subnet)
	return e, true, true, nil
}

// EnsureVolume returns the slot's data volume: the one l records (described by id,
// its tags cross-checked, refused unless it is in az, the slot's; ErrMissing if it is
// gone: never a silent new disk); else, on the slot's first use, a never-formatted
// one created for it whose record a crash interrupted (see unrecordedVolume); else a
// new one in az, tagged TagNeverFormatted with l's version. A found or created volume
// is recorded (record) before the wait until it is available; should another delivery
// have recorded another one meanwhile, that one is used.
//
// A volume still marked TagNeverFormatted for an earlier claim is settled for this
// one (SettleMark) before it is returned: a tag call, only then.
func (m *Manager) EnsureVolume(ctx context.Context, l lease.Lease, az string, record Record) (Volume, bool, error) {
	v, unrecorded, created, err := m.FindVolume(ctx, l, az)
	if err != nil || !unrecorded {
		return v, false, err
	}
	cur, err := record(ctx, v.ID, "")
	if errors.Is(err, lease.ErrRecordConflict) && cur.VolumeID != "" {
		m.Log.InfoContext(ctx, "another delivery recorded the slot's volume first: using it", "slot", l.Slot, "recorded", cur.VolumeID, "found", v.ID)
		return m.EnsureVolume(ctx, cur, az, record)
	}
	if err != nil {
		return Volume{}, false, err
	}
	if err := m.SettleMark(ctx, cur, &v); err != nil {
		return Volume{}, false, err
	}
	if created {
		v, err = m.waitVolume(ctx, v.ID, "available", func(v Volume) bool { return v.State == "available" })
	}
	return v, created, err
}

// FindVolume returns the slot's data volume without recording it: the one l records
// (described by id, its tags cross-checked, refused unless it is in az; a mark of an
// earlier claim settled, see SettleMark; unrecorded is false); else, on the slot's
// first use, a never-formatted one created for it whose record a crash interrupted
// (see unrecordedVolume), else a new one in az, tagged TagNeverFormatted with l's
// version (created true). For these unrecorded is true: the caller records the id
// (lease.Store.RecordIDs), then settles the mark of a found one with the lease as
// recorded (SettleMark), before it attaches the volume. A created volume may still be
// "creating" (StartAttachVolume waits for it).
func (m *Manager) FindVolume(ctx context.Context, l lease.Lease, az string) (v Volume, unrecorded, created bool, err error) {
	s := l.Slot
	if l.VolumeID != "" {
		v, err := m.RecordedVolume(ctx, l)
		if err != nil {
			return Volume{}, false, false, err
		}
		if err := unusableVolume(l, v, az); err != nil {
			return Volume{}, false, false, err
		}
		if err := m.SettleMark(ctx, l, v); err != nil {
			return Volume{}, false, false, err
		}
		return *v, false, false, nil
	}
	found, err := m.unrecordedVolume(ctx, l, az)
	if err != nil {
		return Volume{}, false, false, err
	}
	if found != nil {
		return *found, true, false, nil
	}
	tags := append(slotTags(m.Cluster, s), types.Tag{Key: aws.String(TagNeverFormatted), Value: aws.String(strconv.FormatInt(l.Version, 10))})
	in := &ec2.CreateVolumeInput{
		AvailabilityZone: &az,
		Size:             aws.Int32(m.Volume.SizeGiB),
		VolumeType:       types.VolumeType(m.Volume.Type),
		Encrypted:        aws.Bool(m.Volume.Encrypted),
		ClientToken:      aws.String(m.clientToken("volume", s, l.Version)),
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeVolume, Tags: tags,
		}},
	}
	if m.Volume.IOPS > 0 {
		in.Iops = aws.Int32(m.Volume.IOPS)
	}
	if m.Volume.ThroughputMiBs > 0 {
		in.Throughput = aws.Int32(m.Volume.ThroughputMiBs)
	}
	if m.Volume.KMSKeyID != "" {
		in.KmsKeyId = aws.String(m.Volume.KMSKeyID)
	}
	out, err := m.EC2.CreateVolume(ctx, in)
	if err != nil {
		return Volume{}, false, false, fmt.Errorf("creating volume of slot %d in %s: %w", s, az, permanentIf(err))
	}
	v = Volume{
		ID: aws.ToString(out.VolumeId), AZ: aws.ToString(out.AvailabilityZone), State: string(out.State), Type: string(out.VolumeType),
		SizeGiB: aws.ToInt32(out.Size), SnapshotID: aws.ToString(out.SnapshotId), Tags: tagMap(out.Tags),
	}
	if v.AZ == "" {
		v.AZ = az
	}
	m.Log.InfoContext(ctx, "created slot volume", "slot", s, "volume", v.ID, "az", az, "size_gib", m.Volume.SizeGiB, "state", v.State)
	return v, true, true, nil
}

// SettleMark makes the TagNeverFormatted mark of v, the volume lease l records, safe
// for l's claim. The broker user data formats a blank device only when the mark is
// its own claim's version, so a mark left from an earlier claim must not survive a
// use of the volume: by an instance whose user data never cleared the mark (an older
// bootstrap, or an operator's own), a broker's data may sit behind a damaged
// superblock, and formatting it would destroy it.
//
// No mark, or the mark of l's claim: nothing to do (no call). A mark of an earlier
// claim is re-stamped with l's version only if the lease proves the slot was never
// bound since the claim that recorded the volume (lease.UnboundSince: no broker ever
// used it); otherwise it is removed, and a blank device of the volume is then refused
// rather than formatted.
func (m *Manager) SettleMark(ctx context.Context, l lease.Lease, v *Volume) error {
	mark, ok := v.Tags[TagNeverFormatted]
	want := strconv.FormatInt(l.Version, 10)
	if !ok || mark == want {
		return nil
	}
	if l.UnboundSince(l.VolumeClaim) {
		_, err := m.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{v.ID},
			Tags: []types.Tag{{Key: aws.String(TagNeverFormatted), Value: aws.String(want)}}})
		if err != nil {
			return fmt.Errorf("re-stamping the never-formatted mark of volume %s for claim %s: %w", v.ID, want, err)
		}
		v.Tags[TagNeverFormatted] = want
		m.Log.InfoContext(ctx, "volume never used since it was recorded: its never-formatted mark now names this claim",
			"slot", l.Slot, "volume", v.ID, "from", mark, "to", want)
		return nil
	}
	_, err := m.EC2.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{v.ID},
		Tags: []types.Tag{{Key: aws.String(TagNeverFormatted)}}})
	if err != nil && !awsapi.IsNotFound(err) {
		return fmt.Errorf("removing the stale never-formatted mark of volume %s: %w", v.ID, err)
	}
	delete(v.Tags, TagNeverFormatted)
	m.Log.WarnContext(ctx, "removed a never-formatted mark left by an earlier claim: the slot was bound since the volume was recorded, "+
		"so a broker may have used it; the broker user data will never format it", "slot", l.Slot, "volume", v.ID, "mark", mark,
		"recorded_by_claim", l.VolumeClaim)
	return nil
}

// InstanceStates returns the EC2 state of each of ids that EC2 knows; unknown ids are
// absent (slot.Gone). It filters by id rather than asking for the ids, so one unknown
// id does not fail the whole call, in requests of at most MaxFilterValues ids
// (EachInstance).
func (m *Manager) InstanceStates(ctx context.Context, ids []string) (map[string]string, error) {
	states := make(map[string]string, len(ids))
	err := EachInstance(ctx, m.EC2, ids, func(i types.Instance) {
		if i.State != nil {
			states[aws.ToString(i.InstanceId)] = string(i.State.Name)
		}
	})
	if err != nil {
		return nil, err
	}
	return states, nil
}

// Instance is the part of an instance the launch path needs.
type Instance struct {
	ID, AZ, SubnetID, State, PrivateIP string
	Tags                               map[string]string
	// Volumes are the EBS volumes EC2 shows attached (or attaching, detaching) to
	// the instance, and ENIs its network interfaces, with their attachment status.
	Volumes []InstanceVolume
	ENIs    []InstanceENI
}

// InstanceVolume is a volume as its instance's description shows it.
type InstanceVolume struct {
	ID, Device string
	Status     string // attaching, attached, detaching, detached
}

// InstanceENI is a network interface as its instance's description shows it.
type InstanceENI struct {
	ID, AttachmentID string
	DeviceIndex      int32
	Status           string // attaching, attached, detaching, detached
}

// Volume returns the instance's attachment of volume id, if EC2 shows one.
func (in Instance) Volume(id string) (InstanceVolume, bool) {
	for _, v := range in.Volumes {
		if v.ID == id {
			return v, true
		}
	}
	return InstanceVolume{}, false
}

// ENI returns the instance's attachment of network interface id, if EC2 shows one.
func (in Instance) ENI(id string) (InstanceENI, bool) {
	for _, e := range in.ENIs {
		if e.ID == id {
			return e, true
		}
	}
	return InstanceENI{}, false
}

func toInstance(i types.Instance) Instance {
	in := Instance{
		ID: aws.ToString(i.InstanceId), SubnetID: aws.ToString(i.SubnetId),
		PrivateIP: aws.ToString(i.PrivateIpAddress), Tags: tagMap(i.Tags),
	}
	if i.Placement != nil {
		in.AZ = aws.ToString(i.Placement.AvailabilityZone)
	}
	if i.State != nil {
		in.State = string(i.State.Name)
	}
	for _, b := range i.BlockDeviceMappings {
		if b.Ebs != nil {
			in.Volumes = append(in.Volumes, InstanceVolume{ID: aws.ToString(b.Ebs.VolumeId), Device: aws.ToString(b.DeviceName), Status: string(b.Ebs.Status)})
		}
	}
	for _, n := range i.NetworkInterfaces {
		e := InstanceENI{ID: aws.ToString(n.NetworkInterfaceId)}
		if a := n.Attachment; a != nil {
			e.AttachmentID, e.DeviceIndex, e.Status = aws.ToString(a.AttachmentId), aws.ToInt32(a.DeviceIndex), string(a.Status)
		}
		in.ENIs = append(in.ENIs, e)
	}
	return in
}

// DescribeInstance returns one instance; found is false when EC2 does not know it.
func (m *Manager) DescribeInstance(ctx context.Context, id string) (in Instance, found bool, err error) {
	out, err := m.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if awsapi.IsNotFound(err) {
		return Instance{}, false, nil
	}
	if err != nil {
		return Instance{}, false, fmt.Errorf("describing instance %s: %w", id, err)
	}
	if len(out.Reservations) == 0 || len(out.Reservations[0].Instances) == 0 {
		return Instance{}, false, nil
	}
	return toInstance(out.Reservations[0].Instances[0]), true, nil
}

// DescribeWith describes instance id and, in the same request, the instances others
// (the holders of a cluster's leases, say): one read serves the launch's own
// description and the claim's view of who still runs. found is false when EC2 does
// not know id; states has the EC2 state of every instance of others that EC2 knows
// (the unknown ones are absent: slot.Gone). Requests carry at most MaxFilterValues
// ids (EachInstance).
func (m *Manager) DescribeWith(ctx context.Context, id string, others []string) (in Instance, found bool, states map[string]string, err error) {
	states = make(map[string]string, len(others))
	other := make(map[string]bool, len(others))
	for _, o := range others {
		other[o] = true
	}
	err = EachInstance(ctx, m.EC2, append([]string{id}, others...), func(i types.Instance) {
		got := toInstance(i)
		if got.ID == id {
			in, found = got, true
		}
		if other[got.ID] {
			states[got.ID] = got.State
		}
	})
	if err != nil {
		return Instance{}, false, nil, err
	}
	return in, found, states, nil
}

// SubnetAZs returns the AZ of each subnet.
func (m *Manager) SubnetAZs(ctx context.Context, subnets []string) (map[string]string, error) {
	out, err := m.EC2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: subnets})
	if err != nil {
		return nil, fmt.Errorf("describing slot subnets %v: %w", subnets, err)
	}
	azs := make(map[string]string, len(out.Subnets))
	for _, s := range out.Subnets {
		azs[aws.ToString(s.SubnetId)] = aws.ToString(s.AvailabilityZone)
	}
	for _, s := range subnets {
		if azs[s] == "" {
			return nil, fmt.Errorf("slot subnet %s not found: %w", s, ErrPermanent)
		}
	}
	return azs, nil
}

// IdentityTags are the tags that give an instance its slot identity: cluster, slot,
// node id and the lease version of its claim.
func IdentityTags(cluster string, s, nodeID int, version int64) map[string]string {
	return map[string]string{
		TagCluster: cluster, TagSlot: strconv.Itoa(s), TagNodeID: strconv.Itoa(nodeID), TagLease: strconv.FormatInt(version, 10),
	}
}

// HasTags reports whether tags carries every key of want with its value.
func HasTags(tags, want map[string]string) bool {
	for k, v := range want {
		if got, ok := tags[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// TagInstance gives instance its slot identity (IdentityTags). CreateTags is
// idempotent.
func (m *Manager) TagInstance(ctx context.Context, id string, s, nodeID int, version int64) error {
	want := IdentityTags(m.Cluster, s, nodeID, version)
	var tags []types.Tag
	for _, k := range []string{TagCluster, TagSlot, TagNodeID, TagLease} {
		tags = append(tags, types.Tag{Key: aws.String(k), Value: aws.String(want[k])})
	}
	if _, err := m.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: tags}); err != nil {
		return fmt.Errorf("tagging instance %s as slot %d: %w", id, s, err)
	}
	return nil
}

func toENI(n types.NetworkInterface) ENI {
	e := ENI{
		ID: aws.ToString(n.NetworkInterfaceId), SubnetID: aws.ToString(n.SubnetId),
		AZ: aws.ToString(n.AvailabilityZone), IP: aws.ToString(n.PrivateIpAddress),
		Status: string(n.Status), Tags: tagMap(n.TagSet),
	}
	if a := n.Attachment; a != nil && aws.ToString(a.InstanceId) != "" {
		e.AttachedTo, e.AttachmentID, e.AttachmentStatus = aws.ToString(a.InstanceId), aws.ToString(a.AttachmentId), string(a.Status)
	}
	return e
}

func toVolume(v types.Volume) Volume {
	vol := Volume{
		ID: aws.ToString(v.VolumeId), AZ: aws.ToString(v.AvailabilityZone), State: string(v.State), Type: string(v.VolumeType),
		SizeGiB: aws.ToInt32(v.Size), SnapshotID: aws.ToString(v.SnapshotId), Tags: tagMap(v.Tags),
	}
	for _, a := range v.Attachments {
		if a.State == types.VolumeAttachmentStateDetached {
			continue
		}
		vol.AttachedTo, vol.AttachmentState, vol.Device = aws.ToString(a.InstanceId), string(a.State), aws.ToString(a.Device)
	}
	return vol
}

func tagMap(tags []types.Tag) map[string]string {
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		m[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return m
}

// permanentIf marks the EC2 errors that no retry can fix.
func permanentIf(err error) error {
	switch code := awsapi.Code(err); {
	case code == "InvalidParameterValue", code == "InvalidParameterCombination", code == "InvalidParameter",
		code == "InvalidSubnetID.NotFound", code == "InvalidGroup.NotFound", code == "InvalidVolume.ZoneMismatch",
		code == "InvalidKMSKey.Id", code == "UnauthorizedOperation", code == "InvalidZone.NotFound":
		return fmt.Errorf("%w: %w", ErrPermanent, err)
	}
	return err
}

// wait polls check with jittered exponential backoff until it reports done, the
// Poll.Timeout passes, or ctx ends. The first check is immediate.
func (m *Manager) wait(ctx context.Context, what string, check func(context.Context) (bool, error)) error {
	delay, deadline := m.Poll.Initial, time.Now().Add(m.Poll.Timeout)
	for {
		done, err := check(ctx)
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: gave up after %s", what, m.Poll.Timeout)
		}
		jittered := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(jittered):
		}
		delay = min(delay*3/2, m.Poll.Max)
	}
}

// WaitInstance polls instance id until ok holds, storing the last description in into.
func (m *Manager) WaitInstance(ctx context.Context, id string, ok func(Instance) bool, into *Instance) error {
	return m.wait(ctx, "instance "+id, func(ctx context.Context) (bool, error) {
		in, found, err := m.DescribeInstance(ctx, id)
		if err != nil {
			return false, err
		}
		if !found {
			*into = Instance{ID: id}
			return true, nil
		}
		*into = in
		return ok(in), nil
	})
}

// TagASGName is the tag EC2 Auto Scaling puts on every instance of a group.
const TagASGName = "aws:autoscaling:groupName"

// GroupInstances returns the instances of Auto Scaling group asg in az that are
// pending or running: the instances that may be launching together.
func (m *Manager) GroupInstances(ctx context.Context, asg, az string) ([]string, error) {
	var ids []string
	p := ec2.NewDescribeInstancesPaginator(m.EC2, &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("tag:" + TagASGName), Values: []string{asg}},
		{Name: aws.String("availability-zone"), Values: []string{az}},
		{Name: aws.String("instance-state-name"), Values: []string{"pending", "running"}},
	}})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describing instances of group %s in %s: %w", asg, az, err)
		}
		for _, r := range page.Reservations {
			for _, i := range r.Instances {
				ids = append(ids, aws.ToString(i.InstanceId))
			}
		}
	}
	return ids, nil
}

// New returns the Manager of cfg's cluster: its tags, volume specification and ENI
// security groups; poll paces and bounds its waits.
func New(cfg config.Config, ec2 awsapi.EC2, poll Poll, log *slog.Logger) *Manager {
	return &Manager{EC2: ec2, Cluster: cfg.Cluster, Volume: cfg.Volume, SGs: cfg.SecurityGroups, Poll: poll, Log: log}
}
