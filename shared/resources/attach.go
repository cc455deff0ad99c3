package resources

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// detachMode says how a resource attached to another instance may be freed.
// DESIGN: detach, force only once that instance is shutting-down, terminated or gone;
// and never take a slot's data away from a live (pending or running) instance.
func (m *Manager) detachMode(ctx context.Context, holder string) (force bool, err error) {
	states, err := m.InstanceStates(ctx, []string{holder})
	if err != nil {
		return false, err
	}
	st := states[holder]
	switch {
	case slot.Alive(st):
		return false, fmt.Errorf("%w: the slot's resource is attached to %s, which is %s; refusing to take it from a live instance", ErrPermanent, holder, st)
	case slot.Dead(st):
		return true, nil
	default: // stopping or stopped: the instance is not using it; a plain detach is enough
		return false, nil
	}
}

// AttachVolume makes v attached to instance at device, first detaching it from any
// other instance (see detachMode) and waiting until it is available. Repeating it when
// the volume is already attached to instance only waits for the attachment.
func (m *Manager) AttachVolume(ctx context.Context, v Volume, instance, az, device string) (Volume, error) {
	if v.AZ != az {
		return v, fmt.Errorf("%w: volume %s is in %s, instance %s in %s", ErrPermanent, v.ID, v.AZ, instance, az)
	}
	if v.AttachedTo != "" && v.AttachedTo != instance {
		force, err := m.detachMode(ctx, v.AttachedTo)
		if err != nil {
			return v, err
		}
		m.Log.InfoContext(ctx, "detaching slot volume from previous holder", "volume", v.ID, "from", v.AttachedTo, "force", force)
		_, err = m.EC2.DetachVolume(ctx, &ec2.DetachVolumeInput{
			VolumeId: &v.ID, InstanceId: aws.String(v.AttachedTo), Force: aws.Bool(force),
		})
		if err != nil && !awsapi.IsIncorrectState(err) && !awsapi.IsNotFound(err) { // else: already detached
			return v, fmt.Errorf("detaching volume %s from %s: %w", v.ID, v.AttachedTo, err)
		}
	}
	// Wait until the volume is free, or until a concurrent delivery of the same event
	// has attached it to this instance already.
	v, err := m.waitVolume(ctx, v.ID, "available", func(v Volume) bool { return v.State == "available" || v.AttachedTo == instance })
	if err != nil {
		return v, err
	}
	if v.AttachedTo != instance {
		_, err := m.EC2.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: &v.ID, InstanceId: &instance, Device: &device})
		if err != nil && !m.volumeOn(ctx, v.ID, instance) {
			return v, fmt.Errorf("attaching volume %s to %s at %s: %w", v.ID, instance, device, permanentIf(err))
		}
		m.Log.InfoContext(ctx, "attached slot volume", "volume", v.ID, "instance", instance, "device", device)
	}
	return m.waitVolume(ctx, v.ID, "attached to "+instance, func(v Volume) bool {
		return v.AttachedTo == instance && v.AttachmentState == "attached"
	})
}

// AttachENI makes e attached to instance at ENIDeviceIndex, first detaching it from any
// other instance (see detachMode). Repeating it only waits for the attachment.
func (m *Manager) AttachENI(ctx context.Context, e ENI, instance, az string) (ENI, error) {
	if e.AZ != az {
		return e, fmt.Errorf("%w: ENI %s is in %s, instance %s in %s", ErrPermanent, e.ID, e.AZ, instance, az)
	}
	if e.AttachedTo != "" && e.AttachedTo != instance {
		force, err := m.detachMode(ctx, e.AttachedTo)
		if err != nil {
			return e, err
		}
		m.Log.InfoContext(ctx, "detaching slot ENI from previous holder", "eni", e.ID, "from", e.AttachedTo, "force", force)
		_, err = m.EC2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: &e.AttachmentID, Force: aws.Bool(force)})
		if err != nil && !awsapi.IsNotFound(err) && !awsapi.IsIncorrectState(err) {
			return e, fmt.Errorf("detaching ENI %s from %s: %w", e.ID, e.AttachedTo, err)
		}
	}
	e, err := m.waitENI(ctx, e.ID, "available", func(e ENI) bool { return e.Status == "available" || e.AttachedTo == instance })
	if err != nil {
		return e, err
	}
	if e.AttachedTo != instance {
		_, err := m.EC2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
			NetworkInterfaceId: &e.ID, InstanceId: &instance, DeviceIndex: aws.Int32(ENIDeviceIndex),
		})
		if err != nil && !m.eniOn(ctx, e.ID, instance) {
			return e, fmt.Errorf("attaching ENI %s to %s at device index %d: %w", e.ID, instance, ENIDeviceIndex, permanentIf(err))
		}
		m.Log.InfoContext(ctx, "attached slot ENI", "eni", e.ID, "instance", instance, "ip", e.IP)
	}
	return m.waitENI(ctx, e.ID, "attached to "+instance, func(e ENI) bool {
		return e.AttachedTo == instance && e.AttachmentStatus == "attached"
	})
}

