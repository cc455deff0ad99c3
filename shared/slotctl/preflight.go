package slotctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/route53"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
)

func preflightCommand() Command {
	var opt PreflightOptions
	return Command{
		Name:    "preflight",
		Summary: "checks before going live",
		Help: `Checks what slotkeeper needs before it can be trusted with a cluster:
  subnets          every slot subnet exists; AZs and slot count fit (one rack per AZ, even spread)
  lease table      exists, with key cluster (S) + slot (N)
  auto scaling     the group exists; its AZs are the slots' AZs; it cannot outgrow the slots
  lifecycle hooks  the group has the hooks SLOTKEEPER_LAUNCH_HOOK (launching) and
                   SLOTKEEPER_TERMINATE_HOOK (terminating), by name, whose heartbeat timeout
                   outlasts the launch and terminate functions (900 s) and two
                   SLOTKEEPER_HEARTBEAT_INTERVALs
  az rebalance     the AZRebalance process is suspended (it launches in one AZ before it
                   terminates in another: slots cannot follow)
  capacity rebalance  Capacity Rebalancing is off (it launches a Spot replacement before
                   the old instance leaves)
  warm pool        the group has none (a warm instance runs its user data with no slot)
  instance refresh no active instance refresh, and not the group's instance maintenance
                   policy, has MaxHealthyPercentage above 100 (launch before terminate)
                   or MinHealthyPercentage below 100 x (slots - 1) / slots, rounded up
                   (several brokers replaced at once)
  health check grace  the group's grace period covers a broker's start (--broker-start)
  topics           every topic's replication factor is above its min.insync.replicas (else
                   one broker down blocks acks=all producers: NOT_ENOUGH_REPLICAS) and not
                   above the broker count (skipped without SLOTKEEPER_KAFKA_BOOTSTRAP)
  hosted zone      exists and holds SLOTKEEPER_DNS_NAME (skipped when DNS is not managed)

Every failed check says why it matters and the exact fix: an AWS CLI command, or the
template parameter that sets it.

Exit code 1 when a check fails (warnings do not fail), 3 when a check could not be made.`,
		Examples: []string{
			"slotctl preflight",
			"slotctl preflight --broker-start 15m --json",
		},
		Needs: []string{"CLUSTER", "ASG_NAME", "TABLE", "SLOT_COUNT", "SUBNETS"},
		Flags: func(fs *flag.FlagSet) {
			fs.DurationVar(&opt.BrokerStart, "broker-start", DefaultBrokerStart,
				"how long a new broker takes from InService to serving (install, mount, start, log recovery)")
		},
		Run: func(ctx context.Context, r *Run) error { return runPreflight(ctx, r, opt) },
	}
}

// Check results.
const (
	CheckOK    = "ok"
	CheckWarn  = "warn"
	CheckFail  = "fail"
	CheckSkip  = "skip"
	CheckError = "error" // the check could not be made (AWS or Kafka failed)
)

// Check is one preflight check's result.
type Check struct {
	Name   string `json:"name"`
	Result string `json:"result"`
	Detail string `json:"detail"`
	// Hint says why a result that is not ok matters.
	Hint string `json:"hint,omitempty"`
	// Fix is the exact remedy: an AWS CLI command or a template parameter.
	Fix string `json:"fix,omitempty"`
}

// PreflightOptions tune the checks.
type PreflightOptions struct {
	// BrokerStart is how long a new broker takes from InService until it serves; the
	// group's health check grace period must cover it. 0: DefaultBrokerStart.
	BrokerStart time.Duration
}

// DefaultBrokerStart is the broker start the health check grace period is checked
// against by default: the grace period of the template's broker fleet.
const DefaultBrokerStart = 10 * time.Minute

// PreflightReport is the result of every check.
type PreflightReport struct {
	Cluster string  `json:"cluster"`
	Checks  []Check `json:"checks"`
	Failed  int     `json:"failed"`
	Errors  int     `json:"errors"`
}

// Preflight runs every check against cfg's cluster.
func Preflight(ctx context.Context, c *Clients, cfg config.Config, opt PreflightOptions) PreflightReport {
	if opt.BrokerStart <= 0 {
		opt.BrokerStart = DefaultBrokerStart
	}
	p := &preflight{c: c, cfg: cfg, opt: opt}
	rep := PreflightReport{Cluster: cfg.Cluster}
	for _, check := range []func(context.Context) Check{p.subnets, p.table, p.group, p.hooks,
		p.azRebalance, p.capacityRebalance, p.warmPool, p.instanceRefresh, p.healthGrace, p.topics, p.zone} {
		ch := check(ctx)
		switch ch.Result {
		case CheckFail:
			rep.Failed++
		case CheckError:
			rep.Errors++
		}
		rep.Checks = append(rep.Checks, ch)
	}
	return rep
}

