package test

// Least privilege in template.yaml: every allowed action is one a reviewer has ruled
// on (iamRules), no action is a wildcard, every mutating call is held to the
// cluster's resources, and each function gets exactly the mutating calls it makes.

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// iamStatement is one evaluated policy statement and where it comes from.
type iamStatement struct {
	policy    string // logical id of the managed policy or role
	sid       string
	effect    string
	actions   []string
	resources []string
	cond      map[string]any
	raw       map[string]any
}

func toStrings(v any) []string {
	var out []string
	for _, e := range cfnList(v) {
		out = append(out, cfnStr(e))
	}
	return out
}

func statementsOf(policy string, doc any) []iamStatement {
	var out []iamStatement
	for _, st := range cfnList(cfnObj(doc)["Statement"]) {
		m := cfnObj(st)
		out = append(out, iamStatement{
			policy: policy, sid: cfnStr(m["Sid"]), effect: cfnStr(m["Effect"]),
			actions: toStrings(m["Action"]), resources: toStrings(m["Resource"]), cond: cfnObj(m["Condition"]), raw: m,
		})
	}
	return out
}

// policyStatements returns the identity-policy statements of the stack, by managed
// policy or role logical id.
func policyStatements(s *cfnStack) map[string][]iamStatement {
	out := map[string][]iamStatement{}
	for id, r := range s.resources("AWS::IAM::ManagedPolicy") {
		out[id] = statementsOf(id, s.props(r)["PolicyDocument"])
	}
	for id, r := range s.resources("AWS::IAM::Role") {
		for _, p := range cfnList(s.props(r)["Policies"]) {
			out[id] = append(out[id], statementsOf(id, cfnObj(p)["PolicyDocument"])...)
		}
	}
	return out
}

// condValue returns the values of condition operator op on key, or nil.
func (st iamStatement) condValue(op, key string) []string {
	v, ok := cfnObj(st.cond[op])[key]
	if !ok {
		return nil
	}
	return toStrings(v)
}

func (st iamStatement) condEquals(op, key string, want ...string) bool {
	got := st.condValue(op, key)
	return len(got) > 0 && slices.Equal(got, want)
}

// mutatingAction reports whether an action changes something (everything but reads).
func mutatingAction(action string) bool {
	_, verb, _ := strings.Cut(action, ":")
	for _, read := range []string{"Describe", "Get", "List", "Query", "BatchGet", "Scan"} {
		if strings.HasPrefix(verb, read) {
			return false
		}
	}
	return true
}

// iamContext is what a rule checks a statement against.
type iamContext struct {
	s                                  *cfnStack
	cluster, asg, table, zone, dnsName string
}

func (c iamContext) ec2(resource string) string { return cfnARN("ec2", resource) }

// iamRule says where an allowed action may apply: it returns what is wrong with one
// resource of a statement, or "".
type iamRule func(c iamContext, st iamStatement, resource string) string

func onlyResources(want ...func(iamContext) string) iamRule {
	return func(c iamContext, _ iamStatement, r string) string {
		for _, w := range want {
			if r == w(c) {
				return ""
			}
		}
		return "resource not allowed"
	}
}

func anyResource(iamContext, iamStatement, string) string { return "" }

var (
	tableARN  = func(c iamContext) string { return cfnARN("dynamodb", "table/"+c.table) }
	zoneARN   = func(c iamContext) string { return "arn:aws:route53:::hostedzone/" + c.zone }
	topicARN  = func(c iamContext) string { return cfnARN("sns", "slotkeeper-"+c.cluster+"-alerts") }
	queueARN  = func(c iamContext) string { return cfnARN("sqs", "slotkeeper-"+c.cluster+"-dead-letters") }
	alarmsARN = func(c iamContext) string { return cfnARN("cloudwatch", "alarm:slotkeeper-"+c.cluster+"-disk-*") }
	groupARN  = func(c iamContext) string {
		return cfnARN("autoscaling", "autoScalingGroup:*:autoScalingGroupName/"+c.asg)
	}
	logsARN = func(c iamContext) string {
		return cfnARN("logs", "log-group:/aws/lambda/slotkeeper-"+c.cluster+"-*:*")
	}
	documentARN = func(iamContext) string { return "arn:aws:ssm:" + tmplRegion + "::document/AWS-RunShellScript" }
	kmsKey      = func(c iamContext) string { return cfnStr(c.s.params["VolumeKmsKeyArn"]) }
	kafkaSecret = func(c iamContext) string { return cfnStr(c.s.params["KafkaPasswordSecretArn"]) }
)

