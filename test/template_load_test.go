package test

// Loading template.yaml as CloudFormation deploys it: scripts/sam-translate.py runs
// the SAM translator (from .venv, offline) for every deployScenario in one process, and
// cfnStack evaluates what the translator leaves (Ref, Fn::Sub, Fn::If, conditions, ...)
// with the deployScenario's parameter values, like CloudFormation would at deploy time.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Pseudo parameter values of every evaluated cfnStack (the harness's region and moto's
// account, as in events/*.json).
const (
	tmplRegion    = "us-east-1"
	tmplAccount   = "123456789012"
	tmplPartition = "aws"
)

// deployScenario is one deployment of the template: parameter values on top of templateBaseParams.
type deployScenario struct {
	name   string
	params map[string]string
}

// templateBaseParams are the parameters without defaults, as in samconfig.toml.
var templateBaseParams = map[string]string{
	"ClusterName":    "kafka-prod",
	"AsgName":        "kafka-prod",
	"Subnets":        "subnet-0a1b2c3d4e5f60001,subnet-0a1b2c3d4e5f60002,subnet-0a1b2c3d4e5f60003",
	"SecurityGroups": "sg-0a1b2c3d4e5f60001",
}

// The Kafka password's secret and an operator's notification key in the scenarios.
const (
	kafkaSecretARN     = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kafka-prod-sasl-AbCdEf"
	notificationKeyARN = "arn:aws:kms:us-east-1:123456789012:key/1a2b3c4d-1a2b-1a2b-1a2b-1a2b3c4d5e6f"
)

var (
	paramsDNS = map[string]string{"HostedZoneId": "Z0123456789ABCDEFGHIJ", "DnsName": "kafka-prod.internal"}
	paramsVPC = map[string]string{
		"FunctionSubnetIds":        "subnet-0f0e0d0c0b0a00001,subnet-0f0e0d0c0b0a00002",
		"FunctionSecurityGroupIds": "sg-0f0e0d0c0b0a00001",
	}
)

func mergeParams(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// deployScenarios are the deployments every template test checks: each option that changes
// which resources exist or what the functions are told.
var deployScenarios = []deployScenario{
	{"defaults", nil},
	{"dns", paramsDNS},
	{"kafka-in-vpc", mergeParams(paramsDNS, paramsVPC, map[string]string{
		"KafkaBootstrap": "b-1.kafka-prod.internal:9096,b-2.kafka-prod.internal:9096", "KafkaTls": "true",
		"KafkaSaslMechanism": "SCRAM-SHA-512", "KafkaUsername": "slotkeeper",
		"KafkaPasswordSecretArn": kafkaSecretARN,
	})},
	{"growth-by-eventbridge", map[string]string{"DiskGrowth": "eventbridge"}},
	{"growth-off-primary-ip", map[string]string{"DiskGrowth": "off", "SlotEni": "false"}},
	// The operator's own notification key; an st1 volume grown up to its type's maximum.
	{"own-key-st1", map[string]string{
		"NotificationKmsKeyArn": notificationKeyARN, "VolumeType": "st1", "VolumeSizeGiB": "500", "GrowMaxSizeGiB": "0",
		"GrowMaxPerDay": "2", "GrowMinInterval": "6h",
	}},
	// The group's name differs from the cluster's: nothing may use one for the other.
	{"own-group-name", map[string]string{"AsgName": "brokers-of-kafka-prod"}},
	{"fleet", mergeParams(paramsDNS, paramsVPC, map[string]string{
		"CreateBrokerFleet": "true", "SlotCount": "5", "NodeIdBase": "100",
		"VolumeKmsKeyArn":    "arn:aws:kms:us-east-1:123456789012:key/0a1b2c3d-0a1b-0a1b-0a1b-0a1b2c3d4e5f",
		"ExistingLeaseTable": "slotkeeper-kafka-prod-leases", "AlertEmail": "oncall@example.com",
	})},
}

var (
	cfnStacksOnce sync.Once
	cfnStacksErr  error
	cfnStacks     map[string]*cfnStack
)

// loadCfnStacks translates template.yaml for every deployScenario (once per test binary).
// Without the SAM translator in .venv the template tests are skipped, except under
// CI=true, where they fail.
func loadCfnStacks(t *testing.T) map[string]*cfnStack {
	t.Helper()
	cfnStacksOnce.Do(func() { cfnStacks, cfnStacksErr = translateDeployScenarios() })
	if errors.Is(cfnStacksErr, errNoTranslator) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v", cfnStacksErr)
		}
		t.Skipf("skipping template test: %v", cfnStacksErr)
	}
	if cfnStacksErr != nil {
		t.Fatalf("translating template.yaml: %v", cfnStacksErr)
	}
	return cfnStacks
}

