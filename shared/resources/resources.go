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
// A volume slotkeeper creates carries TagNeverFormatted until the broker's user data
// has made its filesystem; only such a volume may be formatted, and only such a volume
// may be taken by its tags on a slot's first use.
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
)

// Tag keys (public contract).
const (
	TagCluster = "slotkeeper:cluster"
	TagSlot    = "slotkeeper:slot"
	TagNodeID  = "slotkeeper:node-id"
	TagLease   = "slotkeeper:lease"
	// TagNeverFormatted marks a data volume slotkeeper created blank: set at
	// CreateVolume, removed by the broker's user data once the volume has a
	// filesystem. The user data formats a device only while its volume has it.
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

// Identity errors: the lease records a resource that is gone, or whose tags say it is
// not the slot's. Both are permanent (a retry finds the same) and call for an operator:
// the launch abandons with an ALERT instead of giving the slot a new, blank identity.
var (
	// ErrMissing: the lease records a volume or ENI that EC2 no longer knows.
	ErrMissing = fmt.Errorf("%w: the slot's recorded resource is gone", ErrPermanent)
	// ErrIdentity: the recorded resource's tags do not name this cluster and slot.
	ErrIdentity = fmt.Errorf("%w: the slot's recorded resource is tagged for another slot", ErrPermanent)
)

// IdentityError is an ErrMissing or ErrIdentity about one recorded resource.
type IdentityError struct {
	Kind string // lease.KindVolume or lease.KindENI
	ID   string
	Slot int
	// Missing: the resource is gone (ErrMissing); else its tags disagree (ErrIdentity).
	Missing bool
	Msg     string
}

func (e *IdentityError) Error() string { return e.Msg }

// Unwrap returns ErrMissing or ErrIdentity (both wrap ErrPermanent).
func (e *IdentityError) Unwrap() error {
	if e.Missing {
		return ErrMissing
	}
	return ErrIdentity
}

// checkTags cross-checks a recorded resource's tags against the slot that records it.
func (m *Manager) checkTags(kind, id string, tags map[string]string, s int) error {
	cluster, slot := tags[TagCluster], tags[TagSlot]
	if cluster == m.Cluster && slot == strconv.Itoa(s) {
		return nil
	}
	return &IdentityError{Kind: kind, ID: id, Slot: s, Msg: fmt.Sprintf("slot %d's lease records %s %s, but its tags say %s=%q %s=%q, "+
		"not %q and \"%d\": refusing to use it (if it is the slot's, tag it again; if not, find the slot's own)",
		s, kindName(kind), id, TagCluster, cluster, TagSlot, slot, m.Cluster, s)}
}

func kindName(kind string) string {
	if kind == lease.KindENI {
		return "ENI"
	}
	return kind
}

// VolumeByID describes one volume by id; nil when EC2 does not know it.
func (m *Manager) VolumeByID(ctx context.Context, id string) (*Volume, error) {
	out, err := m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
	if awsapi.IsNotFound(err) {
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

// ENIByID describes one network interface by id; nil when EC2 does not know it.
func (m *Manager) ENIByID(ctx context.Context, id string) (*ENI, error) {
	out, err := m.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	if awsapi.IsNotFound(err) {
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
// none; ErrMissing when EC2 no longer knows it; ErrIdentity when its tags name another
// cluster or slot. Tags are never used to find it.
func (m *Manager) RecordedVolume(ctx context.Context, l lease.Lease) (*Volume, error) {
	if l.VolumeID == "" {
		return nil, nil
	}
	v, err := m.VolumeByID(ctx, l.VolumeID)
	switch {
	case err != nil:
		return nil, err
	case v == nil:
		return nil, &IdentityError{Kind: lease.KindVolume, ID: l.VolumeID, Slot: l.Slot, Missing: true, Msg: fmt.Sprintf(
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
	e, err := m.ENIByID(ctx, l.ENIID)
	switch {
	case err != nil:
		return nil, err
	case e == nil:
		return nil, &IdentityError{Kind: lease.KindENI, ID: l.ENIID, Slot: l.Slot, Missing: true, Msg: fmt.Sprintf(
			"slot %d's lease records ENI %s (%s), which no longer exists: slotkeeper never gives a slot a new address "+
				"by itself (an operator does, with 'slotctl reset %d')", l.Slot, l.ENIID, l.IP, l.Slot)}
	}
	if err := m.checkTags(lease.KindENI, e.ID, e.Tags, l.Slot); err != nil {
		return e, err
	}
	return e, nil
}

// unrecordedENI finds, by its tags, an ENI created for slot s whose id the lease does
// not record yet (creation and record are two calls: a crash may fall in between).
// Should there be several, the lowest id is taken and the others are logged; the
// reconciler reports them as orphans.
func (m *Manager) unrecordedENI(ctx context.Context, s int) (*ENI, error) {
	out, err := m.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: m.slotFilters(s)})
	if err != nil {
		return nil, fmt.Errorf("finding an unrecorded ENI of slot %d: %w", s, err)
	}
	enis := make([]ENI, 0, len(out.NetworkInterfaces))
	for _, n := range out.NetworkInterfaces {
		enis = append(enis, toENI(n))
	}
	return lowest(ctx, m, "ENI", s, enis, func(e ENI) string { return e.ID }), nil
}

// unrecordedVolume finds a volume slotkeeper created for slot s whose id the lease does
// not record yet: tagged with the slot and still carrying TagNeverFormatted. A volume
// that lost that mark has been formatted (it holds a broker's data) and is never taken
// by its tags alone: a restored snapshot or a copy with the slot's tags must not
// become the slot's volume.
func (m *Manager) unrecordedVolume(ctx context.Context, s int) (*Volume, error) {
	filters := append(m.slotFilters(s), types.Filter{Name: aws.String("tag-key"), Values: []string{TagNeverFormatted}})
	out, err := m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: filters})
	if err != nil {
		return nil, fmt.Errorf("finding an unrecorded volume of slot %d: %w", s, err)
	}
	vols := make([]Volume, 0, len(out.Volumes))
	for _, v := range out.Volumes {
		vols = append(vols, toVolume(v))
	}
	return lowest(ctx, m, "never-formatted volume", s, vols, func(v Volume) string { return v.ID }), nil
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

// RecordENI records a slot's ENI in its lease (lease.Store.Record, fenced).
type RecordENI func(ctx context.Context, id, ip string) error

// RecordVolume records a slot's volume in its lease (lease.Store.Record, fenced).
type RecordVolume func(ctx context.Context, id string) error

// EnsureENI returns the slot's ENI: the one l records (described by id, its tags
// cross-checked); else, on the slot's first use, one created for it whose record a
// crash interrupted (found by its tags); else a new one in subnet. A found or created
// ENI is recorded (record) before it is returned, so from then on it is the slot's by
// id. Its private IP is fixed for the ENI's life, which is the slot's life.
func (m *Manager) EnsureENI(ctx context.Context, l lease.Lease, subnet string, record RecordENI) (ENI, bool, error) {
	s := l.Slot
	if l.ENIID != "" {
		e, err := m.RecordedENI(ctx, l)
		if err != nil {
			return ENI{}, false, err
		}
		return *e, false, nil
	}
	e, err := m.unrecordedENI(ctx, s)
	if err != nil {
		return ENI{}, false, err
	}
	created := e == nil
	if created {
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
			return ENI{}, false, fmt.Errorf("creating ENI of slot %d in %s: %w", s, subnet, permanentIf(err))
		}
		n := toENI(*out.NetworkInterface)
		e = &n
		m.Log.InfoContext(ctx, "created slot ENI", "slot", s, "eni", e.ID, "ip", e.IP, "subnet", subnet)
	}
	if err := record(ctx, e.ID, e.IP); err != nil {
		return ENI{}, false, err
	}
	return *e, created, nil
}

// EnsureVolume returns the slot's data volume: the one l records (described by id,
// its tags cross-checked; ErrMissing if it is gone: never a silent new disk); else, on
// the slot's first use, a never-formatted one created for it whose record a crash
// interrupted; else a new one in az, tagged TagNeverFormatted. A found or created
// volume is recorded (record) before the wait until it is available.
func (m *Manager) EnsureVolume(ctx context.Context, l lease.Lease, az string, record RecordVolume) (Volume, bool, error) {
	s := l.Slot
	if l.VolumeID != "" {
		v, err := m.RecordedVolume(ctx, l)
		if err != nil {
			return Volume{}, false, err
		}
		return *v, false, nil
	}
	v, err := m.unrecordedVolume(ctx, s)
	if err != nil {
		return Volume{}, false, err
	}
	if v != nil {
		if err := record(ctx, v.ID); err != nil {
			return Volume{}, false, err
		}
		return *v, false, nil
	}
	tags := append(slotTags(m.Cluster, s), types.Tag{Key: aws.String(TagNeverFormatted), Value: aws.String("true")})
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
		return Volume{}, false, fmt.Errorf("creating volume of slot %d in %s: %w", s, az, permanentIf(err))
	}
	id := aws.ToString(out.VolumeId)
	m.Log.InfoContext(ctx, "created slot volume", "slot", s, "volume", id, "az", az, "size_gib", m.Volume.SizeGiB)
	if err := record(ctx, id); err != nil {
		return Volume{}, false, err
	}
	vol, err := m.waitVolume(ctx, id, "available", func(v Volume) bool { return v.State == "available" })
	return vol, true, err
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
	i := out.Reservations[0].Instances[0]
	in = Instance{
		ID: aws.ToString(i.InstanceId), SubnetID: aws.ToString(i.SubnetId),
		PrivateIP: aws.ToString(i.PrivateIpAddress), Tags: map[string]string{},
	}
	if i.Placement != nil {
		in.AZ = aws.ToString(i.Placement.AvailabilityZone)
	}
	if i.State != nil {
		in.State = string(i.State.Name)
	}
	for _, t := range i.Tags {
		in.Tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return in, true, nil
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

// TagInstance gives instance its slot identity. CreateTags is idempotent.
func (m *Manager) TagInstance(ctx context.Context, id string, s, nodeID int, version int64) error {
	_, err := m.EC2.CreateTags(ctx, &ec2.CreateTagsInput{
		Resources: []string{id},
		Tags: []types.Tag{
			{Key: aws.String(TagCluster), Value: aws.String(m.Cluster)},
			{Key: aws.String(TagSlot), Value: aws.String(strconv.Itoa(s))},
			{Key: aws.String(TagNodeID), Value: aws.String(strconv.Itoa(nodeID))},
			{Key: aws.String(TagLease), Value: aws.String(strconv.FormatInt(version, 10))},
		},
	})
	if err != nil {
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
		ID: aws.ToString(v.VolumeId), AZ: aws.ToString(v.AvailabilityZone),
		State: string(v.State), SizeGiB: aws.ToInt32(v.Size), Type: string(v.VolumeType), Tags: tagMap(v.Tags),
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