func runPreflight(ctx context.Context, r *Run, opt PreflightOptions) error {
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	c, err := r.Env.Clients(ctx)
	if err != nil {
		return err
	}
	rep := Preflight(ctx, c, r.Env.Config, opt)
	out := r.Out
	var rows [][]Cell
	for _, ch := range rep.Checks {
		style := map[string]Style{CheckOK: Good, CheckWarn: Warn, CheckFail: Bad, CheckError: Bad, CheckSkip: Dim}[ch.Result]
		rows = append(rows, []Cell{{Text: ch.Name}, {Text: ch.Result, Style: style}, {Text: ch.Detail}})
	}
	out.Table([]string{"CHECK", "RESULT", "DETAIL"}, rows)
	for _, ch := range rep.Checks {
		if ch.Hint != "" && ch.Result != CheckOK {
			out.Printf("  %s %s\n", out.Paint(ch.Name+":", Warn), ch.Hint)
		}
		if ch.Fix != "" && ch.Result != CheckOK {
			out.Printf("    %s %s\n", out.Paint("fix:", Bold), ch.Fix)
		}
	}
	if err := out.Emit(rep); err != nil {
		return err
	}
	switch {
	case rep.Failed > 0:
		return Emitted(Problem("fix the failed checks above, then run preflight again", "%d check(s) failed", rep.Failed))
	case rep.Errors > 0:
		return Emitted(&Error{Code: ExitUnreachable, Err: fmt.Errorf("%d check(s) could not be made", rep.Errors),
			Hint: "see each check's hint: AWS or Kafka could not be asked"})
	}
	out.Printf("%s\n", out.Paint("All checks passed.", Good))
	return nil
}

// preflight holds what the checks share: the clients, the configuration, and the
// slot subnets' AZs (read by the first check, used by the group check).
type preflight struct {
	c   *Clients
	cfg config.Config
	opt PreflightOptions
	azs map[string]string // subnet -> AZ
	// g is the group as the group check found it (nil: missing or not readable).
	g *astypes.AutoScalingGroup
}

func errCheck(name string, err error) Check {
	return Check{Name: name, Result: CheckError, Detail: err.Error(), Hint: awsHint(err)}
}

// subnets: every slot subnet exists, AZs are distinct, slots spread evenly.
func (p *preflight) subnets(ctx context.Context) Check {
	const name = "subnets"
	out, err := p.c.EC2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: p.cfg.Subnets})
	if err != nil {
		if awsapi.Code(err) == "InvalidSubnetID.NotFound" {
			return Check{Name: name, Result: CheckFail, Detail: err.Error(), Hint: "SLOTKEEPER_SUBNETS names a subnet that does not exist in this account and region"}
		}
		return errCheck(name, err)
	}
	p.azs = map[string]string{}
	for _, s := range out.Subnets {
		p.azs[aws.ToString(s.SubnetId)] = aws.ToString(s.AvailabilityZone)
	}
	var missing []string
	for _, s := range p.cfg.Subnets {
		if p.azs[s] == "" {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		return Check{Name: name, Result: CheckFail, Detail: "not found: " + strings.Join(missing, ", "),
			Hint: "SLOTKEEPER_SUBNETS names subnets that do not exist in this account and region"}
	}
	slotsIn := map[string][]int{}
	for s := 0; s < p.cfg.SlotCount; s++ {
		az := p.azs[p.cfg.SubnetOf(s)]
		slotsIn[az] = append(slotsIn[az], s)
	}
	var parts []string
	counts := map[int]bool{}
	for _, az := range slices.Sorted(maps.Keys(slotsIn)) {
		parts = append(parts, fmt.Sprintf("%s: slots %s", az, ints(slotsIn[az])))
		counts[len(slotsIn[az])] = true
	}
	distinct := len(slices.Compact(slices.Sorted(maps.Values(p.azs))))
	detail := fmt.Sprintf("%d subnet(s) in %d AZ(s), %d slots (%s)", len(p.cfg.Subnets), distinct, p.cfg.SlotCount, strings.Join(parts, "; "))
	switch {
	case distinct < len(p.cfg.Subnets):
		return Check{Name: name, Result: CheckWarn, Detail: detail,
			Hint: "two slot subnets share an AZ: their brokers share a rack (broker.rack), so replicas may not spread across AZs"}
	case p.cfg.SlotCount < len(p.cfg.Subnets):
		return Check{Name: name, Result: CheckWarn, Detail: detail,
			Hint: "fewer slots than subnets: some AZs get no broker"}
	case len(counts) > 1:
		return Check{Name: name, Result: CheckWarn, Detail: detail,
			Hint: "the slot count is not a multiple of the subnet count: AZs hold different numbers of brokers"}
	}
	return Check{Name: name, Result: CheckOK, Detail: detail}
}