// leaseKeys: DynamoDB calls only on the cluster's own partition.
func leaseKeys(c iamContext, st iamStatement, r string) string {
	if r != tableARN(c) {
		return "not the lease table"
	}
	if !st.condEquals("ForAllValues:StringEquals", "dynamodb:LeadingKeys", c.cluster) {
		return "no dynamodb:LeadingKeys condition on the cluster"
	}
	return ""
}

// slotTagged: volumes and ENIs of the cluster (slotkeeper:cluster); instances of the
// broker group or bound to the cluster.
func slotTagged(kinds ...string) iamRule {
	return func(c iamContext, st iamStatement, r string) string {
		clusterTag := st.condEquals("StringEquals", "aws:ResourceTag/slotkeeper:cluster", c.cluster)
		for _, k := range kinds {
			if r == c.ec2(k+"/*") && clusterTag {
				return ""
			}
		}
		if r == c.ec2("instance/*") && slices.Contains(kinds, "instance") &&
			(clusterTag || st.condEquals("StringEquals", "aws:ResourceTag/aws:autoscaling:groupName", c.asg)) {
			return ""
		}
		return "not limited to the cluster's tagged " + strings.Join(kinds, "/") + " resources"
	}
}

// createTagged: new volumes and ENIs only with the cluster's tag in the request; for
// an ENI, also the account's subnets and security groups in this region.
func createTagged(c iamContext, st iamStatement, r string) string {
	tagged := st.condEquals("StringEquals", "aws:RequestTag/slotkeeper:cluster", c.cluster)
	switch r {
	case c.ec2("volume/*"), c.ec2("network-interface/*"):
		if tagged {
			return ""
		}
		return "created without the cluster's tag in the request"
	case c.ec2("subnet/*"), c.ec2("security-group/*"):
		if slices.Contains(st.actions, "ec2:CreateNetworkInterface") && !slices.Contains(st.actions, "ec2:CreateVolume") {
			return ""
		}
	case "*":
		if st.policy == "VpcAccessPolicy" {
			return "" // the ENIs Lambda manages for a function in a VPC
		}
	}
	return "resource not allowed"
}

// createTags: tags on volumes and ENIs only as they are created, and on the cluster's
// volumes only the never-formatted mark (launch re-stamps it); on instances of the
// broker group, only the slotkeeper identity tags.
func createTags(c iamContext, st iamStatement, r string) string {
	requestTagged := st.condEquals("StringEquals", "aws:RequestTag/slotkeeper:cluster", c.cluster)
	switch r {
	case c.ec2("volume/*"), c.ec2("network-interface/*"):
		if requestTagged && st.condEquals("StringEquals", "ec2:CreateAction", "CreateVolume", "CreateNetworkInterface") {
			return ""
		}
		if r == c.ec2("volume/*") && st.condEquals("StringEquals", "aws:ResourceTag/slotkeeper:cluster", c.cluster) &&
			slices.Equal(st.condValue("ForAllValues:StringEquals", "aws:TagKeys"), []string{"slotkeeper:never-formatted"}) {
			return ""
		}
		return "tags volumes or ENIs outside their creation"
	case c.ec2("instance/*"):
		keys := st.condValue("ForAllValues:StringEquals", "aws:TagKeys")
		if requestTagged && st.condEquals("StringEquals", "aws:ResourceTag/aws:autoscaling:groupName", c.asg) &&
			len(keys) > 0 && !slices.ContainsFunc(keys, func(k string) bool { return !strings.HasPrefix(k, "slotkeeper:") }) {
			return ""
		}
		return "tags instances outside the broker group, or other tags than slotkeeper's"
	}
	return "resource not allowed"
}

