package resources

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

// DetachPolicy is how a slot's volume or ENI is freed from an instance. DESIGN: a
// resource leaves an instance with a plain detach while the instance is running,
// stopping or shutting down; it is forced only once nothing can run there (stopped,
// terminated, gone), or past an explicit bound that is raised loudly. A slot's data is
// never taken from a live instance that is not leaving.
type DetachPolicy struct {
	// ForceAfter is the explicit bound: a plain detach still not done this long after
	// it was asked for is forced even though the instance may still run, and Forced is
	// told. Zero: never; the wait ends with an error instead (the caller retries).
	ForceAfter time.Duration
	// Forced is told of every detach forced past ForceAfter (for the alert, the
	// metric and the SNS message). It may be nil.
	Forced func(ctx context.Context, what, instance, state string, waited time.Duration)
	// Leaving reports whether a running instance is on its way out (its group is
	// terminating it); the attach of a slot's resource then waits for it to stop
	// running instead of refusing. Nil: a running instance is never waited for.
	Leaving func(ctx context.Context, instance string) (bool, string, error)
}

// ErrStillAttached means a plain detach did not finish within its bound and the
// instance may still run Kafka, so it was not forced: retry later.
var ErrStillAttached = errors.New("still attached")

// stateOf returns instance's EC2 state (slot.Gone when EC2 does not know it).
func (m *Manager) stateOf(ctx context.Context, instance string) (string, error) {
	states, err := m.InstanceStates(ctx, []string{instance})
	if err != nil {
		return "", err
	}
	return states[instance], nil
}

// freeFromHolder makes sure a slot resource attached to holder (not the instance it
// is being attached to) may be detached from it, and returns the holder's state: a
// live holder is refused unless it is leaving, in which case this waits (bounded)
// until it no longer runs.
func (m *Manager) freeFromHolder(ctx context.Context, what, holder string) (string, error) {
	st, err := m.stateOf(ctx, holder)
	if err != nil || !slot.Alive(st) {
		return st, err
	}
	if m.Detach.Leaving == nil {
		return st, fmt.Errorf("%w: the slot's %s is attached to %s, which is %s; refusing to take it from a live instance", ErrPermanent, what, holder, st)
	}
	leaving, why, err := m.Detach.Leaving(ctx, holder)
	if err != nil {
		return st, err
	}
	if !leaving {
		return st, fmt.Errorf("%w: the slot's %s is attached to %s, which is %s (%s); refusing to take it from a live instance", ErrPermanent, what, holder, st, why)
	}
	m.Log.InfoContext(ctx, "the slot's previous holder is leaving; waiting until it no longer runs", "resource", what, "from", holder, "reason", why)
	var in Instance
	err = m.WaitInstance(ctx, holder, func(i Instance) bool { return !slot.Alive(i.State) }, &in)
	if err != nil {
		return st, fmt.Errorf("the slot's %s is attached to %s, which is leaving but still %s: %w", what, holder, st, ErrStillAttached)
	}
	if in.ID == holder && in.State == "" {
		return slot.Gone, nil
	}
	return in.State, nil
}

// AttachVolume makes v attached to instance at device, first detaching it from any
// other instance (see StartAttachVolume), and waits until the attachment is complete.
// Repeating it when the volume is already attached to instance only waits for the
// attachment.
func (m *Manager) AttachVolume(ctx context.Context, v Volume, instance, az, device string) (Volume, error) {
	v, err := m.StartAttachVolume(ctx, v, instance, az, device)
	if err != nil {
		return v, err
	}
	return m.waitVolume(ctx, v.ID, "attached to "+instance, func(v Volume) bool {
		return v.AttachedTo == instance && v.AttachmentState == "attached"
	})
}

