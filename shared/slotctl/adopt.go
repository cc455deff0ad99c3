package slotctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/resources"
)

func adoptCommand() Command {
	var opt AdoptOptions
	return Command{
		Name: "adopt", Args: "<instance-id>", NArgs: 1,
		Summary: "make a running broker a slot's holder, in place (no data copied)",
		Help: `Adopts a broker that runs in the group from before slotkeeper: the instance becomes the
holder of slot --slot, with its own data volume and (SLOTKEEPER_ENI=true) its secondary
network interface, so that when the instance is replaced its replacement gets the same
volume and address. The broker on the instance must already be Kafka node
SLOTKEEPER_NODE_ID_BASE + slot.

It checks, and refuses (exit code 4, nothing changed) with the reason otherwise:
  - the instance runs and is InService in SLOTKEEPER_ASG_NAME, in the slot's AZ (the AZ of
    subnet[slot mod n]), and holds no other slot;
  - the slot is free (or already this instance's: adopt is idempotent), and its lease
    records no other volume or ENI;
  - the data volume: --volume, else the one at SLOTKEEPER_VOLUME_DEVICE, else the only
    non-root volume (two or more: give --volume); not the root volume, not tagged for
    another cluster or slot, no other volume tagged for the slot, and no slotkeeper mark
    saying it was never formatted (it holds the broker's data); and the instance has no
    other non-root volume with DeleteOnTermination=true (a second log dir: AWS deletes it
    with the instance, and a replacement gets only the slot's volume) unless --volume
    names the slot's and --ack-other-volumes acknowledges the others (the plan lists
    them);
  - Kafka's metadata (a fresh request through SLOTKEEPER_KAFKA_BOOTSTRAP) lists node
    NODE_ID_BASE + slot at an address of the instance (a private IP of one of its network
    interfaces, its private DNS name, or a name resolving to one of its IPs): refused when
    the broker there is another node, when the node is elsewhere or not registered, and
    when no Kafka bootstrap is configured; when Kafka does not answer, exit code 3.
    --no-kafka-check skips this check (for a Kafka adopt cannot reach: check node.id in
    the broker's server.properties yourself);
  - with SLOTKEEPER_ENI=true the ENI: --eni-id, else the only secondary ENI (device index 1
    or more; the primary ENI cannot move), in the slot's subnet (subnet[slot mod n]: the
    launch attaches only an ENI of that subnet), its private IP becoming the slot's address;
    with SLOTKEEPER_ENI=false the slot's address is the holder's primary IP.

Without --yes it shows the plan and changes nothing (exit code 4). With --yes, in this
order: sets DeleteOnTermination=false on the volume (and the ENI's attachment), first, so
that the data is kept whatever happens next; claims the slot for the instance (a
conditional write: it never overwrites a held slot) and records the volume and ENI in
the lease; tags the
volume and ENI with slotkeeper:cluster and slotkeeper:slot; tags the instance with its
identity (slotkeeper:cluster, :slot, :node-id, :lease); binds the lease, recording
volume_id, eni_id and ip (conditional on the claim); then makes the same repairs as the
reconcile function for the slot: points its disk alarm at the instance (with
SLOTKEEPER_GROW_FUNCTION_ARN) and brings its DNS records in line (with
SLOTKEEPER_HOSTED_ZONE_ID). Each step is skipped when already done, so running it again,
or after an interruption, finishes the job; a second run of a finished adoption changes
nothing.`,
		Examples: []string{
			"slotctl adopt i-0abc12345def67890 --slot 1                    # the plan; nothing changes",
			"slotctl adopt i-0abc12345def67890 --slot 1 --yes",
			"slotctl adopt i-0abc12345def67890 --slot 1 --volume vol-0123456789abcdef0 --eni-id eni-0fedcba9876543210 --yes --json",
		},
		Needs: []string{"CLUSTER", "ASG_NAME", "TABLE", "SLOT_COUNT", "SUBNETS"},
		Flags: func(fs *flag.FlagSet) {
			fs.IntVar(&opt.Slot, "slot", -1, "the slot the instance becomes the holder of (required)")
			fs.StringVar(&opt.Volume, "volume", "", "the broker's data volume (default: the one at SLOTKEEPER_VOLUME_DEVICE, else the only non-root one)")
			fs.StringVar(&opt.ENI, "eni-id", "", "with SLOTKEEPER_ENI=true: the broker's secondary ENI (default: the only one; --eni is SLOTKEEPER_ENI itself)")
			fs.BoolVar(&opt.Yes, "yes", false, "really adopt (without it, only show the plan)")
			fs.BoolVar(&opt.AckOtherVolumes, "ack-other-volumes", false, "with --volume: acknowledge that the instance's other non-root volumes with DeleteOnTermination=true are not the slot's and are deleted with the instance")
			fs.BoolVar(&opt.NoKafkaCheck, "no-kafka-check", false, "adopt without checking in Kafka's metadata that the instance's broker is node NODE_ID_BASE + slot (when Kafka cannot be reached; check node.id yourself)")
		},
		Run: func(ctx context.Context, r *Run) error { return runAdopt(ctx, r, opt) },
	}
}

// AdoptOptions are adopt's flags.
type AdoptOptions struct {
	Slot         int
	Volume, ENI  string
	Yes          bool
	NoKafkaCheck bool
	// AckOtherVolumes lets adopt go ahead, with Volume given, although the instance
	// has other non-root volumes that are deleted with it.
	AckOtherVolumes bool
}

