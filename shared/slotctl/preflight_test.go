package slotctl_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"

	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// recordedRefreshes is AWS's answer to DescribeInstanceRefreshes for a group with an
// instance refresh in progress that launches before it terminates (the documented
// response shape; moto does not implement the action).
const recordedRefreshes = `<DescribeInstanceRefreshesResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
  <DescribeInstanceRefreshesResult>
    <InstanceRefreshes>
      <member>
        <InstanceRefreshId>08b91cf7-8fa6-48af-b6a6-d227f40f1b9b</InstanceRefreshId>
        <AutoScalingGroupName>GROUP</AutoScalingGroupName>
        <Status>InProgress</Status>
        <StatusReason>Waiting for instances to warm up before continuing. For example: i-0e69cc3f05f825f4f is warming up.</StatusReason>
        <StartTime>2026-06-02T18:11:27Z</StartTime>
        <PercentageComplete>0</PercentageComplete>
        <InstancesToUpdate>3</InstancesToUpdate>
        <Preferences>
          <MinHealthyPercentage>100</MinHealthyPercentage>
          <MaxHealthyPercentage>110</MaxHealthyPercentage>
          <InstanceWarmup>300</InstanceWarmup>
          <SkipMatching>false</SkipMatching>
        </Preferences>
      </member>
      <member>
        <InstanceRefreshId>dd7728d0-5bc4-4575-96a3-1b2c52bf8bb1</InstanceRefreshId>
        <AutoScalingGroupName>GROUP</AutoScalingGroupName>
        <Status>Successful</Status>
        <StartTime>2026-05-01T10:00:00Z</StartTime>
        <EndTime>2026-05-01T10:40:00Z</EndTime>
        <PercentageComplete>100</PercentageComplete>
        <InstancesToUpdate>0</InstancesToUpdate>
        <Preferences>
          <MinHealthyPercentage>66</MinHealthyPercentage>
          <MaxHealthyPercentage>100</MaxHealthyPercentage>
        </Preferences>
      </member>
    </InstanceRefreshes>
  </DescribeInstanceRefreshesResult>
  <ResponseMetadata><RequestId>c8d9e3b5-1f2a-4d3e-9b7a-0123456789ab</RequestId></ResponseMetadata>
</DescribeInstanceRefreshesResponse>`

// recordedPolicy is how DescribeAutoScalingGroups reports a group's instance
// maintenance policy (moto 5.2.5 accepts the setting and drops it).
const recordedPolicy = `<InstanceMaintenancePolicy><MinHealthyPercentage>100</MinHealthyPercentage><MaxHealthyPercentage>200</MaxHealthyPercentage></InstanceMaintenancePolicy>`

func policyXML(minH, maxH int) string {
	return fmt.Sprintf("<InstanceMaintenancePolicy><MinHealthyPercentage>%d</MinHealthyPercentage><MaxHealthyPercentage>%d</MaxHealthyPercentage></InstanceMaintenancePolicy>", minH, maxH)
}