// StartAttachVolume asks EC2 to attach v, as just described, to instance at device,
// and returns without waiting for the attachment to complete (WaitAttached waits for
// it). A volume attached to another instance is first freed from it (freeFromHolder,
// detachEscalating); one that is not available yet (creating, or detaching from that
// instance) is waited for. When it had to wait, it calls Recheck before the attach. A
// volume already attached (or attaching) to instance is left as it is: a concurrent
// delivery of the same event attached it.
func (m *Manager) StartAttachVolume(ctx context.Context, v Volume, instance, az, device string) (Volume, error) {
	if v.AZ != az {
		return v, fmt.Errorf("%w: volume %s is in %s, instance %s in %s", ErrPermanent, v.ID, v.AZ, instance, az)
	}
	waited := false
	if v.AttachedTo != "" && v.AttachedTo != instance {
		from := v.AttachedTo
		st, err := m.freeFromHolder(ctx, "volume "+v.ID, from)
		if err != nil {
			return v, err
		}
		m.Log.InfoContext(ctx, "detaching slot volume from previous holder", "volume", v.ID, "from", from, "state", orGoneState(st))
		err = m.detachEscalating(ctx, "volume "+v.ID, from, st, Force, m.volumeDetacher(v.ID, from), m.volumeFree(v.ID, instance))
		if err != nil {
			return v, fmt.Errorf("detaching volume %s from %s: %w", v.ID, from, err)
		}
		waited = true
	}
	if v.AttachedTo == instance {
		return v, nil
	}
	if waited || v.State != "available" {
		// Wait until the volume is free, or until a concurrent delivery of the same
		// event has attached it to this instance already.
		var err error
		v, err = m.waitVolume(ctx, v.ID, "available", func(v Volume) bool { return v.State == "available" || v.AttachedTo == instance })
		if err != nil || v.AttachedTo == instance {
			return v, err
		}
		waited = true
	}
	if waited && m.Recheck != nil {
		if err := m.Recheck(ctx); err != nil {
			return v, err
		}
	}
	out, err := m.EC2.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: &v.ID, InstanceId: &instance, Device: &device})
	if err != nil && !m.volumeOn(ctx, v.ID, instance) {
		return v, fmt.Errorf("attaching volume %s to %s at %s: %w", v.ID, instance, device, permanentIf(err))
	}
	v.AttachedTo, v.Device, v.AttachmentState = instance, device, "attaching"
	if out != nil && out.State != "" {
		v.AttachmentState = string(out.State)
	}
	m.Log.InfoContext(ctx, "attached slot volume", "volume", v.ID, "to", instance, "device", device)
	return v, nil
}

// AttachENI makes e attached to instance at ENIDeviceIndex, first detaching it from any
// other instance (see StartAttachENI), and waits until the attachment is complete.
// Repeating it only waits for the attachment.
func (m *Manager) AttachENI(ctx context.Context, e ENI, instance, az string) (ENI, error) {
	e, err := m.StartAttachENI(ctx, e, instance, az)
	if err != nil {
		return e, err
	}
	return m.waitENI(ctx, e.ID, "attached to "+instance, func(e ENI) bool {
		return e.AttachedTo == instance && e.AttachmentStatus == "attached"
	})
}