// Adoption is what adopt found, planned and did.
type Adoption struct {
	Cluster  string `json:"cluster"`
	Slot     int    `json:"slot"`
	NodeID   int    `json:"node_id"`
	Instance string `json:"instance"`
	AZ       string `json:"az"`
	Volume   string `json:"volume"`
	Device   string `json:"device"`
	ENI      string `json:"eni,omitempty"`
	IP       string `json:"ip"`
	// KafkaVerified is true when Kafka's metadata listed node NodeID at one of the
	// instance's addresses (KafkaAddress); false with --no-kafka-check.
	KafkaVerified bool   `json:"kafka_verified"`
	KafkaAddress  string `json:"kafka_address,omitempty"`
	// OtherVolumes are the instance's other non-root EBS volumes (not the slot's: a
	// replacement does not get them), each with what happens to it when the instance
	// goes.
	OtherVolumes []string `json:"other_volumes,omitempty"`
	// LeaseVersion is the slot's lease version once claimed (0 before).
	LeaseVersion int64 `json:"lease_version,omitempty"`
	// Plan lists the changes --yes makes (made, once Done), in order; empty when there is
	// nothing left to change.
	Plan []string `json:"plan"`
	// Repairs are the reconcile repairs made for the slot (alarm, DNS).
	Repairs []string `json:"repairs,omitempty"`
	DryRun  bool     `json:"dry_run,omitempty"`
	Done    bool     `json:"done"`
	// Already is true when the instance was the slot's bound holder before this run.
	Already bool `json:"already_adopted,omitempty"`
}

var instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)

// adoption is one run of adopt: the facts it gathered and the changes it plans.
type adoption struct {
	c   *Clients
	cfg config.Config
	res *resources.Manager
	doc Adoption

	inst  ec2types.Instance
	cur   lease.Lease
	vol   ec2types.Volume
	volDT bool // the volume's DeleteOnTermination is true
	eni   *ec2types.InstanceNetworkInterface
	// Tags still missing on the volume, the ENI and the instance.
	volTags, eniTags, instTags bool
}