// deleteTags (launch and the broker instances): only the never-formatted mark of the
// cluster's volumes, and only the refusal tag of the broker group's instances.
func deleteTags(c iamContext, st iamStatement, r string) string {
	keys := st.condValue("ForAllValues:StringEquals", "aws:TagKeys")
	switch r {
	case c.ec2("volume/*"):
		if st.condEquals("StringEquals", "aws:ResourceTag/slotkeeper:cluster", c.cluster) && slices.Equal(keys, []string{"slotkeeper:never-formatted"}) {
			return ""
		}
		return "deletes other tags than the never-formatted mark, or on volumes outside the cluster"
	case c.ec2("instance/*"):
		if st.condEquals("StringEquals", "aws:ResourceTag/aws:autoscaling:groupName", c.asg) && slices.Equal(keys, []string{"slotkeeper:refused"}) {
			return ""
		}
		return "deletes other tags than slotkeeper:refused, or on instances outside the broker group"
	}
	return "resource not allowed"
}

// sendCommand: only AWS-RunShellScript, only on instances bound to the cluster.
func sendCommand(c iamContext, st iamStatement, r string) string {
	switch r {
	case documentARN(c):
		return ""
	case c.ec2("instance/*"):
		if st.condEquals("StringEquals", "ssm:resourceTag/slotkeeper:cluster", c.cluster) {
			return ""
		}
		return "commands on instances not bound to the cluster"
	}
	return "resource not allowed"
}

// changeRecords: the zone's broker-* and bootstrap A records under the DNS name.
func changeRecords(c iamContext, st iamStatement, r string) string {
	if r != zoneARN(c) {
		return "not the hosted zone"
	}
	if !st.condEquals("ForAllValues:StringLike", "route53:ChangeResourceRecordSetsNormalizedRecordNames", "broker-*."+c.dnsName, "bootstrap."+c.dnsName) ||
		!st.condEquals("ForAllValues:StringEquals", "route53:ChangeResourceRecordSetsRecordTypes", "A") {
		return "not limited to the slots' A records"
	}
	return ""
}

func lambdaENIs(_ iamContext, st iamStatement, r string) string {
	if r == "*" && st.policy == "VpcAccessPolicy" {
		return ""
	}
	return "only for the ENIs Lambda manages in a VPC"
}

func kmsGrant(c iamContext, st iamStatement, r string) string {
	if r == kmsKey(c) && st.condEquals("Bool", "kms:GrantIsForAWSResource", "true") {
		return ""
	}
	return "grants on the data volume key only, for EBS"
}

func agentMetrics(_ iamContext, st iamStatement, r string) string {
	if r == "*" && st.condEquals("StringEquals", "cloudwatch:namespace", "CWAgent") {
		return ""
	}
	return "metrics outside the CloudWatch agent's namespace"
}