// deployStack returns the cfnStack of the named deployScenario.
func deployStack(t *testing.T, name string) *cfnStack {
	t.Helper()
	s, ok := loadCfnStacks(t)[name]
	if !ok {
		t.Fatalf("no deployScenario %q", name)
	}
	return s
}

var errNoTranslator = errors.New("the SAM translator is not installed in .venv; run `make venv`")

// templateRepoDir returns the repository root: the directory above test/.
func templateRepoDir() string { return filepath.Join("..") }

func translateDeployScenarios() (map[string]*cfnStack, error) {
	python := filepath.Join(templateRepoDir(), ".venv", "bin", "python")
	if err := exec.Command(python, "-c", "import samtranslator").Run(); err != nil {
		return nil, fmt.Errorf("%w (%s -c 'import samtranslator': %w)", errNoTranslator, python, err)
	}
	sets := make([]map[string]string, len(deployScenarios))
	for i, sc := range deployScenarios {
		sets[i] = mergeParams(templateBaseParams, sc.params)
	}
	arg, err := json.Marshal(sets)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(python, filepath.Join(templateRepoDir(), "scripts", "sam-translate.py"), filepath.Join(templateRepoDir(), "template.yaml"), string(arg))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/sam-translate.py: %w\n%s", err, stderr.String())
	}
	var templates []map[string]any
	if err := json.Unmarshal(out, &templates); err != nil {
		return nil, fmt.Errorf("decoding the translated templates: %w", err)
	}
	if len(templates) != len(deployScenarios) {
		return nil, fmt.Errorf("%d templates for %d deployScenarios", len(templates), len(deployScenarios))
	}
	res := map[string]*cfnStack{}
	for i, sc := range deployScenarios {
		s, err := newCfnStack(sc.name, templates[i], sets[i])
		if err != nil {
			return nil, fmt.Errorf("deployScenario %s: %w", sc.name, err)
		}
		res[sc.name] = s
	}
	return res, nil
}

// cfnStack is one translated template with its parameter values: what CloudFormation
// would create. Resources whose condition is false do not exist.
type cfnStack struct {
	name   string
	tmpl   map[string]any
	params map[string]any // string, or []any of strings for list parameters
	conds  map[string]bool
}

// cfnNoValue is what AWS::NoValue evaluates to; containers drop it.
type cfnNoValue struct{}