func runAdopt(ctx context.Context, r *Run, opt AdoptOptions) error {
	cfg := r.Env.Config
	id := r.Args[0]
	if !instanceIDRE.MatchString(id) {
		return Usage("give the instance id, e.g. i-0abc12345def67890", "%q is not an instance id", id)
	}
	if opt.Slot < 0 {
		return Usage(fmt.Sprintf("usage: slotctl adopt %s --slot N (slots 0 to %d)", id, cfg.SlotCount-1), "adopt needs --slot")
	}
	s, err := ParseSlot(strconv.Itoa(opt.Slot), cfg)
	if err != nil {
		return err
	}
	if opt.AckOtherVolumes && opt.Volume == "" {
		return Usage(fmt.Sprintf("name the broker's data volume: slotctl adopt %s --slot %d --volume <vol-id> --ack-other-volumes", id, opt.Slot), "--ack-other-volumes needs --volume")
	}
	if opt.ENI != "" && !cfg.ENI {
		return Usage("with SLOTKEEPER_ENI=false a slot's address is its holder's primary IP: leave --eni-id out", "--eni-id is given but SLOTKEEPER_ENI is false")
	}
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	c, err := r.Env.Clients(ctx)
	if err != nil {
		return err
	}
	a := &adoption{c: c, cfg: cfg, res: resources.New(cfg, c.EC2, resources.Poll{}, discardLog()),
		doc: Adoption{Cluster: cfg.Cluster, Slot: s, NodeID: cfg.NodeID(s), Instance: id, Plan: []string{}}}
	if err := a.check(ctx, opt); err != nil {
		return err
	}
	a.plan()
	o := r.Out
	o.Printf("slot %d · broker %d · %s in %s · volume %s at %s", s, a.doc.NodeID, id, a.doc.AZ, a.doc.Volume, a.doc.Device)
	if a.doc.ENI != "" {
		o.Printf(" · ENI %s", a.doc.ENI)
	}
	o.Printf(" · IP %s\n", a.doc.IP)
	for _, v := range a.doc.OtherVolumes {
		o.Printf("%s other volume %s is not the slot's: a replacement does not get it\n", o.Paint("note:", Warn), v)
	}
	if a.doc.KafkaVerified {
		o.Printf("Kafka lists node %d at %s, an address of %s\n", a.doc.NodeID, a.doc.KafkaAddress, id)
	} else {
		o.Printf("%s that the broker on %s is node %d was NOT checked in Kafka (--no-kafka-check)\n", o.Paint("warning:", Warn), id, a.doc.NodeID)
	}
	if !opt.Yes {
		a.doc.DryRun = true
		if len(a.doc.Plan) == 0 {
			o.Printf("already adopted: nothing to change (the repairs run with --yes)\n")
		}
		for _, p := range a.doc.Plan {
			o.Printf("  would %s\n", p)
		}
		if err := o.Emit(a.doc); err != nil {
			return err
		}
		return Emitted(Refused(fmt.Sprintf("re-run with --yes: slotctl adopt %s --slot %d --yes", id, s), "dry run: nothing changed"))
	}
	if err := a.apply(ctx, o); err != nil {
		return err
	}
	a.doc.Done = true
	if a.doc.Already {
		o.Printf("%s %s was already slot %d's holder; nothing changed\n", o.Paint("adopted:", Good), id, s)
	} else {
		o.Printf("%s %s is slot %d's holder (lease version %d); when it is replaced, its replacement gets volume %s",
			o.Paint("adopted:", Good), id, s, a.doc.LeaseVersion, a.doc.Volume)
		if a.doc.ENI != "" {
			o.Printf(" and ENI %s (%s)", a.doc.ENI, a.doc.IP)
		}
		o.Printf("\n")
	}
	return o.Emit(a.doc)
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// check gathers the facts and refuses what must not be adopted.
func (a *adoption) check(ctx context.Context, opt AdoptOptions) error {
	cfg, s, id := a.cfg, a.doc.Slot, a.doc.Instance
	azs, err := a.res.SubnetAZs(ctx, cfg.Subnets)
	if err != nil {
		return awsError(err, "describing the slot subnets")
	}
	slotAZ := azs[cfg.SubnetOf(s)]

	out, err := a.c.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if awsapi.IsNotFound(err) || (err == nil && (len(out.Reservations) == 0 || len(out.Reservations[0].Instances) == 0)) {
		return Refused("check the instance id and the region", "instance %s does not exist", id)
	}
	if err != nil {
		return awsError(err, "describing "+id)
	}
	a.inst = out.Reservations[0].Instances[0]
	if st := instanceState(a.inst); st != "running" {
		return Refused("only a running broker can be adopted", "instance %s is %s, not running", id, st)
	}
	az := ""
	if a.inst.Placement != nil {
		az = aws.ToString(a.inst.Placement.AvailabilityZone)
	}
	a.doc.AZ = az

	// In the group, in service.
	asi, err := a.c.AutoScaling.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return awsError(err, "describing "+id+" in its Auto Scaling group")
	}
	if len(asi.AutoScalingInstances) == 0 || aws.ToString(asi.AutoScalingInstances[0].AutoScalingGroupName) != cfg.ASGName {
		return Refused(fmt.Sprintf("attach it to the group first (aws autoscaling attach-instances --auto-scaling-group-name %s --instance-ids %s), or check SLOTKEEPER_ASG_NAME", cfg.ASGName, id),
			"instance %s is not in group %s: its replacements would not come from the group", id, cfg.ASGName)
	}
	if st := aws.ToString(asi.AutoScalingInstances[0].LifecycleState); st != "InService" {
		return Refused("adopt an instance once it is InService", "instance %s is %s in group %s, not InService", id, st, cfg.ASGName)
	}

	// The slot's AZ.
	if az != slotAZ {
		var fit []string
		for i := range cfg.SlotCount {
			if azs[cfg.SubnetOf(i)] == az {
				fit = append(fit, strconv.Itoa(i))
			}
		}
		hint := fmt.Sprintf("no slot lives in %s: the instance cannot be adopted", az)
		if len(fit) > 0 {
			hint = fmt.Sprintf("slots in %s: %s (node ids NODE_ID_BASE + slot); adopt it into the one whose node id its broker has", az, strings.Join(fit, ", "))
		}
		return Refused(hint, "wrong AZ: slot %d lives in %s (subnet %s), instance %s is in %s", s, slotAZ, cfg.SubnetOf(s), id, az)
	}

	// The leases.
	store := lease.NewStore(a.c.DynamoDB, cfg.Table, cfg.Cluster)
	leases, err := store.List(ctx)
	if err != nil {
		return awsError(err, "reading the lease table "+cfg.Table)
	}
	a.cur = lease.Lease{Cluster: cfg.Cluster, Slot: s, State: lease.Free}
	for _, l := range leases {
		switch {
		case l.Slot == s:
			a.cur = l
		case l.HeldBy(id):
			return Refused(fmt.Sprintf("'slotctl history %d'", l.Slot), "instance %s already holds slot %d (%s)", id, l.Slot, l.State)
		}
	}
	switch {
	case a.cur.State == lease.Free:
	case a.cur.Holder == id && (a.cur.State == lease.Claimed || a.cur.State == lease.Bound):
		// Our own earlier run (or its interrupted start): carry on.
	default:
		return Refused(fmt.Sprintf("'slotctl history %d' shows who holds it; adopt the instance into a free slot", s),
			"slot %d is held: %s by %s (lease version %d)", s, a.cur.State, a.cur.Holder, a.cur.Version)
	}

	if err := a.findVolume(ctx, opt.Volume, opt.AckOtherVolumes, leases); err != nil {
		return err
	}
	a.doc.IP = aws.ToString(a.inst.PrivateIpAddress)
	if cfg.ENI {
		if err := a.findENI(ctx, opt.ENI, leases); err != nil {
			return err
		}
	}
	if a.cur.State == lease.Bound && (a.cur.VolumeID != a.doc.Volume || a.cur.ENIID != a.doc.ENI) {
		return Refused(fmt.Sprintf("'slotctl history %d'", s), "slot %d is bound to %s with volume %s and ENI %q, not volume %s and ENI %q",
			s, id, a.cur.VolumeID, a.cur.ENIID, a.doc.Volume, a.doc.ENI)
	}
	a.doc.LeaseVersion = a.cur.Version
	if err := a.checkKafka(ctx, opt.NoKafkaCheck); err != nil {
		return err
	}
	a.instTags = !hasTags(a.inst.Tags, map[string]string{resources.TagCluster: cfg.Cluster, resources.TagSlot: strconv.Itoa(s),
		resources.TagNodeID: strconv.Itoa(a.doc.NodeID)}) || (a.cur.State != lease.Free && tagValue(a.inst.Tags, resources.TagLease) != strconv.FormatInt(a.cur.Version, 10))
	return nil
}