// iamRules lists every action the template may allow, with where. An action missing
// here fails the test: adding a permission means adding its rule.
var iamRules = map[string]iamRule{
	"logs:CreateLogStream":                       onlyResources(logsARN),
	"logs:PutLogEvents":                          onlyResources(logsARN),
	"xray:PutTraceSegments":                      anyResource, // no resource-level permissions
	"xray:PutTelemetryRecords":                   anyResource,
	"sqs:SendMessage":                            onlyResources(queueARN),
	"sns:Publish":                                onlyResources(topicARN),
	"ec2:DescribeInstances":                      anyResource,
	"ec2:DescribeNetworkInterfaces":              anyResource,
	"ec2:DescribeSubnets":                        anyResource,
	"ec2:DescribeVolumes":                        anyResource,
	"ec2:DescribeVolumesModifications":           anyResource,
	"autoscaling:DescribeAutoScalingInstances":   anyResource,
	"autoscaling:DescribeScalingActivities":      anyResource,
	"dynamodb:GetItem":                           leaseKeys,
	"dynamodb:Query":                             leaseKeys,
	"dynamodb:PutItem":                           leaseKeys,
	"dynamodb:UpdateItem":                        leaseKeys,
	"ec2:CreateVolume":                           createTagged,
	"ec2:CreateNetworkInterface":                 createTagged,
	"ec2:CreateTags":                             createTags,
	"ec2:DeleteTags":                             deleteTags, // launch and the broker instances' bootstrap
	"ec2:AttachVolume":                           slotTagged("volume", "instance"),
	"ec2:AttachNetworkInterface":                 slotTagged("network-interface", "instance"),
	"ec2:DetachVolume":                           slotTagged("volume", "instance"),
	"ec2:DetachNetworkInterface":                 slotTagged("network-interface", "instance"),
	"ec2:ModifyVolume":                           slotTagged("volume"),
	"ec2:DeleteNetworkInterface":                 lambdaENIs,
	"ec2:AssignPrivateIpAddresses":               lambdaENIs,
	"ec2:UnassignPrivateIpAddresses":             lambdaENIs,
	"autoscaling:CompleteLifecycleAction":        onlyResources(groupARN),
	"autoscaling:RecordLifecycleActionHeartbeat": onlyResources(groupARN),
	"cloudwatch:PutMetricAlarm":                  onlyResources(alarmsARN),
	"cloudwatch:TagResource":                     onlyResources(alarmsARN),
	"cloudwatch:DescribeAlarms":                  anyResource,
	"cloudwatch:GetMetricStatistics":             anyResource, // no resource-level permissions
	"secretsmanager:GetSecretValue":              onlyResources(kafkaSecret),
	"ssm:SendCommand":                            sendCommand,
	"ssm:GetCommandInvocation":                   anyResource, // no resource-level permissions
	"route53:ChangeResourceRecordSets":           changeRecords,
	"route53:ListResourceRecordSets":             onlyResources(zoneARN),
	"kms:DescribeKey":                            onlyResources(kmsKey),
	"kms:GenerateDataKeyWithoutPlaintext":        onlyResources(kmsKey),
	"kms:Decrypt":                                onlyResources(kmsKey),
	"kms:ReEncryptFrom":                          onlyResources(kmsKey),
	"kms:ReEncryptTo":                            onlyResources(kmsKey),
	"kms:CreateGrant":                            kmsGrant,
	"cloudwatch:PutMetricData":                   agentMetrics, // the broker instances' agent
}