func ints(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

// table: the lease table exists with the expected key.
func (p *preflight) table(ctx context.Context) Check {
	const name = "lease table"
	out, err := p.c.DynamoDB.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(p.cfg.Table)})
	if err != nil {
		var nf *ddbtypes.ResourceNotFoundException
		if errors.As(err, &nf) {
			return Check{Name: name, Result: CheckFail, Detail: fmt.Sprintf("table %s does not exist", p.cfg.Table),
				Hint: "deploy the stack (it creates the table), or fix SLOTKEEPER_TABLE / the region"}
		}
		return errCheck(name, err)
	}
	attrType := map[string]ddbtypes.ScalarAttributeType{}
	for _, a := range out.Table.AttributeDefinitions {
		attrType[aws.ToString(a.AttributeName)] = a.AttributeType
	}
	var hash, rng string
	for _, k := range out.Table.KeySchema {
		switch k.KeyType {
		case ddbtypes.KeyTypeHash:
			hash = aws.ToString(k.AttributeName)
		case ddbtypes.KeyTypeRange:
			rng = aws.ToString(k.AttributeName)
		}
	}
	if hash != "cluster" || rng != "slot" || attrType["cluster"] != ddbtypes.ScalarAttributeTypeS || attrType["slot"] != ddbtypes.ScalarAttributeTypeN {
		return Check{Name: name, Result: CheckFail, Detail: fmt.Sprintf("%s has key %s (%s) + %s (%s)", p.cfg.Table, hash, attrType[hash], rng, attrType[rng]),
			Hint: "the lease table needs partition key cluster (S) and sort key slot (N)"}
	}
	return Check{Name: name, Result: CheckOK, Detail: fmt.Sprintf("%s: key cluster (S) + slot (N), %s", p.cfg.Table, out.Table.TableStatus)}
}

// group: the ASG exists, covers the slots' AZs and no others, and cannot outgrow the
// slots.
func (p *preflight) group(ctx context.Context) Check {
	const name = "auto scaling"
	g, err := p.describeGroup(ctx)
	if err != nil {
		return errCheck(name, err)
	}
	p.g = g
	if g == nil {
		return Check{Name: name, Result: CheckFail, Detail: fmt.Sprintf("group %s does not exist", p.cfg.ASGName),
			Hint: "check SLOTKEEPER_ASG_NAME and the region"}
	}
	detail := fmt.Sprintf("%s: min %d, desired %d, max %d; AZs %s", p.cfg.ASGName, aws.ToInt32(g.MinSize),
		aws.ToInt32(g.DesiredCapacity), aws.ToInt32(g.MaxSize), strings.Join(g.AvailabilityZones, ", "))
	slotAZs := map[string]bool{}
	for _, az := range p.azs {
		slotAZs[az] = true
	}
	var extra, unserved []string
	for _, az := range g.AvailabilityZones {
		if len(p.azs) > 0 && !slotAZs[az] {
			extra = append(extra, az)
		}
	}
	for az := range slotAZs {
		if !slices.Contains(g.AvailabilityZones, az) {
			unserved = append(unserved, az)
		}
	}
	slices.Sort(unserved)
	switch {
	case len(extra) > 0:
		return Check{Name: name, Result: CheckFail, Detail: detail,
			Hint: fmt.Sprintf("the group launches in %s, where no slot lives: those instances are abandoned over and over; give the group only the slot subnets' AZs", strings.Join(extra, ", "))}
	case len(unserved) > 0:
		return Check{Name: name, Result: CheckWarn, Detail: detail,
			Hint: fmt.Sprintf("slots in %s never get a broker: the group does not launch there", strings.Join(unserved, ", "))}
	case int(aws.ToInt32(g.MaxSize)) > p.cfg.SlotCount:
		return Check{Name: name, Result: CheckWarn, Detail: detail,
			Hint: fmt.Sprintf("max size %d is above the slot count %d: instances beyond the slots are abandoned", aws.ToInt32(g.MaxSize), p.cfg.SlotCount)}
	}
	return Check{Name: name, Result: CheckOK, Detail: detail}
}