// StartAttachENI is StartAttachVolume for the slot's ENI, at ENIDeviceIndex.
func (m *Manager) StartAttachENI(ctx context.Context, e ENI, instance, az string) (ENI, error) {
	if e.AZ != az {
		return e, fmt.Errorf("%w: ENI %s is in %s, instance %s in %s", ErrPermanent, e.ID, e.AZ, instance, az)
	}
	waited := false
	if e.AttachedTo != "" && e.AttachedTo != instance {
		from := e.AttachedTo
		st, err := m.freeFromHolder(ctx, "ENI "+e.ID, from)
		if err != nil {
			return e, err
		}
		m.Log.InfoContext(ctx, "detaching slot ENI from previous holder", "eni", e.ID, "from", from, "state", orGoneState(st))
		err = m.detachEscalating(ctx, "ENI "+e.ID, from, st, Force, m.eniDetacher(e.AttachmentID), m.eniFree(e.ID, instance))
		if err != nil {
			return e, fmt.Errorf("detaching ENI %s from %s: %w", e.ID, from, err)
		}
		waited = true
	}
	if e.AttachedTo == instance {
		return e, nil
	}
	if waited || e.Status != "available" {
		var err error
		e, err = m.waitENI(ctx, e.ID, "available", func(e ENI) bool { return e.Status == "available" || e.AttachedTo == instance })
		if err != nil || e.AttachedTo == instance {
			return e, err
		}
		waited = true
	}
	if waited && m.Recheck != nil {
		if err := m.Recheck(ctx); err != nil {
			return e, err
		}
	}
	out, err := m.EC2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: &e.ID, InstanceId: &instance, DeviceIndex: aws.Int32(ENIDeviceIndex),
	})
	if err != nil && !m.eniOn(ctx, e.ID, instance) {
		return e, fmt.Errorf("attaching ENI %s to %s at device index %d: %w", e.ID, instance, ENIDeviceIndex, permanentIf(err))
	}
	e.AttachedTo, e.AttachmentStatus = instance, "attaching"
	if out != nil && out.AttachmentId != nil {
		e.AttachmentID = aws.ToString(out.AttachmentId)
	}
	m.Log.InfoContext(ctx, "attached slot ENI", "eni", e.ID, "to", instance, "ip", e.IP)
	return e, nil
}

// WaitAttached polls instance, one DescribeInstances per round, until EC2 shows the
// network interface eniID (unless "") and the volume volumeID (unless "") attached to
// it: both attachments are waited for together.
func (m *Manager) WaitAttached(ctx context.Context, instance, eniID, volumeID string) error {
	what := "the attachment of " + strings.Join(slices.DeleteFunc([]string{eniID, volumeID}, func(s string) bool { return s == "" }), " and ") + " to " + instance
	return m.wait(ctx, what, func(ctx context.Context) (bool, error) {
		in, found, err := m.DescribeInstance(ctx, instance)
		if err != nil {
			return false, err
		}
		if !found {
			return false, fmt.Errorf("instance %s vanished while %s was waited for", instance, what)
		}
		if eniID != "" {
			if a, ok := in.ENI(eniID); !ok || a.Status != "attached" {
				return false, nil
			}
		}
		if volumeID != "" {
			if a, ok := in.Volume(volumeID); !ok || a.Status != "attached" {
				return false, nil
			}
		}
		return true, nil
	})
}

// DetachMode says how DetachFrom detaches.
type DetachMode int

const (
	// Plain detaches and waits, and never forces: for an instance that runs no broker
	// on the resources (a launch that is given up before its broker started).
	Plain DetachMode = iota
	// PlainThenForce detaches plainly and waits; it forces the detach once the
	// instance is halted (stopped, terminated or gone), or once the policy's
	// ForceAfter has passed (loudly: DetachPolicy.Forced). Without ForceAfter, a plain
	// detach that does not finish in Poll.Timeout while the instance may still run
	// ends in ErrStillAttached, never in a force.
	PlainThenForce
	// Force forces the detach at once if the instance is halted; an instance that is
	// not (shutting down, stopping, running) gets PlainThenForce instead.
	Force
)