// checkKafka refuses unless Kafka's metadata lists node NodeID (NODE_ID_BASE + slot)
// at one of the instance's addresses (a private IP of any of its network interfaces,
// its private DNS name, or a name that resolves to one of its IPs): adopting another
// broker's instance into the slot would give the slot's identity to the wrong node.
// Without SLOTKEEPER_KAFKA_BOOTSTRAP it refuses (exit 4); when Kafka does not answer it
// fails (exit 3); --no-kafka-check skips the check.
func (a *adoption) checkKafka(ctx context.Context, skip bool) error {
	d := &a.doc
	if skip {
		return nil
	}
	k, err := a.c.Kafka()
	if err != nil {
		return err
	}
	noCheck := fmt.Sprintf("set SLOTKEEPER_KAFKA_BOOTSTRAP (or --kafka-bootstrap) so that adopt can check it; or, having checked node.id=%d in the broker's server.properties yourself, add --no-kafka-check", d.NodeID)
	if k == nil {
		return Refused(noCheck, "cannot check that the broker on %s is node %d: no Kafka bootstrap configured", d.Instance, d.NodeID)
	}
	brokers, err := k.Brokers(ctx)
	if err != nil {
		return &Error{Code: ExitUnreachable, Err: fmt.Errorf("checking that the broker on %s is node %d: %w", d.Instance, d.NodeID, err),
			Hint: "check SLOTKEEPER_KAFKA_* and that Kafka answers; or, having checked node.id=" + strconv.Itoa(d.NodeID) + " in the broker's server.properties yourself, add --no-kafka-check"}
	}
	mine := map[string]bool{}
	for _, n := range a.inst.NetworkInterfaces {
		for _, ip := range n.PrivateIpAddresses {
			mine[aws.ToString(ip.PrivateIpAddress)] = true
		}
		mine[aws.ToString(n.PrivateIpAddress)] = true
	}
	mine[aws.ToString(a.inst.PrivateIpAddress)] = true
	names := map[string]bool{strings.ToLower(aws.ToString(a.inst.PrivateDnsName)): true}
	delete(mine, "")
	delete(names, "")
	at := func(addr string) bool {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		if mine[host] || names[strings.ToLower(strings.TrimSuffix(host, "."))] {
			return true
		}
		if net.ParseIP(host) != nil {
			return false
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		ips, err := net.DefaultResolver.LookupHost(rctx, host)
		return err == nil && slices.ContainsFunc(ips, func(ip string) bool { return mine[ip] })
	}
	var here []string
	for _, id := range slices.Sorted(maps.Keys(brokers)) {
		if at(brokers[id]) {
			here = append(here, fmt.Sprintf("node %d (%s)", id, brokers[id]))
		}
	}
	want, registered := brokers[int32(d.NodeID)]
	switch {
	case registered && at(want):
		d.KafkaVerified, d.KafkaAddress = true, want
		return nil
	case len(here) > 0:
		return Refused(fmt.Sprintf("a slot's broker is node NODE_ID_BASE + slot: adopt the instance into the slot of its node id, or check SLOTKEEPER_NODE_ID_BASE (%d)", a.cfg.NodeIDBase),
			"the broker on %s is %s, not node %d (slot %d)", d.Instance, strings.Join(here, ", "), d.NodeID, d.Slot)
	case registered:
		return Refused("adopt the instance that runs node "+strconv.Itoa(d.NodeID),
			"node %d is registered at %s, which is not an address of %s; no registered broker is on %s", d.NodeID, want, d.Instance, d.Instance)
	}
	return Refused("adopt a broker that runs and is registered (it must be node NODE_ID_BASE + slot); or, having checked node.id yourself, add --no-kafka-check",
		"Kafka lists no broker on %s and no node %d (registered: %d brokers)", d.Instance, d.NodeID, len(brokers))
}

// dataVolume is a non-root EBS volume attached to the instance.
type dataVolume struct {
	device, id          string
	deleteOnTermination bool
}

// sameDevice reports whether two device names are the same device (/dev/sdf is
// /dev/xvdf).
func sameDevice(a, b string) bool {
	norm := func(d string) string { return strings.Replace(strings.TrimPrefix(d, "/dev/"), "xvd", "sd", 1) }
	return norm(a) == norm(b)
}

// findVolume chooses the data volume and checks that it may become the slot's.
func (a *adoption) findVolume(ctx context.Context, want string, ackOthers bool, leases []lease.Lease) error {
	cfg, id, s := a.cfg, a.doc.Instance, a.doc.Slot
	root := aws.ToString(a.inst.RootDeviceName)
	var cands []dataVolume
	for _, m := range a.inst.BlockDeviceMappings {
		if m.Ebs == nil || sameDevice(aws.ToString(m.DeviceName), root) {
			continue
		}
		cands = append(cands, dataVolume{device: aws.ToString(m.DeviceName), id: aws.ToString(m.Ebs.VolumeId), deleteOnTermination: aws.ToBool(m.Ebs.DeleteOnTermination)})
	}
	list := func() string {
		var parts []string
		for _, v := range cands {
			parts = append(parts, v.id+" at "+v.device)
		}
		return strings.Join(parts, ", ")
	}
	var pick *dataVolume
	switch {
	case want != "":
		for i, v := range cands {
			if v.id == want {
				pick = &cands[i]
			}
		}
		if pick == nil {
			for _, m := range a.inst.BlockDeviceMappings {
				if m.Ebs != nil && aws.ToString(m.Ebs.VolumeId) == want {
					return Refused("the root volume holds the operating system and goes with the instance; give the broker's data volume", "volume %s is the root volume of %s", want, id)
				}
			}
			return Refused("give a volume attached to the instance: "+orNone(list()), "volume %s is not attached to %s", want, id)
		}
	default:
		for i, v := range cands {
			if sameDevice(v.device, cfg.Volume.Device) {
				pick = &cands[i]
			}
		}
		switch {
		case pick != nil:
		case len(cands) == 1:
			pick = &cands[0]
		case len(cands) == 0:
			return Refused("the broker's data must be on an EBS volume of its own to be adopted; otherwise replace the broker (docs/deploy.md)",
				"instance %s has no data volume: no EBS volume besides the root volume", id)
		default:
			return Refused(fmt.Sprintf("give the broker's data volume: slotctl adopt %s --slot %d --volume <id>", id, s),
				"%d candidate volumes on %s and none at %s: %s", len(cands), id, cfg.Volume.Device, list())
		}
	}
	a.doc.Volume, a.doc.Device, a.volDT = pick.id, pick.device, pick.deleteOnTermination
	// The instance's other data volumes (a second log dir, JBOD) are not the slot's: a
	// replacement gets only the slot's volume, and AWS deletes those with
	// DeleteOnTermination=true together with the instance.
	var deleted []string
	for _, v := range cands {
		switch {
		case v.id == pick.id:
		case v.deleteOnTermination:
			deleted = append(deleted, v.id+" at "+v.device)
			a.doc.OtherVolumes = append(a.doc.OtherVolumes, v.id+" at "+v.device+" (DeleteOnTermination=true: deleted with the instance)")
		default:
			a.doc.OtherVolumes = append(a.doc.OtherVolumes, v.id+" at "+v.device+" (DeleteOnTermination=false: left behind, detached, when the instance goes)")
		}
	}
	if len(deleted) > 0 && (want == "" || !ackOthers) {
		return Refused(fmt.Sprintf("a slot has one data volume, which its replacements get; a broker with several log dirs (JBOD) cannot be adopted as is. If %s holds no broker data you need, confirm: slotctl adopt %s --slot %d --volume %s --ack-other-volumes",
			strings.Join(deleted, ", "), id, s, pick.id),
			"instance %s has other data volumes besides %s that are deleted with the instance (DeleteOnTermination=true): %s", id, pick.id, strings.Join(deleted, ", "))
	}

	out, err := a.c.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{pick.id}})
	if err != nil || len(out.Volumes) == 0 {
		return awsError(fmt.Errorf("volume %s: %w", pick.id, errors.Join(err, errNotFoundIf(err == nil))), "describing the data volume")
	}
	a.vol = out.Volumes[0]
	if key, bad := neverFormatted(a.vol.Tags); bad {
		return Refused("a volume slotkeeper created blank is not a broker's data: adopt the volume that holds the broker's log, and never strip the mark by hand",
			"volume %s carries the never-formatted mark %s", pick.id, key)
	}
	if err := foreignTags(a.vol.Tags, cfg.Cluster, s, "volume "+pick.id); err != nil {
		return err
	}
	for _, l := range leases {
		if l.Slot != s && l.VolumeID == pick.id {
			return Refused(fmt.Sprintf("'slotctl history %d'", l.Slot), "volume %s is slot %d's (its lease records it)", pick.id, l.Slot)
		}
	}
	if a.cur.VolumeID != "" && a.cur.VolumeID != pick.id {
		return Refused(fmt.Sprintf("slot %d's identity is its recorded volume: adopt the broker into another free slot, or replace it ('slotctl history %d')", s, s),
			"slot %d's lease records volume %s, not %s", s, a.cur.VolumeID, pick.id)
	}
	others, err := a.taggedForSlot(ctx, lease.KindVolume)
	if err != nil {
		return err
	}
	if i := slices.IndexFunc(others, func(id string) bool { return id != pick.id }); i >= 0 {
		return Refused("a slot has one data volume: check the other volume (a never-formatted one would be given to the slot's next holder), and adopt into a slot that has none",
			"volume %s is already tagged as slot %d's", others[i], s)
	}
	a.volTags = !hasTags(a.vol.Tags, map[string]string{resources.TagCluster: cfg.Cluster, resources.TagSlot: strconv.Itoa(s)})
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none (only the root volume)"
	}
	return s
}