func (p *preflight) describeGroup(ctx context.Context) (*astypes.AutoScalingGroup, error) {
	out, err := p.c.AutoScaling.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{
		AutoScalingGroupNames: []string{p.cfg.ASGName},
	})
	if err != nil {
		return nil, fmt.Errorf("describing group %s: %w", p.cfg.ASGName, err)
	}
	if len(out.AutoScalingGroups) == 0 {
		return nil, nil
	}
	return &out.AutoScalingGroups[0], nil
}

// Lifecycle transitions of the two hooks slotkeeper needs.
const (
	transitionLaunch    = "autoscaling:EC2_INSTANCE_LAUNCHING"
	transitionTerminate = "autoscaling:EC2_INSTANCE_TERMINATING"
)

// Hooks returns the group's hooks the functions act on: the one named
// cfg.LaunchHook (SLOTKEEPER_LAUNCH_HOOK) with the launching transition and the one
// named cfg.TerminateHook with the terminating transition (nil when absent). Hooks of
// other names do not count: the functions ignore their actions.
func Hooks(ctx context.Context, c *Clients, cfg config.Config) (launchHook, terminateHook *astypes.LifecycleHook, err error) {
	launchHook, terminateHook, _, err = hooks(ctx, c, cfg)
	return launchHook, terminateHook, err
}

// hooks is Hooks, and also names the group's other hooks (the ones the functions
// ignore), for the messages.
func hooks(ctx context.Context, c *Clients, cfg config.Config) (launchHook, terminateHook *astypes.LifecycleHook, others []string, err error) {
	out, err := c.AutoScaling.DescribeLifecycleHooks(ctx, &autoscaling.DescribeLifecycleHooksInput{AutoScalingGroupName: aws.String(cfg.ASGName)})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("describing the lifecycle hooks of %s: %w", cfg.ASGName, err)
	}
	for i, h := range out.LifecycleHooks {
		name, tr := aws.ToString(h.LifecycleHookName), aws.ToString(h.LifecycleTransition)
		switch {
		case name == cfg.LaunchHook && tr == transitionLaunch:
			launchHook = &out.LifecycleHooks[i]
		case name == cfg.TerminateHook && tr == transitionTerminate:
			terminateHook = &out.LifecycleHooks[i]
		default:
			others = append(others, fmt.Sprintf("%s (%s)", name, tr))
		}
	}
	return launchHook, terminateHook, others, nil
}

// FunctionTimeout is the Lambda timeout of the launch and terminate functions
// (template.yaml): the longest an invocation may run, heartbeats or not.
const FunctionTimeout = 900 * time.Second

