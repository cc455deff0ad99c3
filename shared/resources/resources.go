// Package resources finds, creates, frees and attaches a slot's EC2 resources: its
// network interface (ENI) and its data volume. Resources are found by their slotkeeper
// tags, which are set atomically at creation, so a retry after a crash finds what the
// crashed attempt created instead of creating a second one.
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
)

// Tag keys (public contract).
const (
	TagCluster = "slotkeeper:cluster"
	TagSlot    = "slotkeeper:slot"
	TagNodeID  = "slotkeeper:node-id"
	TagLease   = "slotkeeper:lease"
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
}

// ENI is the part of a network interface slotkeeper looks at.
type ENI struct {
	ID, SubnetID, AZ, IP string
	AttachedTo           string // instance id, "" when not attached
	AttachmentID         string
	Status               string // available, in-use, attaching, detaching
	AttachmentStatus     string // attaching, attached, detaching, detached
}

// Volume is the part of a volume slotkeeper looks at.
type Volume struct {
	ID, AZ, State   string
	Type            string // EBS volume type (gp3, ...)
	SizeGiB         int32
	AttachedTo      string
	AttachmentState string
	Device          string
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

// FindENI returns the slot's ENI, or nil when it has none yet. Should there ever be
// several (created outside slotkeeper), the lowest id is the slot's and the others are
// logged for the operator.
func (m *Manager) FindENI(ctx context.Context, s int) (*ENI, error) {
	out, err := m.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: m.slotFilters(s)})
	if err != nil {
		return nil, fmt.Errorf("finding ENI of slot %d: %w", s, err)
	}
	enis := make([]ENI, 0, len(out.NetworkInterfaces))
	for _, n := range out.NetworkInterfaces {
		enis = append(enis, toENI(n))
	}
	return lowest(ctx, m, "ENI", s, enis, func(e ENI) string { return e.ID }), nil
}

// lowest returns the item with the lowest id, or nil when there is none, and warns
// when a slot has several of a kind (the others are for the operator to look at).
func lowest[T any](ctx context.Context, m *Manager, kind string, s int, items []T, id func(T) string) *T {
	if len(items) == 0 {
		return nil
	}
	slices.SortFunc(items, func(a, b T) int { return strings.Compare(id(a), id(b)) })
	if len(items) > 1 {
		m.Log.WarnContext(ctx, "slot has several "+kind+"s; using the lowest id", "slot", s, "id", id(items[0]), "extra", len(items)-1)
	}
	return &items[0]
}

// EnsureENI returns the slot's ENI, creating it in subnet on first use. Its private IP
// is fixed for the ENI's life, which is the slot's life.
func (m *Manager) EnsureENI(ctx context.Context, s int, subnet string, version int64) (ENI, bool, error) {
	if e, err := m.FindENI(ctx, s); err != nil || e != nil {
		if e == nil {
			return ENI{}, false, err
		}
		return *e, false, nil
	}
	out, err := m.EC2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId:    &subnet,
		Groups:      m.SGs,
		Description: aws.String(fmt.Sprintf("slotkeeper %s slot %d", m.Cluster, s)),
		ClientToken: aws.String(m.clientToken("eni", s, version)),
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeNetworkInterface, Tags: slotTags(m.Cluster, s),
		}},
	})
	if err != nil {
		return ENI{}, false, fmt.Errorf("creating ENI of slot %d in %s: %w", s, subnet, permanentIf(err))
	}
	e := toENI(*out.NetworkInterface)
	m.Log.InfoContext(ctx, "created slot ENI", "slot", s, "eni", e.ID, "ip", e.IP, "subnet", subnet)
	return e, true, nil
}

// FindVolume returns the slot's data volume, or nil when it has none yet.
func (m *Manager) FindVolume(ctx context.Context, s int) (*Volume, error) {
	out, err := m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: m.slotFilters(s)})
	if err != nil {
		return nil, fmt.Errorf("finding volume of slot %d: %w", s, err)
	}
	vols := make([]Volume, 0, len(out.Volumes))
	for _, v := range out.Volumes {
		vols = append(vols, toVolume(v))
	}
	return lowest(ctx, m, "volume", s, vols, func(v Volume) string { return v.ID }), nil
}

// EnsureVolume returns the slot's data volume, creating it in az on first use and
// waiting until it is available.
func (m *Manager) EnsureVolume(ctx context.Context, s int, az string, version int64) (Volume, bool, error) {
	if v, err := m.FindVolume(ctx, s); err != nil || v != nil {
		if v == nil {
			return Volume{}, false, err
		}
		return *v, false, nil
	}
	in := &ec2.CreateVolumeInput{
		AvailabilityZone: &az,
		Size:             aws.Int32(m.Volume.SizeGiB),
		VolumeType:       types.VolumeType(m.Volume.Type),
		Encrypted:        aws.Bool(m.Volume.Encrypted),
		ClientToken:      aws.String(m.clientToken("volume", s, version)),
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeVolume, Tags: slotTags(m.Cluster, s),
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
	v, err := m.waitVolume(ctx, id, "available", func(v Volume) bool { return v.State == "available" })
	return v, true, err
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
		Status: string(n.Status),
	}
	if a := n.Attachment; a != nil && aws.ToString(a.InstanceId) != "" {
		e.AttachedTo, e.AttachmentID, e.AttachmentStatus = aws.ToString(a.InstanceId), aws.ToString(a.AttachmentId), string(a.Status)
	}
	return e
}

func toVolume(v types.Volume) Volume {
	vol := Volume{
		ID: aws.ToString(v.VolumeId), AZ: aws.ToString(v.AvailabilityZone),
		State: string(v.State), SizeGiB: aws.ToInt32(v.Size), Type: string(v.VolumeType),
	}
	for _, a := range v.Attachments {
		if a.State == types.VolumeAttachmentStateDetached {
			continue
		}
		vol.AttachedTo, vol.AttachmentState, vol.Device = aws.ToString(a.InstanceId), string(a.State), aws.ToString(a.Device)
	}
	return vol
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