func newCfnStack(name string, tmpl map[string]any, given map[string]string) (*cfnStack, error) {
	s := &cfnStack{name: name, tmpl: tmpl, params: map[string]any{}, conds: map[string]bool{}}
	defs, _ := tmpl["Parameters"].(map[string]any)
	for p, d := range defs {
		def, _ := d.(map[string]any)
		v, ok := given[p]
		if !ok {
			dv, has := def["Default"]
			if !has {
				return nil, fmt.Errorf("parameter %s has no value and no default", p)
			}
			v = cfnScalar(dv)
		}
		if typ, _ := def["Type"].(string); strings.HasPrefix(typ, "List<") || typ == "CommaDelimitedList" {
			var list []any
			for _, e := range strings.Split(v, ",") {
				list = append(list, strings.TrimSpace(e))
			}
			s.params[p] = list
		} else {
			s.params[p] = v
		}
	}
	for p := range given {
		if _, ok := defs[p]; !ok {
			return nil, fmt.Errorf("deployScenario sets %s, which the template does not declare", p)
		}
	}
	conds, _ := tmpl["Conditions"].(map[string]any)
	for c := range conds {
		if _, err := s.condition(c, nil); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// cfnScalar renders a JSON cfnScalar as CloudFormation passes it to a parameter.
func cfnScalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return fmt.Sprint(v)
}

func (s *cfnStack) condition(name string, seen []string) (bool, error) {
	if v, ok := s.conds[name]; ok {
		return v, nil
	}
	if slices.Contains(seen, name) {
		return false, fmt.Errorf("condition %s depends on itself", name)
	}
	conds, _ := s.tmpl["Conditions"].(map[string]any)
	def, ok := conds[name]
	if !ok {
		return false, fmt.Errorf("no condition %s", name)
	}
	v, err := s.evalCondition(def, append(seen, name))
	if err != nil {
		return false, fmt.Errorf("condition %s: %w", name, err)
	}
	s.conds[name] = v
	return v, nil
}

func (s *cfnStack) evalCondition(node any, seen []string) (bool, error) {
	m, ok := node.(map[string]any)
	if !ok || len(m) != 1 {
		return false, fmt.Errorf("not a condition function: %v", node)
	}
	for fn, arg := range m {
		args, _ := arg.([]any)
		switch fn {
		case "Condition":
			return s.condition(arg.(string), seen)
		case "Fn::Not":
			v, err := s.evalCondition(args[0], seen)
			return !v, err
		case "Fn::And", "Fn::Or":
			all := fn == "Fn::And"
			for _, a := range args {
				v, err := s.evalCondition(a, seen)
				if err != nil {
					return false, err
				}
				if v != all {
					return v, nil
				}
			}
			return all, nil
		case "Fn::Equals":
			a, b := s.eval(args[0]), s.eval(args[1])
			return fmt.Sprint(a) == fmt.Sprint(b), nil
		}
		return false, fmt.Errorf("unsupported condition function %s", fn)
	}
	panic("unreachable")
}

// resources returns the resources that exist, by logical id, optionally of one type.
func (s *cfnStack) resources(typ string) map[string]map[string]any {
	out := map[string]map[string]any{}
	all, _ := s.tmpl["Resources"].(map[string]any)
	for id, r := range all {
		res := r.(map[string]any)
		if typ != "" && res["Type"] != typ {
			continue
		}
		if c, ok := res["Condition"].(string); ok && !s.conds[c] {
			continue
		}
		out[id] = res
	}
	return out
}

// resource returns the existing resource id, failing the test if there is none.
func (s *cfnStack) resource(t *testing.T, id string) map[string]any {
	t.Helper()
	r, ok := s.resources("")[id]
	if !ok {
		t.Fatalf("%s: no resource %s", s.name, id)
	}
	return r
}

// props returns the evaluated properties of resource r.
func (s *cfnStack) props(r map[string]any) map[string]any {
	p, _ := s.eval(r["Properties"]).(map[string]any)
	return p
}

func (s *cfnStack) raw(id string) map[string]any {
	all, _ := s.tmpl["Resources"].(map[string]any)
	r, _ := all[id].(map[string]any)
	return r
}

func (s *cfnStack) rawProp(id, prop string) string {
	r := s.raw(id)
	if r == nil {
		return ""
	}
	p, _ := r["Properties"].(map[string]any)
	v, _ := s.eval(p[prop]).(string)
	return v
}

// ref is what Ref returns for resource id: its name or ARN, as CloudFormation does.
func (s *cfnStack) ref(id string) any {
	r := s.raw(id)
	if r == nil {
		return "UNKNOWN-RESOURCE:" + id
	}
	switch r["Type"] {
	case "AWS::Lambda::Function":
		return s.rawProp(id, "FunctionName")
	case "AWS::SNS::Topic":
		return cfnARN("sns", s.rawProp(id, "TopicName"))
	case "AWS::SQS::Queue":
		return "https://sqs." + tmplRegion + ".amazonaws.com/" + tmplAccount + "/" + s.rawProp(id, "QueueName")
	case "AWS::DynamoDB::Table":
		return s.rawProp(id, "TableName")
	case "AWS::IAM::ManagedPolicy":
		return "arn:" + tmplPartition + ":iam::" + tmplAccount + ":policy/" + id
	case "AWS::CloudWatch::Dashboard":
		return s.rawProp(id, "DashboardName")
	case "AWS::Logs::LogGroup":
		return s.rawProp(id, "LogGroupName")
	case "AWS::Events::Rule":
		return s.rawProp(id, "Name")
	case "AWS::AutoScaling::AutoScalingGroup":
		return s.rawProp(id, "AutoScalingGroupName")
	}
	return id
}

// getAtt is what Fn::GetAtt returns.
func (s *cfnStack) getAtt(id, attr string) any {
	r := s.raw(id)
	if r == nil {
		return "UNKNOWN-RESOURCE:" + id
	}
	switch typ := r["Type"].(string); {
	case typ == "AWS::Lambda::Function" && attr == "Arn":
		return cfnARN("lambda", "function:"+s.rawProp(id, "FunctionName"))
	case typ == "AWS::SQS::Queue" && attr == "Arn":
		return cfnARN("sqs", s.rawProp(id, "QueueName"))
	case typ == "AWS::SQS::Queue" && attr == "QueueName":
		return s.rawProp(id, "QueueName")
	case typ == "AWS::SNS::Topic" && attr == "TopicName":
		return s.rawProp(id, "TopicName")
	case typ == "AWS::Events::Rule" && attr == "Arn":
		return cfnARN("events", "rule/"+s.rawProp(id, "Name"))
	case typ == "AWS::IAM::Role" && attr == "Arn":
		return "arn:" + tmplPartition + ":iam::" + tmplAccount + ":role/" + id
	case typ == "AWS::IAM::InstanceProfile" && attr == "Arn":
		return "arn:" + tmplPartition + ":iam::" + tmplAccount + ":instance-profile/" + id
	case typ == "AWS::EC2::LaunchTemplate" && attr == "LatestVersionNumber":
		return "1"
	}
	return id + "." + attr
}

func cfnARN(service, resource string) string {
	return "arn:" + tmplPartition + ":" + service + ":" + tmplRegion + ":" + tmplAccount + ":" + resource
}

var cfnPseudo = map[string]any{
	"AWS::Region":    tmplRegion,
	"AWS::AccountId": tmplAccount,
	"AWS::Partition": tmplPartition,
	"AWS::StackName": "slotkeeper-kafka-prod",
	"AWS::URLSuffix": "amazonaws.com",
	"AWS::NoValue":   cfnNoValue{},
}

func (s *cfnStack) lookup(name string) any {
	if v, ok := cfnPseudo[name]; ok {
		return v
	}
	if v, ok := s.params[name]; ok {
		return v
	}
	return s.ref(name)
}

var cfnSubVar = regexp.MustCompile(`\$\{([^}]*)\}`)

func (s *cfnStack) sub(str string, vars map[string]any) string {
	return cfnSubVar.ReplaceAllStringFunc(str, func(m string) string {
		name := m[2 : len(m)-1]
		if strings.HasPrefix(name, "!") {
			return "${" + name[1:] + "}"
		}
		if v, ok := vars[name]; ok {
			return fmt.Sprint(s.eval(v))
		}
		if id, attr, ok := strings.Cut(name, "."); ok && !strings.HasPrefix(name, "AWS::") {
			return fmt.Sprint(s.getAtt(id, attr))
		}
		return fmt.Sprint(s.lookup(name))
	})
}

// eval resolves the intrinsic functions in node.
func (s *cfnStack) eval(node any) any {
	switch n := node.(type) {
	case []any:
		out := make([]any, 0, len(n))
		for _, e := range n {
			if v := s.eval(e); v != (cfnNoValue{}) {
				out = append(out, v)
			}
		}
		return out
	case map[string]any:
		if len(n) == 1 {
			for fn, arg := range n {
				if v, ok := s.intrinsic(fn, arg); ok {
					return v
				}
			}
		}
		out := make(map[string]any, len(n))
		for k, v := range n {
			if ev := s.eval(v); ev != (cfnNoValue{}) {
				out[k] = ev
			}
		}
		return out
	}
	return node
}

func (s *cfnStack) intrinsic(fn string, arg any) (any, bool) {
	args, _ := arg.([]any)
	switch fn {
	case "Ref":
		return s.lookup(arg.(string)), true
	case "Fn::GetAtt":
		if str, ok := arg.(string); ok {
			id, attr, _ := strings.Cut(str, ".")
			return s.getAtt(id, attr), true
		}
		return s.getAtt(args[0].(string), args[1].(string)), true
	case "Fn::Sub":
		if str, ok := arg.(string); ok {
			return s.sub(str, nil), true
		}
		vars, _ := args[1].(map[string]any)
		return s.sub(args[0].(string), vars), true
	case "Fn::Join":
		var parts []string
		for _, e := range s.eval(args[1]).([]any) {
			parts = append(parts, fmt.Sprint(e))
		}
		return strings.Join(parts, args[0].(string)), true
	case "Fn::Split":
		var out []any
		for _, e := range strings.Split(fmt.Sprint(s.eval(args[1])), args[0].(string)) {
			out = append(out, e)
		}
		return out, true
	case "Fn::Select":
		i, _ := strconv.Atoi(cfnScalar(s.eval(args[0])))
		return s.eval(args[1]).([]any)[i], true
	case "Fn::If":
		if s.conds[args[0].(string)] {
			return s.eval(args[1]), true
		}
		return s.eval(args[2]), true
	case "Fn::FindInMap":
		m := cfnObj(cfnObj(s.tmpl["Mappings"])[cfnScalar(s.eval(args[0]))])
		return cfnObj(m[cfnScalar(s.eval(args[1]))])[cfnScalar(s.eval(args[2]))], true
	case "Fn::Base64":
		return base64.StdEncoding.EncodeToString([]byte(fmt.Sprint(s.eval(arg)))), true
	case "Condition":
		return s.conds[arg.(string)], true
	}
	return nil, false
}

// str, num and list read evaluated values.
func cfnStr(v any) string { s, _ := v.(string); return s }

func cfnNum(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case string:
		f, _ := strconv.ParseFloat(x, 64)
		return f
	}
	return 0
}

func cfnList(v any) []any {
	if l, ok := v.([]any); ok {
		return l
	}
	if v == nil {
		return nil
	}
	return []any{v}
}

func cfnObj(v any) map[string]any { m, _ := v.(map[string]any); return m }

// templateFunctions are the functions the template deploys, by logical id, with their
// functions/<dir>.
var templateFunctions = map[string]string{
	"LaunchFunction":    "launch",
	"TerminateFunction": "terminate",
	"GrowFunction":      "grow",
	"DnsFunction":       "dns",
	"ReconcileFunction": "reconcile",
}

// env returns the environment variables of function id.
func (s *cfnStack) env(t *testing.T, id string) map[string]string {
	t.Helper()
	p := s.props(s.resource(t, id))
	out := map[string]string{}
	for k, v := range cfnObj(cfnObj(p["Environment"])["Variables"]) {
		out[k] = cfnScalar(v)
	}
	return out
}