// No statement allows a wildcard action, NotAction or NotResource; every allowed
// action has a rule and every resource it applies to passes it; every function role
// carries the deny on deleting slot data.
func TestTemplateIAMLeastPrivilege(t *testing.T) {
	for _, sc := range deployScenarios {
		t.Run(sc.name, func(t *testing.T) {
			s := deployStack(t, sc.name)
			cfg := loadFunctionConfig(t, s, "LaunchFunction")
			c := iamContext{s: s, cluster: cfg.Cluster, asg: cfg.ASGName, table: cfg.Table, zone: cfg.DNS.HostedZoneID, dnsName: cfg.DNS.Name}
			checked := 0
			for _, sts := range policyStatements(s) {
				for _, st := range sts {
					where := st.policy + "/" + st.sid
					for _, k := range []string{"NotAction", "NotResource", "NotPrincipal"} {
						if _, ok := st.raw[k]; ok {
							t.Errorf("%s uses %s", where, k)
						}
					}
					if st.effect != "Allow" {
						continue
					}
					for _, a := range st.actions {
						if strings.ContainsAny(a, "*?") {
							t.Errorf("%s allows the wildcard action %s", where, a)
							continue
						}
						rule, ok := iamRules[a]
						if !ok {
							t.Errorf("%s allows %s, which has no rule in iamRules: review it and add one", where, a)
							continue
						}
						for _, r := range st.resources {
							why := rule(c, st, r)
							switch {
							case why != "" && r == "*" && mutatingAction(a):
								t.Errorf("%s allows the mutating %s on every resource: %s", where, a, why)
							case why != "":
								t.Errorf("%s: %s on %s: %s", where, a, r, why)
							}
							checked++
						}
					}
				}
			}

			base := s.resource(t, "FunctionBasePolicy")
			denies := map[string]bool{}
			for _, st := range statementsOf("FunctionBasePolicy", s.props(base)["PolicyDocument"]) {
				if st.effect == "Deny" && st.condEquals("Null", "aws:ResourceTag/slotkeeper:cluster", "false") {
					for _, a := range st.actions {
						denies[a] = true
					}
				}
			}
			if !denies["ec2:DeleteVolume"] || !denies["ec2:DeleteNetworkInterface"] {
				t.Errorf("FunctionBasePolicy does not deny deleting tagged volumes and ENIs: %v", denies)
			}
			for _, id := range existingFunctions(s) {
				arns := cfnList(s.props(s.resource(t, roleOf(t, s, id)))["ManagedPolicyArns"])
				if !slices.Contains(arns, s.ref("FunctionBasePolicy")) {
					t.Errorf("%s's role lacks FunctionBasePolicy (and its deny)", id)
				}
			}
			for id, r := range s.resources("AWS::IAM::Role") {
				for _, a := range cfnList(s.props(r)["ManagedPolicyArns"]) {
					if arn := cfnStr(a); strings.Contains(arn, ":iam::aws:policy/") &&
						!(id == "BrokerRole" && arn == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore") {
						t.Errorf("%s attaches the AWS-managed %s, whose statements this test cannot review", id, arn)
					}
				}
			}
			t.Logf("%d (action, resource) grants checked", checked)
		})
	}
}

// roleOf returns the logical id of function id's role.
func roleOf(t *testing.T, s *cfnStack, id string) string {
	t.Helper()
	arn := cfnStr(s.props(s.resource(t, id))["Role"])
	role, ok := strings.CutPrefix(arn, "arn:aws:iam::"+tmplAccount+":role/")
	if !ok {
		t.Fatalf("%s: role %q is not one of the stack's roles", id, arn)
	}
	return role
}

// Each function may make exactly the mutating calls its code makes, no more.
func TestTemplateFunctionPermissions(t *testing.T) {
	base := []string{"logs:CreateLogStream", "logs:PutLogEvents", "sqs:SendMessage", "xray:PutTelemetryRecords", "xray:PutTraceSegments"}
	lifecycle := []string{"autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"}
	detach := []string{"ec2:DetachNetworkInterface", "ec2:DetachVolume"}
	alarms := []string{"cloudwatch:PutMetricAlarm", "cloudwatch:TagResource"}
	dns := []string{"route53:ChangeResourceRecordSets"}
	vpc := []string{"ec2:AssignPrivateIpAddresses", "ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface", "ec2:UnassignPrivateIpAddresses"}
	kms := []string{"kms:CreateGrant", "kms:Decrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo"}
	growth := []string{"ec2:ModifyVolume", "ssm:SendCommand", "sns:Publish"}

	for _, sc := range deployScenarios {
		t.Run(sc.name, func(t *testing.T) {
			s := deployStack(t, sc.name)
			hasDNS, inVPC, hasKMS := s.conds["ManageDns"], s.conds["InVpc"], s.conds["HasKmsKey"]
			when := func(on bool, actions []string) []string {
				if on {
					return actions
				}
				return nil
			}
			want := map[string][][]string{
				"LaunchFunction": {base, lifecycle, detach, alarms, when(hasDNS, dns), when(hasKMS, kms),
					{"dynamodb:UpdateItem", "ec2:AttachNetworkInterface", "ec2:AttachVolume", "ec2:CreateNetworkInterface", "ec2:CreateTags", "ec2:CreateVolume", "ec2:DeleteTags", "sns:Publish"}},
				"TerminateFunction": {base, lifecycle, detach, when(hasDNS, dns), when(inVPC, vpc),
					{"dynamodb:UpdateItem", "ssm:SendCommand", "sns:Publish"}},
				"GrowFunction":      {base, growth, {"dynamodb:UpdateItem"}},
				"DnsFunction":       {base, dns},
				"ReconcileFunction": {base, detach, alarms, growth, when(hasDNS, dns), when(inVPC, vpc), {"dynamodb:UpdateItem"}},
			}
			statements := policyStatements(s)
			for _, id := range existingFunctions(s) {
				roleID := roleOf(t, s, id)
				got := map[string]bool{}
				policies := []string{roleID}
				for _, a := range cfnList(s.props(s.resource(t, roleID))["ManagedPolicyArns"]) {
					policies = append(policies, strings.TrimPrefix(cfnStr(a), "arn:aws:iam::"+tmplAccount+":policy/"))
				}
				for _, p := range policies {
					for _, st := range statements[p] {
						for _, a := range st.actions {
							if st.effect == "Allow" && mutatingAction(a) {
								got[a] = true
							}
						}
					}
				}
				var expected []string
				for _, group := range want[id] {
					expected = append(expected, group...)
				}
				sort.Strings(expected)
				expected = slices.Compact(expected)
				if g := slices.Sorted(maps.Keys(got)); !slices.Equal(g, expected) {
					t.Errorf("%s may call %v\nwant %v", id, g, expected)
				}
			}
		})
	}
}