func errNotFoundIf(b bool) error {
	if b {
		return errors.New("not found")
	}
	return nil
}

// findENI chooses the secondary ENI and checks that it may become the slot's.
func (a *adoption) findENI(ctx context.Context, want string, leases []lease.Lease) error {
	cfg, id, s := a.cfg, a.doc.Instance, a.doc.Slot
	var secondary []ec2types.InstanceNetworkInterface
	for _, n := range a.inst.NetworkInterfaces {
		if n.Attachment == nil {
			continue
		}
		if aws.ToString(n.NetworkInterfaceId) == want && aws.ToInt32(n.Attachment.DeviceIndex) == 0 {
			return Refused("the primary ENI (device index 0) cannot be detached and goes with the instance; give the secondary ENI that carries the broker's address, or deploy with SlotEni=false",
				"ENI %s is the primary network interface of %s", want, id)
		}
		if aws.ToInt32(n.Attachment.DeviceIndex) >= 1 {
			secondary = append(secondary, n)
		}
	}
	var ids []string
	for _, n := range secondary {
		ids = append(ids, aws.ToString(n.NetworkInterfaceId))
	}
	switch {
	case want != "":
		i := slices.IndexFunc(secondary, func(n ec2types.InstanceNetworkInterface) bool { return aws.ToString(n.NetworkInterfaceId) == want })
		if i < 0 {
			return Refused("give a secondary ENI attached to the instance: "+strings.Join(append(ids, "(none)")[:max(1, len(ids))], ", "),
				"ENI %s is not attached to %s", want, id)
		}
		a.eni = &secondary[i]
	case len(secondary) == 1:
		a.eni = &secondary[0]
	case len(secondary) == 0:
		return Refused("with SLOTKEEPER_ENI=true a slot's address is a secondary ENI that moves with it: attach one whose IP the broker advertises, or deploy with SlotEni=false (the address is then the holder's primary IP)",
			"instance %s has no secondary ENI", id)
	default:
		return Refused(fmt.Sprintf("give the ENI whose IP the broker advertises: slotctl adopt %s --slot %d --eni-id <id>", id, s),
			"%d secondary ENIs on %s: %s", len(secondary), id, strings.Join(ids, ", "))
	}
	eniID := aws.ToString(a.eni.NetworkInterfaceId)
	a.doc.ENI, a.doc.IP = eniID, aws.ToString(a.eni.PrivateIpAddress)
	out, err := a.c.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eniID}})
	if err != nil || len(out.NetworkInterfaces) == 0 {
		return awsError(fmt.Errorf("ENI %s: %w", eniID, errors.Join(err, errNotFoundIf(err == nil))), "describing the ENI")
	}
	tags := out.NetworkInterfaces[0].TagSet
	if sn, want := aws.ToString(out.NetworkInterfaces[0].SubnetId), cfg.SubnetOf(s); sn != want {
		return Refused(fmt.Sprintf("a slot's ENI lives in the slot's subnet (subnet[slot mod n] of SLOTKEEPER_SUBNETS: %s), where its replacements launch; a launch can never attach an ENI of another subnet, and would abandon every replacement. Adopt the broker with SLOTKEEPER_ENI=false, or move its address to an ENI in %s", want, want),
			"ENI %s is in subnet %s, not slot %d's subnet %s", eniID, sn, s, want)
	}
	if err := foreignTags(tags, cfg.Cluster, s, "ENI "+eniID); err != nil {
		return err
	}
	for _, l := range leases {
		if l.Slot != s && l.ENIID == eniID {
			return Refused(fmt.Sprintf("'slotctl history %d'", l.Slot), "ENI %s is slot %d's (its lease records it)", eniID, l.Slot)
		}
	}
	if a.cur.ENIID != "" && a.cur.ENIID != eniID {
		return Refused(fmt.Sprintf("slot %d's address is its recorded ENI: adopt the broker into another free slot ('slotctl history %d')", s, s),
			"slot %d's lease records ENI %s, not %s", s, a.cur.ENIID, eniID)
	}
	others, err := a.taggedForSlot(ctx, lease.KindENI)
	if err != nil {
		return err
	}
	if i := slices.IndexFunc(others, func(id string) bool { return id != eniID }); i >= 0 {
		return Refused("a slot has one ENI: check the other ENI, and adopt into a slot that has none",
			"ENI %s is already tagged as slot %d's", others[i], s)
	}
	a.eniTags = !hasTags(tags, map[string]string{resources.TagCluster: cfg.Cluster, resources.TagSlot: strconv.Itoa(s)})
	return nil
}