// DetachFrom detaches the slot's volume and ENI, the ones lease l records (described by
// their ids; tags play no part), from instance if they are attached to it, and waits
// until both are available. It reports how many it detached. A recorded resource
// that is gone has nothing to detach.
func (m *Manager) DetachFrom(ctx context.Context, l lease.Lease, instance string, mode DetachMode) (detached int, err error) {
	// The instance's state, looked up once for both resources.
	var st *string
	stateOf := func(ctx context.Context) (string, error) {
		if st == nil {
			got, err := m.stateOf(ctx, instance)
			if err != nil {
				return "", err
			}
			st = &got
		}
		return *st, nil
	}
	var v *Volume
	if l.VolumeID != "" {
		if v, err = m.VolumeByID(ctx, l.VolumeID); err != nil {
			return 0, err
		}
	}
	if v != nil && v.AttachedTo == instance {
		state, err := stateOf(ctx)
		if err != nil {
			return detached, err
		}
		err = m.detachEscalating(ctx, "volume "+v.ID, instance, state, mode, m.volumeDetacher(v.ID, instance), m.volumeFree(v.ID, ""))
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
		state, err := stateOf(ctx)
		if err != nil {
			return detached, err
		}
		err = m.detachEscalating(ctx, "ENI "+e.ID, instance, state, mode, m.eniDetacher(e.AttachmentID), m.eniFree(e.ID, ""))
		if err != nil {
			return detached, fmt.Errorf("detaching ENI %s from %s: %w", e.ID, instance, err)
		}
		detached++
	}
	return detached, nil
}

// DetachFromInstance is DetachFrom for an instance that EC2 describes as in (a fresh
// description): which of the resources lease l records are attached to it, and its
// state, are read from that description instead of describing each resource, and the
// two detaches run at the same time, each as DetachFrom's. It reports how many it
// detached.
func (m *Manager) DetachFromInstance(ctx context.Context, l lease.Lease, in Instance, mode DetachMode) (int, error) {
	type job struct {
		what   string
		detach func(context.Context, bool) error
		free   func(context.Context) (bool, error)
	}
	var jobs []job
	if a, ok := in.Volume(l.VolumeID); l.VolumeID != "" && ok && a.Status != "detached" {
		jobs = append(jobs, job{"volume " + l.VolumeID, m.volumeDetacher(l.VolumeID, in.ID), m.volumeFree(l.VolumeID, "")})
	}
	if a, ok := in.ENI(l.ENIID); l.ENIID != "" && ok && a.AttachmentID != "" && a.Status != "detached" {
		jobs = append(jobs, job{"ENI " + l.ENIID, m.eniDetacher(a.AttachmentID), m.eniFree(l.ENIID, "")})
	}
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.detachEscalating(ctx, j.what, in.ID, in.State, mode, j.detach, j.free); err != nil {
				errs[i] = fmt.Errorf("detaching %s from %s: %w", j.what, in.ID, err)
			}
		}()
	}
	wg.Wait()
	detached := 0
	for _, err := range errs {
		if err == nil {
			detached++
		}
	}
	return detached, errors.Join(errs...)
}

// volumeDetacher and eniDetacher detach a resource from an instance, plainly or by
// force; volumeFree and eniFree report whether it is free (or, when next is given,
// already attached to next by a concurrent delivery).
func (m *Manager) volumeDetacher(id, from string) func(context.Context, bool) error {
	return func(ctx context.Context, force bool) error {
		_, err := m.EC2.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: &id, InstanceId: &from, Force: aws.Bool(force)})
		return err
	}
}

func (m *Manager) eniDetacher(attachment string) func(context.Context, bool) error {
	return func(ctx context.Context, force bool) error {
		_, err := m.EC2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: &attachment, Force: aws.Bool(force)})
		return err
	}
}

func (m *Manager) volumeFree(id, next string) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		out, err := m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
		if err != nil {
			return false, fmt.Errorf("describing volume %s: %w", id, err)
		}
		if len(out.Volumes) == 0 {
			return false, fmt.Errorf("volume %s vanished", id)
		}
		v := toVolume(out.Volumes[0])
		return v.State == "available" || next != "" && v.AttachedTo == next, nil
	}
}

func (m *Manager) eniFree(id, next string) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		out, err := m.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
		if err != nil {
			return false, fmt.Errorf("describing ENI %s: %w", id, err)
		}
		if len(out.NetworkInterfaces) == 0 {
			return false, fmt.Errorf("ENI %s vanished", id)
		}
		e := toENI(out.NetworkInterfaces[0])
		return e.Status == "available" || next != "" && e.AttachedTo == next, nil
	}
}