// Each Auto Scaling setting that launches before it terminates, or replaces a broker
// mid-start, is a failed check with the exact fix, from a group configured that way at
// moto; moto lacks instance refreshes and instance maintenance policies, which come
// from recorded AWS answers. Preflight makes no mutating call.
func TestPreflightAutoScaling(t *testing.T) {
	h := harness.Start(t)
	// Recorded answers, for the groups named in them; installed before any call.
	var mu sync.Mutex
	refreshing, withPolicy := map[string]bool{}, map[string]string{}
	h.Override(harness.Override{Action: "DescribeInstanceRefreshes", Rewrite: func(req, resp []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		for g := range refreshing {
			if bytes.Contains(append(req, '&'), []byte("AutoScalingGroupName="+g+"&")) {
				return []byte(strings.ReplaceAll(recordedRefreshes, "GROUP", g))
			}
		}
		return resp
	}})
	h.Override(harness.Override{Action: "DescribeAutoScalingGroups", Rewrite: func(_, resp []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		for g, policy := range withPolicy {
			resp = bytes.Replace(resp, []byte("<AutoScalingGroupName>"+g+"</AutoScalingGroupName>"),
				[]byte("<AutoScalingGroupName>"+g+"</AutoScalingGroupName>"+policy), 1)
		}
		return resp
	}})

	st := newStage(t, h, "pa", demo.StageOptions{})
	ctx := context.Background()
	asg := autoscaling.NewFromConfig(h.DirectConfig())
	// group creates a group like the stage's (hooks of 900 s, AZRebalance suspended,
	// grace 600 s) with change applied to its creation request, then after run.
	group := func(name string, change func(*autoscaling.CreateAutoScalingGroupInput), after func()) {
		in := &autoscaling.CreateAutoScalingGroupInput{
			AutoScalingGroupName: aws.String(name),
			LaunchTemplate:       &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String("pa-broker"), Version: aws.String("$Latest")},
			MinSize:              aws.Int32(0), MaxSize: aws.Int32(demo.Slots), DesiredCapacity: aws.Int32(0),
			VPCZoneIdentifier: aws.String(st.Vars["SUBNETS"]), HealthCheckType: aws.String("EC2"), HealthCheckGracePeriod: aws.Int32(600),
		}
		if change != nil {
			change(in)
		}
		if _, err := asg.CreateAutoScalingGroup(ctx, in); err != nil {
			t.Fatalf("creating group %s: %v", name, err)
		}
		for _, hk := range [][3]string{{demo.LaunchHook, "autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"}, {demo.TerminateHook, "autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE"}} {
			if _, err := asg.PutLifecycleHook(ctx, &autoscaling.PutLifecycleHookInput{AutoScalingGroupName: aws.String(name),
				LifecycleHookName: aws.String(hk[0]), LifecycleTransition: aws.String(hk[1]), DefaultResult: aws.String(hk[2]),
				HeartbeatTimeout: aws.Int32(900)}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := asg.SuspendProcesses(ctx, &autoscaling.SuspendProcessesInput{AutoScalingGroupName: aws.String(name), ScalingProcesses: []string{"AZRebalance"}}); err != nil {
			t.Fatal(err)
		}
		if after != nil {
			after()
		}
	}

	asChecks := []string{"lifecycle hooks", "az rebalance", "capacity rebalance", "warm pool", "instance refresh", "health check grace"}
	tests := []struct {
		name   string
		setup  func(group string)
		check  string // the one Auto Scaling check that fails; "" for none
		fix    string // in its fix
		detail string // in its detail
	}{
		{name: "ready"},
		{name: "azrebalance", check: "az rebalance", fix: "aws autoscaling suspend-processes --auto-scaling-group-name azrebalance --scaling-processes AZRebalance",
			detail: "AZRebalance is active",
			setup: func(g string) {
				group(g, nil, func() {
					if _, err := asg.ResumeProcesses(ctx, &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String(g), ScalingProcesses: []string{"AZRebalance"}}); err != nil {
						t.Fatal(err)
					}
				})
			}},
		{name: "capacityrebalance", check: "capacity rebalance", fix: "aws autoscaling update-auto-scaling-group --auto-scaling-group-name capacityrebalance --no-capacity-rebalance",
			detail: "Capacity Rebalancing is on",
			setup: func(g string) {
				group(g, func(in *autoscaling.CreateAutoScalingGroupInput) { in.CapacityRebalance = aws.Bool(true) }, nil)
			}},
		{name: "warmpool", check: "warm pool", fix: "aws autoscaling delete-warm-pool --auto-scaling-group-name warmpool --force-delete",
			detail: "a warm pool (state Stopped",
			setup: func(g string) {
				group(g, nil, func() {
					if _, err := asg.PutWarmPool(ctx, &autoscaling.PutWarmPoolInput{AutoScalingGroupName: aws.String(g), MinSize: aws.Int32(1)}); err != nil {
						t.Fatal(err)
					}
				})
			}},
		{name: "refreshing", check: "instance refresh", fix: "aws autoscaling cancel-instance-refresh --auto-scaling-group-name refreshing",
			detail: "1 active instance refresh(es)",
			setup: func(g string) {
				group(g, nil, nil)
				mu.Lock()
				refreshing[g] = true
				mu.Unlock()
			}},
		{name: "maintenance", check: "instance refresh",
			fix:    "aws autoscaling update-auto-scaling-group --auto-scaling-group-name maintenance --instance-maintenance-policy MinHealthyPercentage=67,MaxHealthyPercentage=100",
			detail: "MinHealthyPercentage 100, MaxHealthyPercentage 200",
			setup: func(g string) {
				group(g, func(in *autoscaling.CreateAutoScalingGroupInput) {
					in.InstanceMaintenancePolicy = &astypes.InstanceMaintenancePolicy{MinHealthyPercentage: aws.Int32(100), MaxHealthyPercentage: aws.Int32(200)}
				}, nil)
				mu.Lock()
				withPolicy[g] = recordedPolicy
				mu.Unlock()
			}},
		// MinHealthyPercentage 0: a refresh or health replacement may take every broker
		// out of service at once. 67 (100 × 2 ÷ 3, rounded up) keeps two of three.
		{name: "minhealthy", check: "instance refresh",
			fix:    "aws autoscaling update-auto-scaling-group --auto-scaling-group-name minhealthy --instance-maintenance-policy MinHealthyPercentage=67,MaxHealthyPercentage=100",
			detail: "MinHealthyPercentage 0, MaxHealthyPercentage 100",
			setup: func(g string) {
				group(g, nil, nil)
				mu.Lock()
				withPolicy[g] = policyXML(0, 100)
				mu.Unlock()
			}},
		{name: "minhealthy66", check: "instance refresh", detail: "MinHealthyPercentage 66, MaxHealthyPercentage 100",
			fix: "MinHealthyPercentage=67,MaxHealthyPercentage=100",
			setup: func(g string) {
				group(g, nil, nil)
				mu.Lock()
				withPolicy[g] = policyXML(66, 100)
				mu.Unlock()
			}},
		{name: "onebyone", setup: func(g string) {
			group(g, nil, nil)
			mu.Lock()
			withPolicy[g] = policyXML(67, 100)
			mu.Unlock()
		}},
		// Hooks of other names than SLOTKEEPER_LAUNCH_HOOK / SLOTKEEPER_TERMINATE_HOOK: the
		// functions ignore their actions, as if the group had none.
		{name: "foreignhooks", check: "lifecycle hooks",
			fix:    "--lifecycle-hook-name " + demo.TerminateHook + " --lifecycle-transition autoscaling:EC2_INSTANCE_TERMINATING",
			detail: "hooks the functions ignore: someone-elses-launch (autoscaling:EC2_INSTANCE_LAUNCHING), someone-elses-terminate (autoscaling:EC2_INSTANCE_TERMINATING)",
			setup: func(g string) {
				group(g, nil, func() {
					for _, hk := range [][2]string{{demo.LaunchHook, "someone-elses-launch"}, {demo.TerminateHook, "someone-elses-terminate"}} {
						if _, err := asg.DeleteLifecycleHook(ctx, &autoscaling.DeleteLifecycleHookInput{AutoScalingGroupName: aws.String(g), LifecycleHookName: aws.String(hk[0])}); err != nil {
							t.Fatal(err)
						}
					}
					for _, hk := range [][3]string{{"someone-elses-launch", "autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"}, {"someone-elses-terminate", "autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE"}} {
						if _, err := asg.PutLifecycleHook(ctx, &autoscaling.PutLifecycleHookInput{AutoScalingGroupName: aws.String(g),
							LifecycleHookName: aws.String(hk[0]), LifecycleTransition: aws.String(hk[1]), DefaultResult: aws.String(hk[2]),
							HeartbeatTimeout: aws.Int32(900)}); err != nil {
							t.Fatal(err)
						}
					}
					// roll and evict look the terminate hook up the same way: none here.
					cfg := st.Config
					cfg.ASGName = g
					l, term, err := slotctl.Hooks(ctx, st.Clients(), cfg)
					if err != nil || l != nil || term != nil {
						t.Errorf("slotctl.Hooks: %v, %v, %v; want no hook of ours", l, term, err)
					}
				})
			}},
		// A hook of our name on the wrong transition is not ours either.
		{name: "swappedhooks", check: "lifecycle hooks", detail: "launch " + demo.LaunchHook + ": missing",
			fix: "--lifecycle-hook-name " + demo.LaunchHook + " --lifecycle-transition autoscaling:EC2_INSTANCE_LAUNCHING",
			setup: func(g string) {
				group(g, nil, func() {
					if _, err := asg.PutLifecycleHook(ctx, &autoscaling.PutLifecycleHookInput{AutoScalingGroupName: aws.String(g),
						LifecycleHookName: aws.String(demo.LaunchHook), LifecycleTransition: aws.String("autoscaling:EC2_INSTANCE_TERMINATING"),
						DefaultResult: aws.String("CONTINUE"), HeartbeatTimeout: aws.Int32(900)}); err != nil {
						t.Fatal(err)
					}
				})
			}},
		{name: "grace", check: "health check grace", fix: "aws autoscaling update-auto-scaling-group --auto-scaling-group-name grace --health-check-grace-period 600",
			detail: "grace period 1m0s",
			setup: func(g string) {
				group(g, func(in *autoscaling.CreateAutoScalingGroupInput) { in.HealthCheckGracePeriod = aws.Int32(60) }, nil)
			}},
		{name: "shorthook", check: "lifecycle hooks",
			fix:    "aws autoscaling put-lifecycle-hook --auto-scaling-group-name shorthook --lifecycle-hook-name slotkeeper-terminate --lifecycle-transition autoscaling:EC2_INSTANCE_TERMINATING --heartbeat-timeout 900 --default-result CONTINUE",
			detail: "terminate: slotkeeper-terminate (heartbeat 300s",
			setup: func(g string) {
				group(g, nil, func() {
					if _, err := asg.PutLifecycleHook(ctx, &autoscaling.PutLifecycleHookInput{AutoScalingGroupName: aws.String(g),
						LifecycleHookName: aws.String(demo.TerminateHook), LifecycleTransition: aws.String("autoscaling:EC2_INSTANCE_TERMINATING"),
						DefaultResult: aws.String("CONTINUE"), HeartbeatTimeout: aws.Int32(300)}); err != nil {
						t.Fatal(err)
					}
				})
			}},
	}
	vars := map[string]string{}
	for k, v := range st.Vars {
		vars["SLOTKEEPER_"+k] = v
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range vars {
				env[k] = v
			}
			if tt.setup != nil {
				tt.setup(tt.name)
				env["SLOTKEEPER_ASG_NAME"] = tt.name
			}
			h.ResetCounts()
			var out, errOut bytes.Buffer
			code := slotctl.Main(ctx, []string{"preflight", "--json"}, slotctl.IO{Stdout: &out, Stderr: &errOut,
				Getenv: func(k string) string { return env[k] }, Clients: slotctl.NewClients(h.AWSConfig())})
			rep := decode[slotctl.PreflightReport](t, result{code: code, stdout: out.String(), stderr: errOut.String()})
			wantCode := slotctl.ExitProblem
			if tt.check == "" {
				wantCode = slotctl.ExitOK
			}
			if code != wantCode {
				t.Errorf("exit %d, want %d: %+v", code, wantCode, rep.Checks)
			}
			for _, name := range asChecks {
				i := slices.IndexFunc(rep.Checks, func(c slotctl.Check) bool { return c.Name == name })
				if i < 0 {
					t.Fatalf("no %q check in %+v", name, rep.Checks)
				}
				c := rep.Checks[i]
				switch {
				case name != tt.check && c.Result != slotctl.CheckOK:
					t.Errorf("check %s: %s (%s), want ok", name, c.Result, c.Detail)
				case name == tt.check && (c.Result != slotctl.CheckFail || !strings.Contains(c.Fix, tt.fix) || c.Hint == "" || !strings.Contains(c.Detail, tt.detail)):
					t.Errorf("check %s: %+v\nwant fail, detail with %q, fix with %q and a hint", name, c, tt.detail, tt.fix)
				case name == tt.check:
					t.Logf("%s: %s\n  detail: %s\n  hint: %s\n  fix: %s", tt.name, c.Result, c.Detail, c.Hint, c.Fix)
				}
			}
			if m := h.MutatingCalls(); len(m) > 0 {
				t.Errorf("preflight made mutating calls %v", m)
			}
		})
	}
}