// hooks: both lifecycle hooks exist, and each one's heartbeat timeout outlasts its
// function (an invocation that sends no heartbeat, a stuck or crashed one, must end
// before the action does) and two heartbeat intervals (one late heartbeat must not
// expire it).
func (p *preflight) hooks(ctx context.Context) Check {
	const name = "lifecycle hooks"
	launch, term, others, err := hooks(ctx, p.c, p.cfg)
	if err != nil {
		return errCheck(name, err)
	}
	describe := func(what string, h *astypes.LifecycleHook) string {
		if h == nil {
			return what + ": missing"
		}
		return fmt.Sprintf("%s: %s (heartbeat %ds, default %s)", what, aws.ToString(h.LifecycleHookName),
			aws.ToInt32(h.HeartbeatTimeout), aws.ToString(h.DefaultResult))
	}
	detail := describe("launch "+p.cfg.LaunchHook, launch) + "; " + describe("terminate "+p.cfg.TerminateHook, term)
	if len(others) > 0 {
		detail += "; hooks the functions ignore: " + strings.Join(others, ", ")
	}
	need := max(FunctionTimeout, 2*p.cfg.HeartbeatInterval+time.Second)
	needS := int32(need / time.Second)
	fix := func(h *astypes.LifecycleHook, result string) string {
		return fmt.Sprintf("aws autoscaling put-lifecycle-hook --auto-scaling-group-name %s --lifecycle-hook-name %s --lifecycle-transition %s --heartbeat-timeout %d --default-result %s",
			p.cfg.ASGName, aws.ToString(h.LifecycleHookName), aws.ToString(h.LifecycleTransition), needS, result)
	}
	var short []string
	var fixes []string
	for _, h := range []struct {
		h      *astypes.LifecycleHook
		result string
	}{{launch, "ABANDON"}, {term, "CONTINUE"}} {
		if h.h != nil && aws.ToInt32(h.h.HeartbeatTimeout) < needS {
			short = append(short, fmt.Sprintf("%s (%ds)", aws.ToString(h.h.LifecycleHookName), aws.ToInt32(h.h.HeartbeatTimeout)))
			fixes = append(fixes, fix(h.h, h.result))
		}
	}
	switch {
	case launch == nil || term == nil:
		return Check{Name: name, Result: CheckFail, Detail: detail,
			Hint: "the functions act only on the actions of the hooks named SLOTKEEPER_LAUNCH_HOOK (" + p.cfg.LaunchHook + ", transition " + transitionLaunch + ") and SLOTKEEPER_TERMINATE_HOOK (" + p.cfg.TerminateHook + ", transition " + transitionTerminate + ") and ignore every other hook: without the launch hook new instances go in service with no slot; without the terminate hook a planned termination skips the safety check and the controlled shutdown",
			Fix: fmt.Sprintf("deploy the stack (template.yaml creates the hooks on AsgName), or put the missing hook: aws autoscaling put-lifecycle-hook --auto-scaling-group-name %s --lifecycle-hook-name %s --lifecycle-transition %s --heartbeat-timeout %d --default-result ABANDON; aws autoscaling put-lifecycle-hook --auto-scaling-group-name %s --lifecycle-hook-name %s --lifecycle-transition %s --heartbeat-timeout %d --default-result CONTINUE (or set SLOTKEEPER_LAUNCH_HOOK / SLOTKEEPER_TERMINATE_HOOK to the names the group's hooks have)",
				p.cfg.ASGName, p.cfg.LaunchHook, transitionLaunch, needS, p.cfg.ASGName, p.cfg.TerminateHook, transitionTerminate, needS)}
	case len(short) > 0:
		return Check{Name: name, Result: CheckFail, Detail: detail,
			Hint: fmt.Sprintf("the heartbeat timeout of %s is shorter than %ds: the launch and terminate functions may run %s (their Lambda timeout) and send a heartbeat every SLOTKEEPER_HEARTBEAT_INTERVAL (%s); a hook that expires first ends the action with its default result while the function still works on it",
				strings.Join(short, ", "), needS, FunctionTimeout, p.cfg.HeartbeatInterval),
			Fix: strings.Join(fixes, "; ")}
	case aws.ToString(launch.DefaultResult) != "ABANDON":
		return Check{Name: name, Result: CheckWarn, Detail: detail,
			Hint: "the launch hook's default result is CONTINUE: an instance whose launch handling never finished goes in service without its identity; use ABANDON",
			Fix:  fix(launch, "ABANDON")}
	}
	return Check{Name: name, Result: CheckOK, Detail: detail}
}

// groupMissing is the result of a group check when the group could not be read (the
// group check reports why).
func groupMissing(name string) Check {
	return Check{Name: name, Result: CheckSkip, Detail: "the group could not be read (see the auto scaling check)"}
}

// azRebalance: the AZRebalance process is suspended. Rebalancing launches an instance
// in one AZ before it terminates one in another, and a slot cannot follow its broker
// into another AZ: the new instance finds no free slot and the slot it leaves is
// empty.
func (p *preflight) azRebalance(context.Context) Check {
	const name = "az rebalance"
	if p.g == nil {
		return groupMissing(name)
	}
	for _, sp := range p.g.SuspendedProcesses {
		if aws.ToString(sp.ProcessName) == "AZRebalance" {
			return Check{Name: name, Result: CheckOK, Detail: "AZRebalance is suspended"}
		}
	}
	return Check{Name: name, Result: CheckFail, Detail: "AZRebalance is active",
		Hint: "to even out its AZs the group launches an instance in one AZ before it terminates one in another: slots live in one AZ each, so the new instance finds no free slot (abandoned) while the old one's slot is left without a broker",
		Fix:  "aws autoscaling suspend-processes --auto-scaling-group-name " + p.cfg.ASGName + " --scaling-processes AZRebalance"}
}

