// Package test holds slotkeeper's integration tests: the real functions' handlers,
// driven exactly as Lambda drives them, against moto behind the recording proxy of
// package harness.
package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
	"github.com/slotkeeper/slotkeeper/shared/resources"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of many invocations.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cluster is one slotkeeper deployment under test: its configuration, the launch
// handler wired to the proxied AWS endpoint, and direct clients for assertions.
type cluster struct {
	t       testing.TB
	h       *harness.Harness
	w       *harness.World
	cfg     config.Config
	vars    map[string]string // the SLOTKEEPER_ variables cfg was loaded from, without the prefix
	launch  *launch.Handler
	ec2     *ec2.Client // direct to moto
	store   *lease.Store
	logs    *syncBuffer
	metrics *syncBuffer
}

var clusterSeq struct {
	sync.Mutex
	n int
}

// newCluster builds a world and a launch handler for a cluster of slots slots over
// the world's three subnets. env overrides SLOTKEEPER_ variables (without the prefix).
func newCluster(t testing.TB, h *harness.Harness, slots int, env map[string]string) *cluster {
	t.Helper()
	clusterSeq.Lock()
	clusterSeq.n++
	name := fmt.Sprintf("kafka%d", clusterSeq.n)
	clusterSeq.Unlock()
	w := h.NewWorld(t, name+"-leases")
	vars := map[string]string{
		"CLUSTER": name, "ASG_NAME": name + "-asg", "TABLE": w.Table, "SLOT_COUNT": strconv.Itoa(slots),
		"SUBNETS":         w.Subnets[0].ID + "," + w.Subnets[1].ID + "," + w.Subnets[2].ID,
		"SECURITY_GROUPS": w.SecurityGroupID, "HEARTBEAT_INTERVAL": "5s", "ATTACH_TIMEOUT": "20s",
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.Load(func(k string) string { return vars[strings.TrimPrefix(k, config.Prefix)] })
	if err != nil {
		t.Fatal(err)
	}
	awsCfg := h.AWSConfig()
	c := &cluster{t: t, h: h, w: w, cfg: cfg, vars: vars, logs: &syncBuffer{}, metrics: &syncBuffer{}}
	c.launch = launch.New(cfg, ec2.NewFromConfig(awsCfg), autoscaling.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg),
		newLogger(c.logs), c.metrics)
	c.launch.Poll = resources.Poll{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 20 * time.Second}
	c.launch.HandoverReserve = 10 * time.Second // the tests' invocations have 2 minutes, not 15
	c.ec2 = ec2.NewFromConfig(h.DirectConfig())
	c.store = lease.NewStore(dynamodb.NewFromConfig(h.DirectConfig()), cfg.Table, cfg.Cluster)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("launch logs of %s:\n%s", name, tail(c.logs.String(), 60))
		}
	})
	return c
}

func newLogger(w io.Writer) *slog.Logger { return obs.NewLogger(w, slog.LevelDebug) }

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// run starts an instance in the world's subnet i (AZ a, b, c for i = 0, 1, 2).
// The instance carries the group tag EC2 Auto Scaling sets on the instances it launches.
func (c *cluster) run(i int) string {
	return c.h.RunInstanceTagged(c.t, c.w, c.w.Subnets[i].ID, map[string]string{"aws:autoscaling:groupName": c.cfg.ASGName})
}

// launchEvent is events/launch-lifecycle.json for instance, in this cluster's ASG.
func (c *cluster) launchEvent(instance string) []byte {
	return c.event("launch-lifecycle.json", func(m map[string]any) {
		d := m["detail"].(map[string]any)
		d["AutoScalingGroupName"] = c.cfg.ASGName
		d["EC2InstanceId"] = instance
		d["LifecycleActionToken"] = "token-" + instance
	})
}

// event returns a sample event from events/, modified by edit.
func (c *cluster) event(file string, edit func(map[string]any)) []byte {
	c.t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "events", file))
	if err != nil {
		c.t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		c.t.Fatal(err)
	}
	if edit != nil {
		edit(m)
	}
	out, _ := json.Marshal(m)
	return out
}

var requestSeq struct {
	sync.Mutex
	n int
}

// invoke delivers payload to the launch handler exactly as the Lambda runtime does.
func (c *cluster) invoke(payload []byte) error { return invokeWith(c.launch, payload) }

// launchAll delivers launch events for instances concurrently and fails on any error.
func (c *cluster) launchAll(instances ...string) {
	c.t.Helper()
	errs := make([]error, len(instances))
	var wg sync.WaitGroup
	for i, id := range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.invoke(c.launchEvent(id))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			c.t.Fatalf("launch of %s: %v", instances[i], err)
		}
	}
}

// eni and volume describe a slot resource as seen directly at moto.
type eni struct {
	ID, AZ, IP, AttachedTo string
	DeviceIndex            int32
}

type volume struct {
	ID, AZ, State, AttachedTo, Device string
	Size                              int32
}

func (c *cluster) slotFilters(s int) []ec2types.Filter {
	return []ec2types.Filter{
		{Name: aws.String("tag:slotkeeper:cluster"), Values: []string{c.cfg.Cluster}},
		{Name: aws.String("tag:slotkeeper:slot"), Values: []string{strconv.Itoa(s)}},
	}
}