// taggedForSlot returns the volumes (kind lease.KindVolume) or ENIs tagged with the
// slot.
func (a *adoption) taggedForSlot(ctx context.Context, kind string) ([]string, error) {
	filters := []ec2types.Filter{
		{Name: aws.String("tag:" + resources.TagCluster), Values: []string{a.cfg.Cluster}},
		{Name: aws.String("tag:" + resources.TagSlot), Values: []string{strconv.Itoa(a.doc.Slot)}},
	}
	var ids []string
	if kind == lease.KindENI {
		out, err := a.c.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: filters})
		if err != nil {
			return nil, awsError(err, "listing the ENIs tagged for slot "+strconv.Itoa(a.doc.Slot))
		}
		for _, n := range out.NetworkInterfaces {
			ids = append(ids, aws.ToString(n.NetworkInterfaceId))
		}
		return ids, nil
	}
	out, err := a.c.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: filters})
	if err != nil {
		return nil, awsError(err, "listing the volumes tagged for slot "+strconv.Itoa(a.doc.Slot))
	}
	for _, v := range out.Volumes {
		ids = append(ids, aws.ToString(v.VolumeId))
	}
	return ids, nil
}

// neverFormatted returns the never-formatted mark (resources.TagNeverFormatted) of a
// volume slotkeeper created blank, if it carries one.
func neverFormatted(tags []ec2types.Tag) (string, bool) {
	for _, t := range tags {
		if k := aws.ToString(t.Key); k == resources.TagNeverFormatted {
			return k + "=" + aws.ToString(t.Value), true
		}
	}
	return "", false
}

