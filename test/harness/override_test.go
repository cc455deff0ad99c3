package harness

import (
	"bytes"
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// An override rewrites what the code under test sees, while the call still takes
// effect at moto; it applies only to its action, only Times times, and until removed.
func TestOverride(t *testing.T) {
	h := Start(t)
	modifying := func(_, b []byte) []byte {
		return bytes.ReplaceAll(b, []byte("<modificationState>completed<"), []byte("<modificationState>modifying<"))
	}
	h.Override(Override{Action: "DescribeVolumesModifications", Rewrite: modifying, Times: 2})
	var armed atomic.Bool // an override armed later through its own state
	var requests atomic.Int32
	remove := h.Override(Override{Action: "DescribeVolumes", Rewrite: func(req, b []byte) []byte {
		if bytes.Contains(req, []byte("Action=DescribeVolumes")) {
			requests.Add(1)
		}
		if !armed.Load() {
			return b
		}
		return bytes.ReplaceAll(b, []byte("<size>20<"), []byte("<size>99<"))
	}})

	ctx := context.Background()
	proxied, direct := ec2.NewFromConfig(h.AWSConfig()), ec2.NewFromConfig(h.DirectConfig())
	vol, err := direct.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String("us-east-1a"), Size: aws.Int32(10)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proxied.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: vol.VolumeId, Size: aws.Int32(20)}); err != nil {
		t.Fatal(err)
	}
	state := func(c *ec2.Client) ec2types.VolumeModificationState {
		t.Helper()
		out, err := c.DescribeVolumesModifications(ctx, &ec2.DescribeVolumesModificationsInput{VolumeIds: []string{*vol.VolumeId}})
		if err != nil || len(out.VolumesModifications) != 1 {
			t.Fatalf("describing modifications: %v %+v", err, out)
		}
		return out.VolumesModifications[0].ModificationState
	}
	size := func(c *ec2.Client) int32 {
		t.Helper()
		out, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{*vol.VolumeId}})
		if err != nil || len(out.Volumes) != 1 {
			t.Fatalf("describing volume: %v", err)
		}
		return aws.ToInt32(out.Volumes[0].Size)
	}

	got := []ec2types.VolumeModificationState{state(proxied), state(proxied), state(proxied), state(direct)}
	want := []ec2types.VolumeModificationState{"modifying", "modifying", "completed", "completed"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("modification states %v, want %v (two rewritten, then moto's own)", got, want)
		}
	}
	if s := size(proxied); s != 20 {
		t.Errorf("unarmed override changed the size to %d", s)
	}
	armed.Store(true)
	if s, d := size(proxied), size(direct); s != 99 || d != 20 {
		t.Errorf("armed override: proxied size %d, direct %d, want 99 and 20", s, d)
	}
	remove()
	if s := size(proxied); s != 20 {
		t.Errorf("removed override still applies: size %d", s)
	}
	if n := requests.Load(); n != 2 {
		t.Errorf("the DescribeVolumes override saw %d requests, want 2 (then it was removed)", n)
	}
	if n := h.Calls("DescribeVolumesModifications"); n != 3 {
		t.Errorf("%d DescribeVolumesModifications counted, want 3", n)
	}
}

// The hook cannot be installed once the proxy is in use.
func TestOverrideAfterTrafficPanics(t *testing.T) {
	h := Start(t)
	if _, err := ec2.NewFromConfig(h.AWSConfig()).DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "before the proxy receives its first call") {
			t.Fatalf("recovered %v, want the ordering panic", r)
		}
	}()
	h.Override(Override{Action: "DescribeVolumes", Rewrite: func(_, b []byte) []byte { return b }})
}