// enis returns every ENI tagged with slot s of this cluster.
func (c *cluster) enis(s int) []eni {
	c.t.Helper()
	out, err := c.ec2.DescribeNetworkInterfaces(context.Background(), &ec2.DescribeNetworkInterfacesInput{Filters: c.slotFilters(s)})
	if err != nil {
		c.t.Fatal(err)
	}
	var res []eni
	for _, n := range out.NetworkInterfaces {
		e := eni{ID: aws.ToString(n.NetworkInterfaceId), AZ: aws.ToString(n.AvailabilityZone), IP: aws.ToString(n.PrivateIpAddress)}
		if n.Attachment != nil && n.Attachment.Status == ec2types.AttachmentStatusAttached {
			e.AttachedTo, e.DeviceIndex = aws.ToString(n.Attachment.InstanceId), aws.ToInt32(n.Attachment.DeviceIndex)
		}
		res = append(res, e)
	}
	return res
}

// volumes returns every volume tagged with slot s of this cluster.
func (c *cluster) volumes(s int) []volume {
	c.t.Helper()
	out, err := c.ec2.DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{Filters: c.slotFilters(s)})
	if err != nil {
		c.t.Fatal(err)
	}
	var res []volume
	for _, v := range out.Volumes {
		vol := volume{ID: aws.ToString(v.VolumeId), AZ: aws.ToString(v.AvailabilityZone), State: string(v.State), Size: aws.ToInt32(v.Size)}
		for _, a := range v.Attachments {
			if a.State == ec2types.VolumeAttachmentStateAttached {
				vol.AttachedTo, vol.Device = aws.ToString(a.InstanceId), aws.ToString(a.Device)
			}
		}
		res = append(res, vol)
	}
	return res
}

// instance returns an instance's AZ and slotkeeper tags as seen at moto.
func (c *cluster) instance(id string) (az string, tags map[string]string) {
	c.t.Helper()
	out, err := c.ec2.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		c.t.Fatal(err)
	}
	i := out.Reservations[0].Instances[0]
	tags = map[string]string{}
	for _, t := range i.Tags {
		if k := aws.ToString(t.Key); strings.HasPrefix(k, "slotkeeper:") {
			tags[k] = aws.ToString(t.Value)
		}
	}
	return aws.ToString(i.Placement.AvailabilityZone), tags
}

// lease returns slot s's lease as stored.
func (c *cluster) lease(s int) lease.Lease {
	c.t.Helper()
	l, err := c.store.Get(context.Background(), s)
	if err != nil {
		c.t.Fatal(err)
	}
	return l
}

// completions returns the lifecycle results recorded for instance, in order.
func (c *cluster) completions(instance string) []string {
	var res []string
	for _, cl := range c.h.Completions() {
		if cl.InstanceID == instance {
			res = append(res, cl.Result)
		}
	}
	return res
}

// snapshot is the observable end state of a cluster, with instance ids replaced by
// roles so runs with different instances compare equal.
type snapshot struct {
	Slots       map[int]slotSnapshot
	Tags        map[string]map[string]string
	Completions map[string][]string
}

type slotSnapshot struct {
	State, Holder, LastHolder           string
	Version                             int64
	ENIs, Volumes                       int
	ENIAttachedTo, VolumeAttachedTo     string
	ENIDeviceIndex                      int32
	VolumeDevice, ENIAZ, VolumeAZ       string
	LeaseRecordsENI, LeaseRecordsVolume bool
}

// snapshot captures the cluster's state; roles maps instance id -> role name.
func (c *cluster) snapshot(roles map[string]string) snapshot {
	c.t.Helper()
	role := func(id string) string {
		if id == "" {
			return ""
		}
		if r, ok := roles[id]; ok {
			return r
		}
		return "unknown:" + id
	}
	s := snapshot{Slots: map[int]slotSnapshot{}, Tags: map[string]map[string]string{}, Completions: map[string][]string{}}
	for sl := 0; sl < c.cfg.SlotCount; sl++ {
		l := c.lease(sl)
		enis, vols := c.enis(sl), c.volumes(sl)
		ss := slotSnapshot{State: string(l.State), Holder: role(l.Holder), LastHolder: role(l.LastHolder), Version: l.Version,
			ENIs: len(enis), Volumes: len(vols)}
		if len(enis) == 1 {
			ss.ENIAttachedTo, ss.ENIDeviceIndex, ss.ENIAZ = role(enis[0].AttachedTo), enis[0].DeviceIndex, enis[0].AZ
			ss.LeaseRecordsENI = l.ENIID == enis[0].ID && l.IP == enis[0].IP
		}
		if len(vols) == 1 {
			ss.VolumeAttachedTo, ss.VolumeDevice, ss.VolumeAZ = role(vols[0].AttachedTo), vols[0].Device, vols[0].AZ
			ss.LeaseRecordsVolume = l.VolumeID == vols[0].ID
		}
		s.Slots[sl] = ss
	}
	for id, r := range roles {
		_, tags := c.instance(id)
		if tags["slotkeeper:cluster"] == c.cfg.Cluster {
			tags["slotkeeper:cluster"] = "<this cluster>" // runs compare across clusters
		}
		s.Tags[r] = tags
		s.Completions[r] = c.completions(id)
	}
	return s
}

// mutating returns the mutating calls the proxy saw, without heartbeats (whose number
// depends on timing).
func mutating(h *harness.Harness) []string {
	return slices.DeleteFunc(h.MutatingCalls(), func(a string) bool { return a == "RecordLifecycleActionHeartbeat" })
}