// The dead-letter queue accepts EventBridge's undeliverable events only from this
// cluster's rules.
func TestTemplateDeadLetterQueuePolicy(t *testing.T) {
	s := deployStack(t, "defaults")
	sts := statementsOf("DeadLetterQueuePolicy", s.props(s.resource(t, "DeadLetterQueuePolicy"))["PolicyDocument"])
	if len(sts) != 1 {
		t.Fatalf("%d statements", len(sts))
	}
	st := sts[0]
	if fmt.Sprint(st.raw["Principal"]) != "map[Service:events.amazonaws.com]" || !slices.Equal(st.actions, []string{"sqs:SendMessage"}) ||
		!st.condEquals("ArnLike", "aws:SourceArn", cfnARN("events", "rule/slotkeeper-kafka-prod-*")) {
		t.Errorf("dead-letter queue policy %v", st.raw)
	}
	// Every rule of the stack is covered by that condition.
	for id, r := range s.resources("AWS::Events::Rule") {
		if name := cfnStr(s.props(r)["Name"]); !strings.HasPrefix(name, "slotkeeper-kafka-prod-") || len(name) > 64 {
			t.Errorf("rule %s is named %q: not covered by the queue policy, or too long", id, name)
		}
	}
}

// awsCallRE finds the AWS operations a Go source calls: an input struct built for it
// (&ec2.AttachVolumeInput{...}) or a paginator over it (ec2.NewDescribeVolumesPaginator).
var awsCallRE = regexp.MustCompile(`\b(ec2|autoscaling|dynamodb|route53|cloudwatch|ssm|sns|secretsmanager)\.(?:New(\w+)Paginator\(|(\w+)Input\{)`)

// impliedActions are granted without the code calling them by name: Lambda itself
// (logs, traces, the on-failure destination, the ENIs of a function in a VPC), EBS on
// the caller's behalf (the data volume key), and CloudWatch for an alarm created with
// tags.
var impliedActions = []string{
	"logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments", "xray:PutTelemetryRecords", "sqs:SendMessage",
	"ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
	"kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo",
	"cloudwatch:TagResource",
}