// capacityRebalance: Capacity Rebalancing is off. It launches a replacement for a
// Spot instance at an elevated risk of interruption before the old one leaves.
func (p *preflight) capacityRebalance(context.Context) Check {
	const name = "capacity rebalance"
	if p.g == nil {
		return groupMissing(name)
	}
	if !aws.ToBool(p.g.CapacityRebalance) {
		return Check{Name: name, Result: CheckOK, Detail: "Capacity Rebalancing is off"}
	}
	return Check{Name: name, Result: CheckFail, Detail: "Capacity Rebalancing is on",
		Hint: "the group launches a replacement for a Spot instance at risk of interruption before the old one is terminated: the replacement finds the broker's slot still held and is abandoned, and the old broker then goes without a controlled handover",
		Fix:  "aws autoscaling update-auto-scaling-group --auto-scaling-group-name " + p.cfg.ASGName + " --no-capacity-rebalance"}
}

// warmPool: the group has no warm pool. A warm instance runs its user data when it
// enters the pool, with no slot: the broker bootstrap refuses to serve in a Warmed:*
// lifecycle state; when the instance later enters the group its user data does not
// run again.
func (p *preflight) warmPool(context.Context) Check {
	const name = "warm pool"
	if p.g == nil {
		return groupMissing(name)
	}
	wp := p.g.WarmPoolConfiguration
	if wp == nil {
		return Check{Name: name, Result: CheckOK, Detail: "no warm pool"}
	}
	detail := fmt.Sprintf("a warm pool (state %s, min size %d)", wp.PoolState, aws.ToInt32(wp.MinSize))
	if wp.Status != "" {
		detail += ", " + string(wp.Status)
	}
	return Check{Name: name, Result: CheckFail, Detail: detail,
		Hint: "a warm instance runs its user data while it warms, with no slot: the broker bootstrap refuses to serve in a Warmed:* lifecycle state and stops; when the instance later enters the group its user data does not run again, so it never becomes a broker",
		Fix:  "aws autoscaling delete-warm-pool --auto-scaling-group-name " + p.cfg.ASGName + " --force-delete"}
}

// activeRefresh reports whether an instance refresh in status st still replaces
// instances.
func activeRefresh(st astypes.InstanceRefreshStatus) bool {
	switch st {
	case astypes.InstanceRefreshStatusPending, astypes.InstanceRefreshStatusInProgress, astypes.InstanceRefreshStatusBaking,
		astypes.InstanceRefreshStatusRollbackInProgress:
		return true
	}
	return false
}

