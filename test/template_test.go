package test

// template.yaml, checked as CloudFormation would deploy it (template_load_test.go):
// the functions' configuration, time budgets, lifecycle hooks, the disk-growth
// trigger, the lease table, alarms, dashboard, outputs and VPC placement. IAM is in
// template_iam_test.go, the EventBridge rules in template_events_test.go.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
)

func getenvFrom(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// loadFunctionConfig loads the configuration function id gets, as its cold start does.
func loadFunctionConfig(t *testing.T, s *cfnStack, id string) config.Config {
	t.Helper()
	cfg, err := config.Load(getenvFrom(s.env(t, id)))
	if err != nil {
		t.Fatalf("%s: %s does not start: %v", s.name, id, err)
	}
	return cfg
}

// existingFunctions returns the logical ids of the functions that exist in s.
func existingFunctions(s *cfnStack) []string {
	var ids []string
	for id := range s.resources("AWS::Lambda::Function") {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Every functions/<name>/main.go is deployed by the template as <Name>Function, built
// by the Makefile target sam build calls, on the runtime the Makefile builds for.
func TestTemplateDeploysEveryFunction(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join(templateRepoDir(), "functions", "*", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, d := range dirs {
		name := filepath.Base(filepath.Dir(d))
		want = append(want, strings.ToUpper(name[:1])+name[1:]+"Function")
	}
	sort.Strings(want)
	got := slices.Sorted(maps.Keys(templateFunctions))
	if !slices.Equal(got, want) {
		t.Fatalf("functions/*/main.go give %v, the template tests know %v", want, got)
	}

	for _, sc := range deployScenarios {
		s := deployStack(t, sc.name)
		for _, id := range existingFunctions(s) {
			t.Run(sc.name+"/"+id, func(t *testing.T) {
				r := s.resource(t, id)
				if m := cfnObj(r["Metadata"]); m["BuildMethod"] != "makefile" {
					t.Errorf("Metadata.BuildMethod = %v, want makefile (the Makefile's build-%s target)", m["BuildMethod"], id)
				}
				p := s.props(r)
				checks := []struct {
					what string
					got  any
					want any
				}{
					{"Runtime", p["Runtime"], "provided.al2023"},
					{"Handler", p["Handler"], "bootstrap"},
					{"Architectures", fmt.Sprint(p["Architectures"]), "[arm64]"},
					{"TracingConfig.Mode", cfnObj(p["TracingConfig"])["Mode"], "Active"},
					{"LoggingConfig.LogFormat", cfnObj(p["LoggingConfig"])["LogFormat"], "JSON"},
					{"FunctionName", p["FunctionName"], "slotkeeper-kafka-prod-" + templateFunctions[id]},
					{"LoggingConfig.LogGroup", cfnObj(p["LoggingConfig"])["LogGroup"], "/aws/lambda/slotkeeper-kafka-prod-" + templateFunctions[id]},
				}
				for _, c := range checks {
					if c.got != c.want {
						t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
					}
				}
			})
		}
	}
	if ids := existingFunctions(deployStack(t, "dns")); len(ids) != len(want) {
		t.Errorf("with DNS managed the stack has functions %v, want all of %v", ids, want)
	}
	if ids := existingFunctions(deployStack(t, "defaults")); slices.Contains(ids, "DnsFunction") {
		t.Errorf("without a hosted zone the dns function is deployed (its rule would see every state change for nothing)")
	}
}

// Every function starts: it gets every variable its configuration requires, and the
// whole configuration validates (config.Load is what each function's cold start
// runs). Every variable the template sets is one the configuration reads, and all
// functions get the same configuration except for documented overrides.
func TestTemplateConfiguresEveryFunction(t *testing.T) {
	known := map[string]bool{}
	for _, v := range config.Vars {
		known[config.Prefix+v.Name] = true
	}
	// Per-function values that differ from Globals on purpose (see template.yaml,
	// "Time budgets").
	overrides := map[string][]string{"TerminateFunction": {"SLOTKEEPER_ATTACH_TIMEOUT"}}

	for _, sc := range deployScenarios {
		s := deployStack(t, sc.name)
		reference := s.env(t, "LaunchFunction")
		for _, id := range existingFunctions(s) {
			t.Run(sc.name+"/"+id, func(t *testing.T) {
				env := s.env(t, id)
				for k := range env {
					if !known[k] {
						t.Errorf("the template sets %s, which no function reads (shared/config.Vars)", k)
					}
				}
				if _, err := config.Load(getenvFrom(env)); err != nil {
					t.Fatalf("%s would fail at cold start: %v", id, err)
				}
				// The variables this configuration cannot do without: removing any
				// one of them makes config.Load fail.
				var required []string
				for _, v := range config.Vars {
					name := config.Prefix + v.Name
					if v.Default != "" {
						continue
					}
					without := maps.Clone(env)
					delete(without, name)
					if _, err := config.Load(getenvFrom(without)); err != nil && strings.Contains(err.Error(), name) {
						required = append(required, name)
					}
				}
				for _, name := range []string{"SLOTKEEPER_CLUSTER", "SLOTKEEPER_ASG_NAME", "SLOTKEEPER_TABLE", "SLOTKEEPER_SLOT_COUNT", "SLOTKEEPER_SUBNETS"} {
					if !slices.Contains(required, name) {
						t.Errorf("%s is required by config.Load but was not found so by the probe (required: %v)", name, required)
					}
				}
				for _, name := range required {
					if env[name] == "" {
						t.Errorf("%s lacks required %s", id, name)
					}
				}
				if size := envSize(env); size > 4096 {
					t.Errorf("environment is %d bytes; Lambda allows 4096", size)
				}
				for k, v := range reference {
					if env[k] != v && !slices.Contains(overrides[id], k) {
						t.Errorf("%s=%q, but the launch function gets %q: every function must see the same configuration", k, env[k], v)
					}
				}
				for k := range env {
					if _, ok := reference[k]; !ok {
						t.Errorf("%s gets %s, the launch function does not", id, k)
					}
				}
			})
		}
	}

	// What the parameters turn into.
	s := deployStack(t, "kafka-in-vpc")
	cfg := loadFunctionConfig(t, s, "ReconcileFunction")
	if !cfg.DNS.Enabled() || cfg.DNS.Name != "kafka-prod.internal" || len(cfg.Kafka.Bootstrap) != 2 || cfg.Kafka.SASLMechanism != "SCRAM-SHA-512" || !cfg.Kafka.TLS {
		t.Errorf("kafka-in-vpc: DNS %+v, Kafka %+v: the parameters did not reach the configuration", cfg.DNS, cfg.Kafka)
	}
	if cfg.AlertTopicARN != cfnARN("sns", "slotkeeper-kafka-prod-alerts") {
		t.Errorf("alert topic %q is not the stack's topic", cfg.AlertTopicARN)
	}
	fleet := loadFunctionConfig(t, deployStack(t, "fleet"), "TerminateFunction")
	if want := []string{"bootstrap.kafka-prod.internal:9092"}; !slices.Equal(fleet.Kafka.Bootstrap, want) || fleet.Table != "slotkeeper-kafka-prod-leases" || fleet.NodeIDBase != 100 || fleet.SlotCount != 5 {
		t.Errorf("fleet: bootstrap %v, table %q, node id base %d, slots %d", fleet.Kafka.Bootstrap, fleet.Table, fleet.NodeIDBase, fleet.SlotCount)
	}
	if c := loadFunctionConfig(t, deployStack(t, "growth-off-primary-ip"), "LaunchFunction"); c.ENI || c.Grow.FunctionARN != "" {
		t.Errorf("SlotEni=false, DiskGrowth=off: ENI %v, grow function %q", c.ENI, c.Grow.FunctionARN)
	}
}

func envSize(env map[string]string) int {
	n := 0
	for k, v := range env {
		n += len(k) + len(v)
	}
	return n
}

// Bounds of the waits the code makes, beyond the configured timeouts (see the
// functions' sources).
const (
	// remotePollMax is the longest pause between two SSM result checks (shared/remote).
	remotePollMax = 10 * time.Second
	// leavePollMax is the longest pause of terminate's confirm-left loop, which also
	// ends with one Kafka call (shared/terminate).
	leavePollMax = 10 * time.Second
	// launchMargin, terminateMargin and growMargin cover everything that is not a
	// bounded wait: claims, tags, binds, alarms, DNS, and API calls the SDK retries.
	launchMargin    = 180 * time.Second
	terminateMargin = 120 * time.Second
	growMargin      = 120 * time.Second
)

// terminateBudget is the longest a terminate invocation can take (shared/terminate),
// on the longer of its two paths. An instance that still runs: the removal gate (the
// removal token, then removal safety, one bound for both) and its last verdict (one
// Kafka deadline for both rules), the stop-and-unmount command over SSM, the check
// that the broker left, and a plain detach of the volume and the ENI, each forced
// past the attach timeout and then waited for again. An instance that no longer runs:
// no gate, no command, and each plain detach forced past FORCE_DETACH_AFTER.
func terminateBudget(c config.Config) time.Duration {
	running := c.SafetyMaxWait + terminateAfterGate(c)
	gone := 2*(max(c.ForceDetachAfter, c.AttachTimeout)+c.AttachTimeout) + terminateMargin
	return max(running, gone)
}

// terminateAfterGate is what a removal of a running broker needs after its gate:
// the last verdict, the stop-and-unmount command, the check that the broker left,
// and the plain detaches, each forced past the attach timeout and waited for again.
func terminateAfterGate(c config.Config) time.Duration {
	verdict := kafka.CallTimeout
	stop := c.SSMTimeout + remotePollMax
	left := c.SSMTimeout + leavePollMax + kafka.CallTimeout
	detach := 2 * 2 * c.AttachTimeout
	return verdict + stop + left + detach + terminateMargin
}

// launchBudget: instance pending, ENI detach and attach, volume create, detach and
// attach: six waits bounded by the attach timeout (shared/launch, shared/resources).
// A handover wait (shared/launch) ends at HANDOVER_MAX_WAIT or when only the reserve
// for the attaches after it is left of the invocation, whichever comes first; the test
// checks that reserve covers them (TestTemplateTimeBudgets).
func launchBudget(c config.Config) time.Duration { return 6*c.AttachTimeout + launchMargin }

// growBudget: the wait for the modification to be optimizing, then the filesystem
// command over SSM (shared/grow).
func growBudget(c config.Config) time.Duration {
	return c.AttachTimeout + c.SSMTimeout + remotePollMax + growMargin
}

func timeoutOf(t *testing.T, s *cfnStack, id string) time.Duration {
	t.Helper()
	return time.Duration(cfnNum(s.props(s.resource(t, id))["Timeout"])) * time.Second
}

// The launch, terminate and grow functions finish their longest path within their
// Lambda timeout, for every safety wait an operator may choose; and systemd on the
// broker gives Kafka less time to stop than terminate waits for the stop command.
func TestTemplateTimeBudgets(t *testing.T) {
	for _, sc := range deployScenarios {
		s := deployStack(t, sc.name)
		for _, c := range []struct {
			id     string
			budget func(config.Config) time.Duration
		}{{"LaunchFunction", launchBudget}, {"TerminateFunction", terminateBudget}, {"GrowFunction", growBudget}} {
			cfg := loadFunctionConfig(t, s, c.id)
			need, timeout := c.budget(cfg), timeoutOf(t, s, c.id)
			if need > timeout {
				t.Errorf("%s: %s needs up to %s, its timeout is %s", sc.name, c.id, need, timeout)
			}
			if timeout > 15*time.Minute {
				t.Errorf("%s: %s timeout %s is above Lambda's 15 minutes", sc.name, c.id, timeout)
			}
			if sc.name == "defaults" {
				t.Logf("%s: longest path %s, timeout %s", c.id, need, timeout)
			}
		}
	}

	// The launch's handover wait leaves the attaches after it the time they need.
	for _, sc := range deployScenarios {
		s := deployStack(t, sc.name)
		cfg := loadFunctionConfig(t, s, "LaunchFunction")
		reserve := launch.New(cfg, nil, nil, nil, nil, nil).HandoverReserve
		if need := 4*cfg.AttachTimeout + launchMargin; reserve < need {
			t.Errorf("%s: a handover ends %s before the launch's deadline; the ENI and volume detach and attach after it need %s", sc.name, reserve, need)
		}
		if cfg.HandoverMaxWait+reserve+cfg.AttachTimeout < time.Minute {
			t.Errorf("%s: handover wait %s is too short to be of use", sc.name, cfg.HandoverMaxWait)
		}
	}

	// terminate's gate never runs into the time the rest of the removal needs, and the
	// template's safety waits end before that cut.
	for _, sc := range deployScenarios {
		s := deployStack(t, sc.name)
		cfg := loadFunctionConfig(t, s, "TerminateFunction")
		timeout := timeoutOf(t, s, "TerminateFunction")
		reserve := terminate.New(cfg, nil, nil, nil, nil, nil, nil).GateReserve
		if need := terminateAfterGate(cfg); reserve < need {
			t.Errorf("%s: the removal gate ends %s before terminate's deadline; the rest of the removal needs %s", sc.name, reserve, need)
		}
		if cut := timeout - min(reserve, timeout/2); cfg.SafetyMaxWait > cut {
			t.Errorf("%s: SLOTKEEPER_SAFETY_MAX_WAIT %s is cut to %s by the invocation's deadline", sc.name, cfg.SafetyMaxWait, cut)
		}
		if sc.name == "defaults" {
			t.Logf("terminate: the gate ends at the latest %s into the invocation (reserve %s); the safety wait is %s", timeout-min(reserve, timeout/2), reserve, cfg.SafetyMaxWait)
		}
	}

	// Every allowed TerminateSafetyMaxWait fits, and the default is the largest.
	s := deployStack(t, "defaults")
	param := cfnObj(cfnObj(s.tmpl["Parameters"])["TerminateSafetyMaxWait"])
	env := s.env(t, "TerminateFunction")
	if env["SLOTKEEPER_SAFETY_MAX_WAIT"] != param["Default"] {
		t.Errorf("SLOTKEEPER_SAFETY_MAX_WAIT=%q, the parameter's default is %v", env["SLOTKEEPER_SAFETY_MAX_WAIT"], param["Default"])
	}
	var longest time.Duration
	for _, v := range cfnList(param["AllowedValues"]) {
		e := maps.Clone(env)
		e["SLOTKEEPER_SAFETY_MAX_WAIT"] = cfnStr(v)
		cfg, err := config.Load(getenvFrom(e))
		if err != nil {
			t.Fatalf("TerminateSafetyMaxWait=%v: %v", v, err)
		}
		if need, timeout := terminateBudget(cfg), timeoutOf(t, s, "TerminateFunction"); need > timeout {
			t.Errorf("TerminateSafetyMaxWait=%v: terminate needs %s, timeout %s", v, need, timeout)
		}
		longest = max(longest, cfg.SafetyMaxWait)
	}
	if d, _ := time.ParseDuration(cfnStr(param["Default"])); d != longest {
		t.Errorf("default safety wait %s is not the longest allowed (%s)", d, longest)
	}

	// systemd's stop timeout (deploy/broker-bootstrap.sh) is inside the SSM wait.
	script, err := os.ReadFile(filepath.Join(templateRepoDir(), "deploy", "broker-bootstrap.sh"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^readonly STOP_TIMEOUT_SECONDS=(\d+)$`).FindSubmatch(script)
	if m == nil || !strings.Contains(string(script), "TimeoutStopSec=$STOP_TIMEOUT_SECONDS") {
		t.Fatal("deploy/broker-bootstrap.sh: no STOP_TIMEOUT_SECONDS used as the unit's TimeoutStopSec")
	}
	stop, _ := strconv.Atoi(string(m[1]))
	cfg := loadFunctionConfig(t, s, "TerminateFunction")
	if time.Duration(stop)*time.Second >= cfg.SSMTimeout {
		t.Errorf("Kafka may take %ds to stop, terminate waits %s for the stop command", stop, cfg.SSMTimeout)
	}
	t.Logf("systemd stop timeout %ds < SSM wait %s", stop, cfg.SSMTimeout)
}

// hook is a lifecycle hook, from an AWS::AutoScaling::LifecycleHook or from the
// broker group's LifecycleHookSpecificationList.
type hook struct {
	Name, Transition, DefaultResult, Metadata string
	Heartbeat                                 time.Duration
}

func hookOf(p map[string]any) hook {
	return hook{
		Name: cfnStr(p["LifecycleHookName"]), Transition: cfnStr(p["LifecycleTransition"]),
		DefaultResult: cfnStr(p["DefaultResult"]), Metadata: cfnStr(p["NotificationMetadata"]),
		Heartbeat: time.Duration(cfnNum(p["HeartbeatTimeout"])) * time.Second,
	}
}

// hooks returns the stack's lifecycle hooks on the broker group, by name.
func hooks(t *testing.T, s *cfnStack) map[string]hook {
	t.Helper()
	out := map[string]hook{}
	for _, r := range s.resources("AWS::AutoScaling::LifecycleHook") {
		p := s.props(r)
		if p["AutoScalingGroupName"] != s.params["AsgName"] {
			t.Errorf("%s: hook %v is on group %v, not %v", s.name, p["LifecycleHookName"], p["AutoScalingGroupName"], s.params["AsgName"])
		}
		h := hookOf(p)
		out[h.Name] = h
	}
	for _, r := range s.resources("AWS::AutoScaling::AutoScalingGroup") {
		for _, spec := range cfnList(s.props(r)["LifecycleHookSpecificationList"]) {
			h := hookOf(cfnObj(spec))
			if _, dup := out[h.Name]; dup {
				t.Errorf("hook %s is declared twice", h.Name)
			}
			out[h.Name] = h
		}
	}
	return out
}

// The launch hook abandons, the terminate hook continues; both wait at least as long
// as their function may run, much longer than the heartbeat interval, within the
// Auto Scaling limits; the group created with the fleet declares the same hooks as
// those put on an existing group; and each hook exists only once its rule does.
func TestTemplateLifecycleHooks(t *testing.T) {
	want := map[string]struct {
		transition, result, function string
	}{
		"slotkeeper-launch":    {"autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON", "LaunchFunction"},
		"slotkeeper-terminate": {"autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE", "TerminateFunction"},
	}
	var existing, fleet map[string]hook
	for _, sc := range deployScenarios {
		s := deployStack(t, sc.name)
		hs := hooks(t, s)
		if len(hs) != len(want) {
			t.Errorf("%s: hooks %v, want %d", sc.name, slices.Sorted(maps.Keys(hs)), len(want))
		}
		for name, w := range want {
			h, ok := hs[name]
			if !ok {
				t.Errorf("%s: no hook %s", sc.name, name)
				continue
			}
			cfg := loadFunctionConfig(t, s, w.function)
			timeout := timeoutOf(t, s, w.function)
			switch {
			case h.Transition != w.transition || h.DefaultResult != w.result:
				t.Errorf("%s: hook %s: %s/%s, want %s/%s", sc.name, name, h.Transition, h.DefaultResult, w.transition, w.result)
			case h.Heartbeat < 30*time.Second || h.Heartbeat > 7200*time.Second:
				t.Errorf("%s: hook %s heartbeat timeout %s is outside Auto Scaling's 30-7200 s", sc.name, name, h.Heartbeat)
			case h.Heartbeat < timeout:
				t.Errorf("%s: hook %s expires after %s without a heartbeat, %s may run %s", sc.name, name, h.Heartbeat, w.function, timeout)
			case h.Heartbeat < 10*cfg.HeartbeatInterval:
				t.Errorf("%s: hook %s heartbeat timeout %s is not far above the heartbeat interval %s", sc.name, name, h.Heartbeat, cfg.HeartbeatInterval)
			case h.Metadata != `{"cluster":"kafka-prod"}`:
				t.Errorf("%s: hook %s metadata %q", sc.name, name, h.Metadata)
			}
		}
		if sc.name == "defaults" {
			existing = hs
		}
		if sc.name == "fleet" {
			fleet = hs
			if n := len(s.resources("AWS::AutoScaling::LifecycleHook")); n != 0 {
				t.Errorf("fleet: %d separate hook resources besides the group's own", n)
			}
		}
	}
	if !maps.Equal(existing, fleet) {
		t.Errorf("hooks on an existing group %+v differ from the fleet group's %+v", existing, fleet)
	}

	s := deployStack(t, "defaults")
	for id, deps := range map[string][]string{
		"LaunchLifecycleHook":    {"LaunchFunctionLaunchLifecycleAction", "LaunchFunctionLaunchLifecycleActionPermission"},
		"TerminateLifecycleHook": {"TerminateFunctionTerminateLifecycleAction", "TerminateFunctionTerminateLifecycleActionPermission"},
	} {
		if got := cfnList(s.resource(t, id)["DependsOn"]); !containsAll(got, deps) {
			t.Errorf("%s depends on %v, want %v (no instance may wait for an event nobody routes)", id, got, deps)
		}
	}
	if got := cfnList(deployStack(t, "fleet").resource(t, "BrokerGroup")["DependsOn"]); !containsAll(got, []string{
		"LaunchFunctionLaunchLifecycleAction", "LaunchFunctionLaunchLifecycleActionPermission",
		"TerminateFunctionTerminateLifecycleAction", "TerminateFunctionTerminateLifecycleActionPermission",
	}) {
		t.Errorf("the broker group depends on %v: its first instances would wait for unrouted events", got)
	}
}

func containsAll(got []any, want []string) bool {
	for _, w := range want {
		if !slices.Contains(got, any(w)) {
			return false
		}
	}
	return true
}

// The grow function is invoked either by the disk alarms' own action (allowed for
// the cluster's alarm names only) or by an EventBridge rule, never both; with growth
// off, by nothing, and no function manages disk alarms.
func TestTemplateGrowTrigger(t *testing.T) {
	sample, err := os.ReadFile(filepath.Join(templateRepoDir(), "events", "alarm-action.json"))
	if err != nil {
		t.Fatal(err)
	}
	var action struct {
		AlarmArn string `json:"alarmArn"`
	}
	if err := json.Unmarshal(sample, &action); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		scenario         string
		permission, rule bool
	}{
		{"defaults", true, false},
		{"growth-by-eventbridge", false, true},
		{"growth-off-primary-ip", false, false},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			s := deployStack(t, c.scenario)
			all := s.resources("")
			_, permission := all["GrowFunctionAlarmPermission"]
			_, rule := all["GrowAlarmStateRule"]
			if permission != c.permission || rule != c.rule {
				t.Fatalf("alarm permission %v, EventBridge rule %v; want %v, %v", permission, rule, c.permission, c.rule)
			}
			cfg := loadFunctionConfig(t, s, "LaunchFunction")
			growARN := s.getAtt("GrowFunction", "Arn")
			if enabled := c.permission || c.rule; (cfg.Grow.FunctionARN == growARN) != enabled || (cfg.Grow.FunctionARN == "") == enabled {
				t.Errorf("SLOTKEEPER_GROW_FUNCTION_ARN=%q (grow function %v), growth enabled %v", cfg.Grow.FunctionARN, growARN, enabled)
			}
			if !permission {
				return
			}
			p := s.props(all["GrowFunctionAlarmPermission"])
			if p["Principal"] != "lambda.alarms.cloudwatch.amazonaws.com" || p["FunctionName"] != "slotkeeper-kafka-prod-grow" ||
				p["Action"] != "lambda:InvokeFunction" || p["SourceAccount"] != tmplAccount {
				t.Errorf("alarm permission %v", p)
			}
			pattern := cfnStr(p["SourceArn"])
			for alarm, want := range map[string]bool{
				action.AlarmArn: true, // events/alarm-action.json
				cfnARN("cloudwatch", "alarm:slotkeeper-kafka-prod-disk-0"):                     true,
				cfnARN("cloudwatch", "alarm:slotkeeper-kafka-test-disk-2"):                     false, // another cluster
				cfnARN("cloudwatch", "alarm:slotkeeper-kafka-prod-dead-letters"):               false,
				"arn:aws:cloudwatch:us-east-1:210987654321:alarm:slotkeeper-kafka-prod-disk-2": false, // another account
			} {
				if got, _ := path.Match(pattern, alarm); got != want {
					t.Errorf("SourceArn %s allows %s: %v, want %v", pattern, alarm, got, want)
				}
			}
		})
	}
}

// The lease table keeps the leases whatever happens to the stack.
func TestTemplateLeaseTable(t *testing.T) {
	s := deployStack(t, "defaults")
	r := s.resource(t, "LeaseTable")
	if r["DeletionPolicy"] != "Retain" || r["UpdateReplacePolicy"] != "Retain" {
		t.Errorf("DeletionPolicy %v, UpdateReplacePolicy %v: the leases must survive the stack", r["DeletionPolicy"], r["UpdateReplacePolicy"])
	}
	p := s.props(r)
	keys, _ := json.Marshal(p["KeySchema"])
	attrs, _ := json.Marshal(p["AttributeDefinitions"])
	for what, ok := range map[string]bool{
		"on-demand billing":      p["BillingMode"] == "PAY_PER_REQUEST",
		"point-in-time recovery": cfnObj(p["PointInTimeRecoverySpecification"])["PointInTimeRecoveryEnabled"] == true,
		"encryption":             cfnObj(p["SSESpecification"])["SSEEnabled"] == true,
		"name":                   p["TableName"] == "slotkeeper-kafka-prod-leases",
		// shared/lease: partition key cluster (S), sort key slot (N).
		"key schema": string(keys) == `[{"AttributeName":"cluster","KeyType":"HASH"},{"AttributeName":"slot","KeyType":"RANGE"}]` &&
			string(attrs) == `[{"AttributeName":"cluster","AttributeType":"S"},{"AttributeName":"slot","AttributeType":"N"}]`,
	} {
		if !ok {
			t.Errorf("lease table: wrong %s: %v", what, p)
		}
	}
	if _, ok := deployStack(t, "fleet").resources("")["LeaseTable"]; ok {
		t.Error("with ExistingLeaseTable the stack creates a second table")
	}
}

// Function errors, dead letters, abandoned launches and a stopped reconciler alarm
// the alert topic; the dead-letter queue takes every function's failed invocations.
func TestTemplateAlarms(t *testing.T) {
	for _, sc := range deployScenarios {
		s := deployStack(t, sc.name)
		topic := s.ref("AlertTopic")
		errorAlarms := map[string]bool{}
		for id, r := range s.resources("AWS::CloudWatch::Alarm") {
			p := s.props(r)
			if acts := cfnList(p["AlarmActions"]); len(acts) != 1 || acts[0] != topic {
				t.Errorf("%s: alarm %s actions %v, want the alert topic", sc.name, id, acts)
			}
			if strings.HasPrefix(cfnStr(p["AlarmName"]), "slotkeeper-kafka-prod-disk-") {
				t.Errorf("%s: alarm %s takes a name of the slots' disk alarms, which the functions overwrite", sc.name, id)
			}
			if p["Namespace"] == "AWS/Lambda" && p["MetricName"] == "Errors" {
				errorAlarms[cfnStr(cfnObj(cfnList(p["Dimensions"])[0])["Value"])] = true
			}
		}
		for _, id := range existingFunctions(s) {
			if name := s.ref(id).(string); !errorAlarms[name] {
				t.Errorf("%s: no error alarm for %s", sc.name, name)
			}
			dest := cfnObj(cfnObj(cfnObj(s.props(s.resource(t, id+"EventInvokeConfig"))["DestinationConfig"])["OnFailure"]))
			if dest["Destination"] != s.getAtt("DeadLetterQueue", "Arn") {
				t.Errorf("%s: %s sends failed invocations to %v, not the dead-letter queue", sc.name, id, dest["Destination"])
			}
		}
		for _, id := range []string{"DeadLetterAlarm", "AbandonsAlarm", "ReconcileNotRunningAlarm"} {
			s.resource(t, id)
		}
	}
}

// emittedMetricRE finds the metrics the dashboard reads from the functions' namespace
// (the default, Slotkeeper).
var emittedMetricRE = regexp.MustCompile(`"Slotkeeper", "([A-Za-z]+)"`)

// The dashboard is valid JSON, shows what operators need, and reads only metrics
// the functions emit.
func TestTemplateDashboard(t *testing.T) {
	s := deployStack(t, "defaults")
	body := cfnStr(s.props(s.resource(t, "Dashboard"))["DashboardBody"])
	var dash struct {
		Widgets []struct {
			Type       string         `json:"type"`
			Properties map[string]any `json:"properties"`
		} `json:"widgets"`
	}
	if err := json.Unmarshal([]byte(body), &dash); err != nil {
		t.Fatalf("dashboard body is not JSON: %v\n%s", err, body)
	}
	var sources strings.Builder
	files, _ := filepath.Glob(filepath.Join(templateRepoDir(), "shared", "*", "*.go"))
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			sources.Write(b)
		}
	}
	used := map[string]bool{}
	for _, m := range emittedMetricRE.FindAllStringSubmatch(body, -1) {
		used[m[1]] = true
		if !strings.Contains(sources.String(), `"`+m[1]+`"`) {
			t.Errorf("the dashboard reads metric %s, which no code in shared/ emits", m[1])
		}
	}
	for _, m := range []string{"Slots", "Growths", "GrowthGiB", "UnderReplicatedPartitions", "OfflinePartitions", "Abandons"} {
		if !used[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
	for _, want := range []string{`"AWS/Lambda", "Errors"`, `"AWS/Lambda", "Duration"`, `volume and filesystem grown`, `disk_used_percent`} {
		if !strings.Contains(body, want) {
			t.Errorf("the dashboard lacks %s", want)
		}
	}
	if !strings.Contains(sources.String(), `"volume and filesystem grown"`) {
		t.Error("the volume-size widget queries a log message no code writes")
	}
	t.Logf("%d widgets, %d metrics of the functions' namespace", len(dash.Widgets), len(used))
}

// The functions that talk to Kafka run in the given subnets; the others outside.
func TestTemplateVPCPlacement(t *testing.T) {
	for _, c := range []struct {
		scenario string
		inVPC    []string
	}{
		{"defaults", nil},
		{"kafka-in-vpc", []string{"ReconcileFunction", "TerminateFunction"}},
		{"fleet", []string{"ReconcileFunction", "TerminateFunction"}},
	} {
		s := deployStack(t, c.scenario)
		var got []string
		for _, id := range existingFunctions(s) {
			vpc := cfnObj(s.props(s.resource(t, id))["VpcConfig"])
			if vpc == nil {
				continue
			}
			got = append(got, id)
			if fmt.Sprint(vpc["SubnetIds"]) != "[subnet-0f0e0d0c0b0a00001 subnet-0f0e0d0c0b0a00002]" || fmt.Sprint(vpc["SecurityGroupIds"]) != "[sg-0f0e0d0c0b0a00001]" {
				t.Errorf("%s: %s VpcConfig %v", c.scenario, id, vpc)
			}
		}
		if !slices.Equal(got, c.inVPC) {
			t.Errorf("%s: functions in the VPC %v, want %v", c.scenario, got, c.inVPC)
		}
	}
}

// The outputs name the table, the topic and the dashboard.
func TestTemplateOutputs(t *testing.T) {
	for _, sc := range []string{"defaults", "fleet"} {
		s := deployStack(t, sc)
		outs := cfnObj(s.tmpl["Outputs"])
		for name, want := range map[string]any{
			"LeaseTableName": "slotkeeper-kafka-prod-leases",
			"AlertTopicArn":  cfnARN("sns", "slotkeeper-kafka-prod-alerts"),
			"DashboardName":  "slotkeeper-kafka-prod",
		} {
			if got := s.eval(cfnObj(outs[name])["Value"]); got != want {
				t.Errorf("%s: output %s = %v, want %v", sc, name, got, want)
			}
		}
	}
}

// samconfig.toml's example deploy is the stack these tests check (templateBaseParams),
// and it passes every parameter that has no default.
func TestSamconfigDeploysTheTestedStack(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(templateRepoDir(), "samconfig.toml"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s+"([A-Za-z]+)=([^"]*)",?$`).FindAllStringSubmatch(string(b), -1) {
		got[m[1]] = m[2]
	}
	if !maps.Equal(got, templateBaseParams) {
		t.Errorf("samconfig.toml parameter_overrides %v, the tested stack %v", got, templateBaseParams)
	}
	s := deployStack(t, "defaults")
	for name, def := range cfnObj(s.tmpl["Parameters"]) {
		if _, ok := cfnObj(def)["Default"]; !ok && got[name] == "" {
			t.Errorf("samconfig.toml does not set %s, which has no default", name)
		}
	}
}
