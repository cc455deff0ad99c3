package harness

import (
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/test/emulator"
)

// The latency model (emulator.SetLatency) through the SDK: at scale 0 nothing waits
// and no window opens; at scale 1 an attach stays attaching and a detach detaching
// until its window ends, then the state changes; spans name the caller and count the
// sequential round trips. No timing is asserted: each window is at least a second, and
// the checks read the state right after the call and again once it has changed.
func TestLatencyModel(t *testing.T) {
	t.Parallel()
	h := Start(t)
	ctx := t.Context()
	w := h.NewWorld(t, "leases")
	cfg := h.AWSConfig()
	cfg.AppID = "under-test"
	proxied, direct := ec2.NewFromConfig(cfg), ec2.NewFromConfig(h.DirectConfig())
	id := h.RunInstance(t, w, w.Subnets[0].ID)
	vol, err := direct.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String(w.Subnets[0].AZ), Size: aws.Int32(10)})
	if err != nil {
		t.Fatal(err)
	}
	attachment := func() (ec2types.VolumeState, ec2types.VolumeAttachmentState) {
		t.Helper()
		out, err := proxied.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{*vol.VolumeId}})
		if err != nil {
			t.Fatal(err)
		}
		v := out.Volumes[0]
		if len(v.Attachments) == 0 {
			return v.State, ""
		}
		return v.State, v.Attachments[0].State
	}
	waitFor := func(want ec2types.VolumeAttachmentState, state ec2types.VolumeState) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if s, a := attachment(); s == state && a == want {
				return
			}
		}
		s, a := attachment()
		t.Fatalf("volume %s, attachment %q; want %s, %q", s, a, state, want)
	}

	t.Run("scale 0: no window", func(t *testing.T) {
		h.SetLatency(&emulator.LatencyModel{Seed: 1, Scale: 0})
		defer h.SetLatency(nil)
		if _, err := proxied.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id, Device: aws.String("/dev/sdf")}); err != nil {
			t.Fatal(err)
		}
		if s, a := attachment(); a != ec2types.VolumeAttachmentStateAttached {
			t.Errorf("right after the attach at scale 0: %s, %q; want attached (moto's)", s, a)
		}
		if _, err := proxied.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id}); err != nil {
			t.Fatal(err)
		}
		waitFor("", ec2types.VolumeStateAvailable)
		spans := h.Spans()
		if len(spans) != 4 || spans[0].Caller != "under-test" || spans[0].Action != "AttachVolume" || emulator.RoundTrips(spans) != 4 {
			t.Errorf("spans %+v; want 4 sequential calls by under-test, the attach first", spans)
		}
	})

	t.Run("scale 1: attaching, then attached; detaching, then available", func(t *testing.T) {
		h.SetLatency(&emulator.LatencyModel{Seed: 2, Scale: 1})
		defer h.SetLatency(nil)
		if _, err := proxied.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id, Device: aws.String("/dev/sdf")}); err != nil {
			t.Fatal(err)
		}
		if s, a := attachment(); s != ec2types.VolumeStateInUse || a != ec2types.VolumeAttachmentStateAttaching {
			t.Errorf("right after the attach: %s, %q; want in-use, attaching", s, a)
		}
		waitFor(ec2types.VolumeAttachmentStateAttached, ec2types.VolumeStateInUse)
		out, err := proxied.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: vol.VolumeId, InstanceId: &id})
		if err != nil || out.State != ec2types.VolumeAttachmentStateDetaching {
			t.Fatalf("detach: %+v, %v; want detaching", out, err)
		}
		if s, a := attachment(); s != ec2types.VolumeStateInUse || a != ec2types.VolumeAttachmentStateDetaching {
			t.Errorf("right after the detach: %s, %q; want in-use, detaching", s, a)
		}
		waitFor("", ec2types.VolumeStateAvailable)
	})
}