// instanceRefresh: neither an active instance refresh nor the group's instance
// maintenance policy (the default preferences of every refresh and replacement) has a
// MaxHealthyPercentage above 100, which launches replacements before it terminates,
// or a MinHealthyPercentage below OneAtATime, which lets the group take several
// brokers out of service at once (the terminate path's safety wait is bounded:
// SLOTKEEPER_SAFETY_MAX_WAIT).
func (p *preflight) instanceRefresh(ctx context.Context) Check {
	const name = "instance refresh"
	if p.g == nil {
		return groupMissing(name)
	}
	oneAtATime := OneAtATime(p.cfg.SlotCount)
	var parts, fixes []string
	policy := "the group has no instance maintenance policy"
	if mp := p.g.InstanceMaintenancePolicy; mp != nil && mp.MaxHealthyPercentage != nil && *mp.MaxHealthyPercentage >= 0 { // -1: cleared
		minH, maxH := aws.ToInt32(mp.MinHealthyPercentage), aws.ToInt32(mp.MaxHealthyPercentage)
		policy = fmt.Sprintf("instance maintenance policy: MinHealthyPercentage %d, MaxHealthyPercentage %d", minH, maxH)
		var bad []string
		if maxH > 100 {
			bad = append(bad, fmt.Sprintf("MaxHealthyPercentage %d above 100 launches each replacement before the instance it replaces is terminated", maxH))
		}
		if minH >= 0 && minH < oneAtATime {
			bad = append(bad, fmt.Sprintf("MinHealthyPercentage %d below %d lets the group replace several of %d brokers at once", minH, oneAtATime, p.cfg.SlotCount))
		}
		if len(bad) > 0 {
			parts = append(parts, "the group's "+policy+": "+strings.Join(bad, ", and "))
			fixes = append(fixes, fmt.Sprintf("aws autoscaling update-auto-scaling-group --auto-scaling-group-name %s --instance-maintenance-policy MinHealthyPercentage=%d,MaxHealthyPercentage=100",
				p.cfg.ASGName, oneAtATime))
		}
	}
	out, err := p.c.AutoScaling.DescribeInstanceRefreshes(ctx, &autoscaling.DescribeInstanceRefreshesInput{
		AutoScalingGroupName: aws.String(p.cfg.ASGName), MaxRecords: aws.Int32(10),
	})
	if err != nil {
		return errCheck(name, fmt.Errorf("describing the instance refreshes of %s: %w", p.cfg.ASGName, err))
	}
	active := 0
	for _, r := range out.InstanceRefreshes {
		if !activeRefresh(r.Status) {
			continue
		}
		active++
		pr := r.Preferences
		if pr == nil {
			continue
		}
		var bad []string
		if aws.ToInt32(pr.MaxHealthyPercentage) > 100 {
			bad = append(bad, fmt.Sprintf("MaxHealthyPercentage %d", aws.ToInt32(pr.MaxHealthyPercentage)))
		}
		if pr.MinHealthyPercentage != nil && aws.ToInt32(pr.MinHealthyPercentage) < oneAtATime {
			bad = append(bad, fmt.Sprintf("MinHealthyPercentage %d (below %d: several brokers at once)", aws.ToInt32(pr.MinHealthyPercentage), oneAtATime))
		}
		if len(bad) > 0 {
			parts = append(parts, fmt.Sprintf("instance refresh %s (%s) with %s", aws.ToString(r.InstanceRefreshId), r.Status, strings.Join(bad, " and ")))
			fixes = append(fixes, "aws autoscaling cancel-instance-refresh --auto-scaling-group-name "+p.cfg.ASGName+
				"; then replace the brokers with 'slotctl roll', or start the refresh again with --preferences '"+
				fmt.Sprintf(`{"MinHealthyPercentage":%d,"MaxHealthyPercentage":100}`, oneAtATime)+"'")
		}
	}
	detail := fmt.Sprintf("%d active instance refresh(es); %s", active, policy)
	if len(parts) > 0 {
		return Check{Name: name, Result: CheckFail, Detail: detail,
			Hint: "MaxHealthyPercentage above 100 launches each replacement before the instance it replaces is terminated (the replacement finds the broker's slot still held by a running broker); MinHealthyPercentage below " +
				strconv.Itoa(int(oneAtATime)) + " lets the group take several brokers out of service at once (the terminate path's safety wait gives up after SLOTKEEPER_SAFETY_MAX_WAIT): " + strings.Join(parts, "; "),
			Fix: strings.Join(fixes, "; ")}
	}
	return Check{Name: name, Result: CheckOK, Detail: detail}
}

// OneAtATime is the lowest MinHealthyPercentage (of an instance refresh or the
// group's instance maintenance policy) that keeps all brokers but one of slots in
// service: 100 × (slots − 1) ÷ slots, rounded up, so that the healthy count it keeps is
// at least slots − 1 however Auto Scaling rounds it.
func OneAtATime(slots int) int32 {
	n := max(1, slots)
	return int32((100*(n-1) + n - 1) / n)
}

// healthGrace: the group's health check grace period covers a broker's start, so a
// starting broker is not found unhealthy and replaced mid-start (an unplanned
// termination that skips the safety wait).
func (p *preflight) healthGrace(context.Context) Check {
	const name = "health check grace"
	if p.g == nil {
		return groupMissing(name)
	}
	grace := time.Duration(aws.ToInt32(p.g.HealthCheckGracePeriod)) * time.Second
	detail := fmt.Sprintf("%s health checks, grace period %s; a broker starts in %s (--broker-start)", aws.ToString(p.g.HealthCheckType), grace, p.opt.BrokerStart)
	if grace >= p.opt.BrokerStart {
		return Check{Name: name, Result: CheckOK, Detail: detail}
	}
	return Check{Name: name, Result: CheckFail, Detail: detail,
		Hint: "the group starts checking a new instance's health before its broker has started: an instance found unhealthy mid-start is replaced, an unplanned termination that neither waits for Kafka nor shuts the broker down",
		Fix: fmt.Sprintf("aws autoscaling update-auto-scaling-group --auto-scaling-group-name %s --health-check-grace-period %d (the template's broker fleet sets 600)",
			p.cfg.ASGName, int(p.opt.BrokerStart/time.Second))}
}

// topics: every topic's replication factor is above its min ISR and within the
// broker count.
func (p *preflight) topics(ctx context.Context) Check {
	const name = "topics"
	k, err := p.c.Kafka()
	if err != nil {
		return Check{Name: name, Result: CheckFail, Detail: err.Error(), Hint: asError(err).Hint}
	}
	if k == nil {
		return Check{Name: name, Result: CheckSkip, Detail: "SLOTKEEPER_KAFKA_BOOTSTRAP is empty",
			Hint: "without Kafka, planned terminations do not wait for removal safety"}
	}
	parts, err := k.Partitions(ctx)
	if err != nil {
		e := kafkaError(err, "reading the topics")
		return Check{Name: name, Result: CheckError, Detail: e.Error(), Hint: e.Hint}
	}
	return TopicCheck(parts, p.cfg.SlotCount)
}