// DetachMode says how DetachFrom detaches.
type DetachMode int

const (
	// Plain detaches and waits: for an instance that is not running a broker on the
	// resources (yet, or any more).
	Plain DetachMode = iota
	// PlainThenForce detaches plainly and forces the detach if the resource is still
	// not available after Poll.Timeout: for a leaving instance whose broker was stopped.
	PlainThenForce
	// Force detaches by force at once: only for an instance that is shutting down,
	// terminated or gone.
	Force
)

// DetachFrom detaches the slot's volume and ENI, the ones lease l records (described by
// their ids; tags play no part), from instance if they are attached to it, and waits
// until both are available. It reports how many it detached. A recorded resource
// that is gone has nothing to detach.
func (m *Manager) DetachFrom(ctx context.Context, l lease.Lease, instance string, mode DetachMode) (detached int, err error) {
	var v *Volume
	if l.VolumeID != "" {
		if v, err = m.VolumeByID(ctx, l.VolumeID); err != nil {
			return 0, err
		}
	}
	if v != nil && v.AttachedTo == instance {
		err := m.detachEscalating(ctx, "volume "+v.ID, mode, func(ctx context.Context, force bool) error {
			_, err := m.EC2.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: &v.ID, InstanceId: &instance, Force: aws.Bool(force)})
			return err
		}, func(ctx context.Context) error {
			_, err := m.waitVolume(ctx, v.ID, "available", func(v Volume) bool { return v.State == "available" })
			return err
		})
		if err != nil {
			return detached, fmt.Errorf("detaching volume %s from %s: %w", v.ID, instance, err)
		}
		detached++
	}
	var e *ENI
	if l.ENIID != "" {
		if e, err = m.ENIByID(ctx, l.ENIID); err != nil {
			return detached, err
		}
	}
	if e != nil && e.AttachedTo == instance {
		err := m.detachEscalating(ctx, "ENI "+e.ID, mode, func(ctx context.Context, force bool) error {
			_, err := m.EC2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: &e.AttachmentID, Force: aws.Bool(force)})
			return err
		}, func(ctx context.Context) error {
			_, err := m.waitENI(ctx, e.ID, "available", func(e ENI) bool { return e.Status == "available" })
			return err
		})
		if err != nil {
			return detached, fmt.Errorf("detaching ENI %s from %s: %w", e.ID, instance, err)
		}
		detached++
	}
	return detached, nil
}

// detachEscalating runs detach (plain or forced as mode says) and waits; with
// PlainThenForce a plain detach that does not finish in time is forced.
func (m *Manager) detachEscalating(ctx context.Context, what string, mode DetachMode, detach func(context.Context, bool) error, wait func(context.Context) error) error {
	ignorable := func(err error) bool { return err == nil || awsapi.IsIncorrectState(err) || awsapi.IsNotFound(err) }
	if err := detach(ctx, mode == Force); !ignorable(err) {
		return err
	}
	err := wait(ctx)
	if err == nil || mode != PlainThenForce || ctx.Err() != nil {
		return err
	}
	m.Log.WarnContext(ctx, "plain detach did not finish in time; forcing it", "resource", what, "error", err.Error())
	if err := detach(ctx, true); !ignorable(err) {
		return err
	}
	return wait(ctx)
}

func (m *Manager) waitVolume(ctx context.Context, id, what string, ok func(Volume) bool) (Volume, error) {
	var v Volume
	err := m.wait(ctx, "volume "+id+" "+what, func(ctx context.Context) (bool, error) {
		out, err := m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
		if err != nil {
			return false, fmt.Errorf("describing volume %s: %w", id, err)
		}
		if len(out.Volumes) == 0 {
			return false, fmt.Errorf("volume %s vanished", id)
		}
		v = toVolume(out.Volumes[0])
		return ok(v), nil
	})
	return v, err
}

func (m *Manager) waitENI(ctx context.Context, id, what string, ok func(ENI) bool) (ENI, error) {
	var e ENI
	err := m.wait(ctx, "ENI "+id+" "+what, func(ctx context.Context) (bool, error) {
		out, err := m.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
		if err != nil {
			return false, fmt.Errorf("describing ENI %s: %w", id, err)
		}
		if len(out.NetworkInterfaces) == 0 {
			return false, fmt.Errorf("ENI %s vanished", id)
		}
		e = toENI(out.NetworkInterfaces[0])
		return ok(e), nil
	})
	return e, err
}

// volumeOn and eniOn tell whether a failed attach lost a race with a concurrent
// delivery of the same event that attached the resource to the same instance: then
// the failure is success.
func (m *Manager) volumeOn(ctx context.Context, id, instance string) bool {
	out, err := m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
	return err == nil && len(out.Volumes) == 1 && toVolume(out.Volumes[0]).AttachedTo == instance
}

func (m *Manager) eniOn(ctx context.Context, id, instance string) bool {
	out, err := m.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	return err == nil && len(out.NetworkInterfaces) == 1 && toENI(out.NetworkInterfaces[0]).AttachedTo == instance
}