// foreignTags refuses a resource tagged for another cluster or another slot.
func foreignTags(tags []ec2types.Tag, cluster string, s int, what string) error {
	c, sl := tagValue(tags, resources.TagCluster), tagValue(tags, resources.TagSlot)
	switch {
	case c != "" && c != cluster:
		return Refused("a resource of another slotkeeper cluster is never taken", "%s belongs to cluster %s (tag %s)", what, c, resources.TagCluster)
	case c == cluster && sl != "" && sl != strconv.Itoa(s):
		return Refused(fmt.Sprintf("'slotctl history %s'", sl), "%s is tagged as slot %s's", what, sl)
	}
	return nil
}

func hasTags(tags []ec2types.Tag, want map[string]string) bool {
	for k, v := range want {
		if tagValue(tags, k) != v {
			return false
		}
	}
	return true
}

func instanceState(i ec2types.Instance) string {
	if i.State == nil {
		return "unknown"
	}
	return string(i.State.Name)
}

// plan lists the changes --yes makes.
func (a *adoption) plan() {
	d, cfg := &a.doc, a.cfg
	add := func(format string, args ...any) { d.Plan = append(d.Plan, fmt.Sprintf(format, args...)) }
	if a.volDT {
		add("keep volume %s when the instance goes: DeleteOnTermination=false at %s", d.Volume, d.Device)
	}
	if a.eni != nil && a.eni.Attachment != nil && aws.ToBool(a.eni.Attachment.DeleteOnTermination) {
		add("keep ENI %s when the instance goes: DeleteOnTermination=false on attachment %s", d.ENI, aws.ToString(a.eni.Attachment.AttachmentId))
	}
	switch a.cur.State {
	case lease.Free:
		add("claim slot %d for %s (conditional write on the free lease, version %d → %d), and record volume %s%s in it",
			d.Slot, d.Instance, a.cur.Version, a.cur.Version+1, d.Volume, map[bool]string{true: " and ENI " + d.ENI, false: ""}[d.ENI != ""])
	case lease.Bound:
		d.Already = true
	}
	if a.volTags {
		add("tag volume %s: %s=%s, %s=%d", d.Volume, resources.TagCluster, cfg.Cluster, resources.TagSlot, d.Slot)
	}
	if a.eniTags {
		add("tag ENI %s: %s=%s, %s=%d", d.ENI, resources.TagCluster, cfg.Cluster, resources.TagSlot, d.Slot)
	}
	version := a.cur.Version
	if a.cur.State == lease.Free {
		version++
	}
	if a.instTags || a.cur.State == lease.Free {
		add("tag instance %s: %s=%s, %s=%d, %s=%d, %s=%d", d.Instance, resources.TagCluster, cfg.Cluster, resources.TagSlot, d.Slot,
			resources.TagNodeID, d.NodeID, resources.TagLease, version)
	}
	if a.cur.State != lease.Bound {
		add("bind slot %d: volume_id %s, eni_id %q, ip %s (conditional on the claim)", d.Slot, d.Volume, d.ENI, d.IP)
	}
	if d.Already && len(d.Plan) > 0 {
		d.Already = false // bound, but something is left to finish
	}
}