// TopicCheck applies the replication rules to every topic of parts: replication factor
// above min.insync.replicas, and at most brokers.
func TopicCheck(parts []kafka.Partition, brokers int) Check {
	const name = "topics"
	type topic struct{ rf, minISR int }
	topics := map[string]topic{}
	for _, p := range parts {
		t := topics[p.Topic]
		t.rf, t.minISR = max(t.rf, len(p.Replicas)), p.MinISR
		topics[p.Topic] = t
	}
	var low, high []string
	for _, n := range slices.Sorted(maps.Keys(topics)) {
		t := topics[n]
		if t.rf <= t.minISR {
			low = append(low, fmt.Sprintf("%s (RF %d, min ISR %d)", n, t.rf, t.minISR))
		}
		if t.rf > brokers {
			high = append(high, fmt.Sprintf("%s (RF %d)", n, t.rf))
		}
	}
	detail := fmt.Sprintf("%d topic(s), %d partition(s)", len(topics), len(parts))
	var hints []string
	if len(low) > 0 {
		detail += "; RF ≤ min ISR: " + strings.Join(low, ", ")
		hints = append(hints, "a topic whose replication factor is not above min.insync.replicas refuses acks=all writes (NOT_ENOUGH_REPLICAS) as soon as one broker is away, e.g. during every replacement: raise its RF or lower its min.insync.replicas")
	}
	if len(high) > 0 {
		detail += fmt.Sprintf("; RF above the %d brokers: %s", brokers, strings.Join(high, ", "))
		hints = append(hints, "a replication factor above the broker count can never be fully in sync: lower it or add slots")
	}
	if len(hints) > 0 {
		return Check{Name: name, Result: CheckFail, Detail: detail, Hint: strings.Join(hints, "; ")}
	}
	return Check{Name: name, Result: CheckOK, Detail: detail + "; every RF is above its min ISR and within the broker count"}
}

// zone: the hosted zone exists and holds the DNS name.
func (p *preflight) zone(ctx context.Context) Check {
	const name = "hosted zone"
	if !p.cfg.DNS.Enabled() {
		return Check{Name: name, Result: CheckSkip, Detail: "SLOTKEEPER_HOSTED_ZONE_ID is empty: DNS is not managed",
			Hint: "clients then need the brokers' IPs; set SLOTKEEPER_HOSTED_ZONE_ID and SLOTKEEPER_DNS_NAME for broker-<slot> names"}
	}
	out, err := p.c.Route53.GetHostedZone(ctx, &route53.GetHostedZoneInput{Id: aws.String(p.cfg.DNS.HostedZoneID)})
	if err != nil {
		if awsapi.Code(err) == "NoSuchHostedZone" {
			return Check{Name: name, Result: CheckFail, Detail: fmt.Sprintf("zone %s does not exist", p.cfg.DNS.HostedZoneID),
				Hint: "check SLOTKEEPER_HOSTED_ZONE_ID"}
		}
		return errCheck(name, err)
	}
	zone := strings.ToLower(strings.TrimSuffix(aws.ToString(out.HostedZone.Name), "."))
	want := strings.ToLower(p.cfg.DNS.Name)
	private := out.HostedZone.Config != nil && out.HostedZone.Config.PrivateZone
	kind := "public"
	if private {
		kind = "private"
	}
	detail := fmt.Sprintf("%s is %s (%s)", p.cfg.DNS.HostedZoneID, zone, kind)
	switch {
	case want != zone && !strings.HasSuffix(want, "."+zone):
		return Check{Name: name, Result: CheckFail, Detail: detail,
			Hint: fmt.Sprintf("SLOTKEEPER_DNS_NAME %s is not in zone %s: Route 53 refuses its records", p.cfg.DNS.Name, zone)}
	case !private:
		return Check{Name: name, Result: CheckWarn, Detail: detail,
			Hint: "a public zone publishes the brokers' private addresses; use a private zone associated with the VPC"}
	}
	return Check{Name: name, Result: CheckOK, Detail: detail + fmt.Sprintf("; records under %s", p.cfg.DNS.Name)}
}