// The functions' roles allow every AWS operation the functions' code calls, and no
// mutating operation it does not: the packages the functions are built from
// (go list -deps ./functions/...) are scanned for the operations they call.
func TestTemplateIAMMatchesTheCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "../functions/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs(templateRepoDir())
	if err != nil {
		t.Fatal(err)
	}
	used := map[string][]string{} // action -> files
	for _, dir := range strings.Fields(string(out)) {
		if !strings.HasPrefix(dir, root+string(filepath.Separator)) {
			continue // a dependency outside the module
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range awsCallRE.FindAllStringSubmatch(string(b), -1) {
				op := m[2] + m[3]
				if strings.HasSuffix(op, "Output") {
					continue
				}
				rel, _ := filepath.Rel(root, f)
				used[m[1]+":"+op] = append(used[m[1]+":"+op], rel)
			}
		}
	}
	if len(used) < 10 {
		t.Fatalf("found only %d AWS operations in the functions' code: the scan is broken", len(used))
	}

	allowed := map[string]bool{}
	// fleet: every feature on (DNS, Kafka in a VPC, KMS, growth); kafka-in-vpc: SASL
	// with the password's secret.
	for _, s := range []*cfnStack{deployStack(t, "fleet"), deployStack(t, "kafka-in-vpc")} {
		allowedBy(t, s, allowed)
	}
	for _, a := range slices.Sorted(maps.Keys(used)) {
		if !allowed[a] {
			t.Errorf("the code calls %s (%v), which no function's role allows: it would fail with AccessDenied", a, slices.Compact(used[a]))
		}
	}
	for _, a := range slices.Sorted(maps.Keys(allowed)) {
		if _, ok := used[a]; !ok && mutatingAction(a) && !slices.Contains(impliedActions, a) {
			t.Errorf("a function's role allows %s, which no function's code calls", a)
		}
	}
	t.Logf("the functions' code calls %d AWS operations: %v", len(used), slices.Sorted(maps.Keys(used)))
}

// allowedBy adds to allowed every action some function's role in s allows.
func allowedBy(t *testing.T, s *cfnStack, allowed map[string]bool) {
	t.Helper()
	statements := policyStatements(s)
	for _, id := range existingFunctions(s) {
		role := roleOf(t, s, id)
		policies := []string{role}
		for _, a := range cfnList(s.props(s.resource(t, role))["ManagedPolicyArns"]) {
			policies = append(policies, strings.TrimPrefix(cfnStr(a), "arn:aws:iam::"+tmplAccount+":policy/"))
		}
		for _, p := range policies {
			for _, st := range statements[p] {
				if st.effect == "Allow" {
					for _, a := range st.actions {
						allowed[a] = true
					}
				}
			}
		}
	}
}

// awsCLIRE finds the AWS CLI calls of a shell script: aws <service> <operation>.
var awsCLIRE = regexp.MustCompile(`\baws (ec2|dynamodb|autoscaling|cloudwatch|ssm|sns) ([a-z][a-z0-9-]+)`)

// The broker instances' role allows every AWS call deploy/broker-bootstrap.sh makes,
// and no mutating call it does not make (besides the CloudWatch agent's metrics).
func TestTemplateBrokerRoleMatchesTheBootstrap(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(templateRepoDir(), "deploy", "broker-bootstrap.sh"))
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, m := range awsCLIRE.FindAllStringSubmatch(string(b), -1) {
		op := ""
		for _, w := range strings.Split(m[2], "-") {
			op += strings.ToUpper(w[:1]) + w[1:]
		}
		used[m[1]+":"+op] = true
	}
	if len(used) < 4 {
		t.Fatalf("found only %v in the bootstrap: the scan is broken", used)
	}
	s := deployStack(t, "fleet")
	allowed := map[string]bool{}
	for _, st := range policyStatements(s)["BrokerRole"] {
		if st.effect == "Allow" {
			for _, a := range st.actions {
				allowed[a] = true
			}
		}
	}
	for _, a := range slices.Sorted(maps.Keys(used)) {
		if !allowed[a] {
			t.Errorf("the bootstrap calls %s, which the broker role does not allow", a)
		}
	}
	for _, a := range slices.Sorted(maps.Keys(allowed)) {
		if !used[a] && mutatingAction(a) && a != "cloudwatch:PutMetricData" {
			t.Errorf("the broker role allows %s, which the bootstrap does not call", a)
		}
	}
	t.Logf("the bootstrap calls %v", slices.Sorted(maps.Keys(used)))
}