// apply makes the planned changes, in the order of the plan, then the repairs.
func (a *adoption) apply(ctx context.Context, o *Output) error {
	cfg, d := a.cfg, &a.doc
	store := lease.NewStore(a.c.DynamoDB, cfg.Table, cfg.Cluster)
	store.Actor = "slotctl/adopt"
	why := fmt.Sprintf("adopted by slotctl: %s with volume %s", d.Instance, d.Volume)
	step := func(what string) { o.Printf("  %s %s\n", o.Paint("✓", Good), what) }

	// First what protects the data whatever happens next: the volume (and the ENI)
	// stays when the instance goes. A crash, or a claim lost to a race, after it
	// leaves nothing worse than a volume kept.
	if a.volDT {
		if _, err := a.c.EC2.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{
			InstanceId: aws.String(d.Instance),
			BlockDeviceMappings: []ec2types.InstanceBlockDeviceMappingSpecification{{
				DeviceName: aws.String(d.Device), Ebs: &ec2types.EbsInstanceBlockDeviceSpecification{DeleteOnTermination: aws.Bool(false)},
			}},
		}); err != nil {
			return awsError(err, "keeping volume "+d.Volume+" (DeleteOnTermination=false)")
		}
		step("volume " + d.Volume + " is kept when the instance goes")
	}
	if a.eni != nil && a.eni.Attachment != nil && aws.ToBool(a.eni.Attachment.DeleteOnTermination) {
		if _, err := a.c.EC2.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
			NetworkInterfaceId: aws.String(d.ENI),
			Attachment:         &ec2types.NetworkInterfaceAttachmentChanges{AttachmentId: a.eni.Attachment.AttachmentId, DeleteOnTermination: aws.Bool(false)},
		}); err != nil {
			return awsError(err, "keeping ENI "+d.ENI+" (DeleteOnTermination=false)")
		}
		step("ENI " + d.ENI + " is kept when the instance goes")
	}
	l := a.cur
	if l.State == lease.Free {
		claimed, err := store.Claim(ctx, l, d.Instance, d.AZ, why)
		if errors.Is(err, lease.ErrFenced) {
			return Refused(fmt.Sprintf("'slotctl history %d' shows who took it", d.Slot), "slot %d changed while adopting (another claim won it): nothing was changed but DeleteOnTermination=false", d.Slot)
		}
		if err != nil {
			return awsError(err, "claiming slot "+strconv.Itoa(d.Slot))
		}
		l = claimed
		step(fmt.Sprintf("claimed slot %d (lease version %d)", d.Slot, l.Version))
	}
	d.LeaseVersion = l.Version
	// The lease is the authority on the slot's identity: record the volume and the ENI
	// in it at once (fenced, never replacing a recorded id), as the launch path does.
	if l.State == lease.Claimed {
		for _, r := range []struct{ kind, id, ip string }{{lease.KindVolume, d.Volume, ""}, {lease.KindENI, d.ENI, d.IP}} {
			if r.id == "" || l.Recorded(r.kind) == r.id {
				continue
			}
			rec, err := store.Record(ctx, l, r.kind, r.id, r.ip, why)
			switch {
			case errors.Is(err, lease.ErrFenced), errors.Is(err, lease.ErrRecordConflict):
				return Refused(fmt.Sprintf("'slotctl history %d'", d.Slot), "slot %d changed while adopting: %v", d.Slot, err)
			case err != nil:
				return awsError(err, "recording the "+r.kind+" of slot "+strconv.Itoa(d.Slot))
			}
			l = rec
			step(fmt.Sprintf("recorded %s %s in slot %d's lease", r.kind, r.id, d.Slot))
		}
	}
	slotTags := []ec2types.Tag{{Key: aws.String(resources.TagCluster), Value: aws.String(cfg.Cluster)}, {Key: aws.String(resources.TagSlot), Value: aws.String(strconv.Itoa(d.Slot))}}
	for _, r := range []struct {
		need     bool
		id, what string
	}{{a.volTags, d.Volume, "volume"}, {a.eniTags, d.ENI, "ENI"}} {
		if !r.need {
			continue
		}
		if _, err := a.c.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{r.id}, Tags: slotTags}); err != nil {
			return awsError(err, "tagging "+r.what+" "+r.id)
		}
		step(fmt.Sprintf("tagged %s %s as slot %d's", r.what, r.id, d.Slot))
	}
	if a.instTags || l.Version != a.cur.Version {
		if err := a.res.TagInstance(ctx, d.Instance, d.Slot, d.NodeID, l.Version); err != nil {
			return awsError(err, "")
		}
		step(fmt.Sprintf("tagged instance %s as broker %d (slot %d, lease %d)", d.Instance, d.NodeID, d.Slot, l.Version))
	}
	if l.State != lease.Bound {
		bound, err := store.Bind(ctx, l, lease.Binding{ENIID: d.ENI, VolumeID: d.Volume, IP: d.IP}, why)
		if errors.Is(err, lease.ErrFenced) {
			return Refused(fmt.Sprintf("'slotctl history %d'", d.Slot), "slot %d changed while adopting: it is no longer claimed by %s; the tags written so far are harmless, check the slot", d.Slot, d.Instance)
		}
		if err != nil {
			return awsError(err, "binding slot "+strconv.Itoa(d.Slot))
		}
		step(fmt.Sprintf("bound slot %d: volume %s, ENI %q, IP %s", d.Slot, bound.VolumeID, bound.ENIID, bound.IP))
	}
	return a.repair(ctx, step)
}

// repair makes reconcile's repairs for the slot: its disk alarm and the DNS records,
// through the same code the reconcile function runs. Both change nothing when nothing
// has drifted.
func (a *adoption) repair(ctx context.Context, step func(string)) error {
	cfg, d := a.cfg, &a.doc
	log := discardLog()
	if cfg.Grow.FunctionARN != "" {
		changed, err := grow.NewAlarms(cfg, a.c.CloudWatch, log).Point(ctx, d.Slot, d.Instance)
		if err != nil {
			return awsError(err, "pointing the disk alarm of slot "+strconv.Itoa(d.Slot))
		}
		if changed {
			d.Repairs = append(d.Repairs, fmt.Sprintf("disk alarm %s watches %s", grow.AlarmName(cfg.Cluster, d.Slot), d.Instance))
			step(d.Repairs[len(d.Repairs)-1])
		}
	}
	if cfg.DNS.Enabled() {
		n, err := dns.New(cfg, a.c.Route53, a.c.EC2, a.c.DynamoDB, log).Reconcile(ctx, nil)
		if err != nil {
			return awsError(err, "updating the DNS records")
		}
		if n > 0 {
			d.Repairs = append(d.Repairs, fmt.Sprintf("%d DNS record(s) updated (broker-%d.%s → %s)", n, d.Slot, cfg.DNS.Name, d.IP))
			step(d.Repairs[len(d.Repairs)-1])
		}
	}
	return nil
}