// detachEscalating detaches a resource from instance, whose state was just read as st,
// as mode and the policy say, and waits until free reports it free:
//
//   - Force on a halted instance forces at once;
//   - otherwise the detach is plain, and while waiting the instance's state is looked
//     at again: once it is halted, the detach is forced (nothing can run there);
//   - with PlainThenForce (or Force) and a policy bound, a plain detach still not done
//     after Detach.ForceAfter is forced although the instance may still run, and
//     Detach.Forced is told (the caller alerts);
//   - Plain never forces; a wait that ends without the resource free is an error
//     (ErrStillAttached when the instance may still run).
//
// Each wait after a (plain or forced) detach is bounded by Poll.Timeout, or by
// ForceAfter while that is longer.
func (m *Manager) detachEscalating(ctx context.Context, what, instance, st string, mode DetachMode, detach func(context.Context, bool) error, free func(context.Context) (bool, error)) error {
	ignorable := func(err error) bool { return err == nil || awsapi.IsIncorrectState(err) || awsapi.IsNotFound(err) }
	forced := mode == Force && slot.Halted(st)
	if forced {
		m.Log.InfoContext(ctx, "forcing the detach: nothing can run on the instance", "resource", what, "from", instance, "state", orGoneState(st))
	}
	if err := detach(ctx, forced); !ignorable(err) {
		return err
	}
	start := time.Now()
	bound := m.Poll.Timeout
	if !forced && mode != Plain && m.Detach.ForceAfter > bound {
		bound = m.Detach.ForceAfter
	}
	deadline := start.Add(bound)
	delay := m.Poll.Initial
	for {
		done, err := free(ctx)
		if err != nil || done {
			return err
		}
		if !forced && mode != Plain {
			if st, err = m.stateOf(ctx, instance); err != nil {
				return err
			}
			switch waited := time.Since(start); {
			case slot.Halted(st):
				m.Log.WarnContext(ctx, "plain detach not done and the instance is halted: forcing it", "resource", what, "from", instance, "state", orGoneState(st))
				forced = true
			case m.Detach.ForceAfter > 0 && waited >= m.Detach.ForceAfter:
				m.Log.ErrorContext(ctx, "plain detach not done past the bound: forcing it although the instance may still run", "resource", what,
					"from", instance, "state", st, "waited", waited.Round(time.Millisecond).String())
				if m.Detach.Forced != nil {
					m.Detach.Forced(ctx, what, instance, st, waited)
				}
				forced = true
			}
			if forced {
				if err := detach(ctx, true); !ignorable(err) {
					return err
				}
				deadline = time.Now().Add(m.Poll.Timeout)
			}
		}
		if time.Now().After(deadline) {
			if !forced && !slot.Halted(st) {
				return fmt.Errorf("%s: plain detach not done after %s and %s is %s, so it may still use it; not forcing: %w",
					what, time.Since(start).Round(time.Millisecond), instance, st, ErrStillAttached)
			}
			return fmt.Errorf("waiting for %s to be free: gave up after %s", what, time.Since(start).Round(time.Millisecond))
		}
		jittered := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to be free: %w", what, ctx.Err())
		case <-time.After(jittered):
		}
		delay = min(delay*3/2, m.Poll.Max)
	}
}

func orGoneState(s string) string {
	if s == slot.Gone {
		return "gone"
	}
	return s
}

func (m *Manager) waitVolume(ctx context.Context, id, what string, ok func(Volume) bool) (Volume, error) {
	var v Volume
	err := m.wait(ctx, "volume "+id+" "+what, func(ctx context.Context) (bool, error) {
		out, err := m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
		if awsapi.IsNotFound(err) {
			return false, nil // EC2 is eventually consistent: a volume just created may not show yet
		}
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
		if awsapi.IsNotFound(err) {
			return false, nil // EC2 is eventually consistent: an ENI just created may not show yet
		}
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
